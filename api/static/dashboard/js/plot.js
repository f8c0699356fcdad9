// Small plots drawn by hand: SVG line and bar charts, a canvas for parallel coordinates.
// No library: a few hundred lines are enough, and the page loads nothing from elsewhere.

const NS = "http://www.w3.org/2000/svg";
export const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
  "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"];

function el(name, attrs = {}, parent = null) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

function text(parent, x, y, s, attrs = {}) {
  const t = el("text", { x, y, ...attrs }, parent);
  t.textContent = s;
  return t;
}

export function fmt(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (typeof v !== "number") return String(v);
  if (v !== 0 && (Math.abs(v) >= 1e6 || Math.abs(v) < 1e-3)) return v.toExponential(3);
  return Number(v.toPrecision(6)).toString();
}

// Three significant digits: axis ends of the parallel coordinates.
function short(v) {
  return Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-2) ? v.toExponential(1) : String(Number(v.toPrecision(3)));
}

// "Nice" tick values covering [lo, hi].
export function ticks(lo, hi, n = 5) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

function extent(values) {
  let lo = Infinity, hi = -Infinity;
  for (const v of values) { if (v < lo) lo = v; if (v > hi) hi = v; }
  if (lo === Infinity) return [0, 1];
  if (lo === hi) { const d = Math.abs(lo) * 0.05 || 1; return [lo - d, hi + d]; }
  return [lo, hi];
}

function clear(svg) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
}

// series: [{label, points: [[x, y], ...]}]; drawn as step lines (best so far only changes at points).
export function lineChart(svg, series, { xLabel = "", yLabel = "", empty = "no completed trial yet" } = {}) {
  clear(svg);
  const W = +svg.getAttribute("width"), H = +svg.getAttribute("height");
  const m = { l: 64, r: 12, t: 10, b: 38 };
  const all = series.flatMap((s) => s.points);
  svg.dataset.series = String(series.length);
  svg.dataset.points = String(all.length);
  if (!all.length) { text(svg, W / 2, H / 2, empty, { "text-anchor": "middle" }); return; }
  const [x0, x1] = extent([0, ...all.map((p) => p[0])]);
  const [y0, y1] = extent(all.map((p) => p[1]));
  const sx = (x) => m.l + ((x - x0) / (x1 - x0)) * (W - m.l - m.r);
  const sy = (y) => H - m.b - ((y - y0) / (y1 - y0)) * (H - m.t - m.b);
  const grid = el("g", { class: "grid" }, svg), axis = el("g", { class: "axis" }, svg);
  for (const t of ticks(y0, y1)) {
    el("line", { x1: m.l, x2: W - m.r, y1: sy(t), y2: sy(t) }, grid);
    text(axis, m.l - 4, sy(t) + 4, fmt(t), { "text-anchor": "end" });
  }
  for (const t of ticks(x0, x1)) {
    el("line", { x1: sx(t), x2: sx(t), y1: m.t, y2: H - m.b }, grid);
    text(axis, sx(t), H - m.b + 14, fmt(t), { "text-anchor": "middle" });
  }
  el("path", { d: `M${m.l},${m.t}V${H - m.b}H${W - m.r}`, fill: "none" }, axis);
  text(axis, (m.l + W - m.r) / 2, H - 4, xLabel, { "text-anchor": "middle" });
  text(axis, 12, (m.t + H - m.b) / 2, yLabel, { "text-anchor": "middle", transform: `rotate(-90 12 ${(m.t + H - m.b) / 2})` });
  series.forEach((s, i) => {
    if (!s.points.length) return;
    let d = `M${sx(s.points[0][0])},${sy(s.points[0][1])}`;
    for (let k = 1; k < s.points.length; k++) d += `H${sx(s.points[k][0])}V${sy(s.points[k][1])}`;
    const color = COLORS[i % COLORS.length];
    const path = el("path", { d, fill: "none", stroke: color, "stroke-width": 2, class: "series" }, svg);
    path.dataset.label = s.label;
    path.dataset.last = String(s.points[s.points.length - 1][1]);
    path.dataset.n = String(s.points.length);
    if (series.length > 1 || s.label) {
      el("rect", { x: m.l + 10, y: m.t + 4 + i * 15, width: 10, height: 10, fill: color }, svg);
      text(svg, m.l + 24, m.t + 13 + i * 15, s.label);
    }
  });
}

// rows: [{label, parts: [{name, value, color}]}]: horizontal stacked bars.
export function barChart(svg, rows, { empty = "nothing yet", unit = "" } = {}) {
  clear(svg);
  const W = +svg.getAttribute("width"), H = +svg.getAttribute("height");
  svg.dataset.bars = String(rows.length);
  if (!rows.length) { text(svg, W / 2, H / 2, empty, { "text-anchor": "middle" }); return; }
  const names = [...new Set(rows.flatMap((r) => r.parts.map((p) => p.name)))];
  const m = { l: 130, r: 60, t: names.length > 1 ? 22 : 6, b: 22 };
  const max = Math.max(1e-12, ...rows.map((r) => r.parts.reduce((a, p) => a + p.value, 0)));
  const bh = Math.min(28, (H - m.t - m.b) / rows.length - 4);
  const sx = (v) => (v / max) * (W - m.l - m.r);
  const axis = el("g", { class: "axis" }, svg);
  for (const t of ticks(0, max, 4)) text(axis, m.l + sx(t), H - 6, fmt(t) + unit, { "text-anchor": "middle" });
  rows.forEach((r, i) => {
    const y = m.t + i * (bh + 4);
    text(svg, m.l - 4, y + bh / 2 + 4, r.label, { "text-anchor": "end" });
    let x = m.l;
    for (const p of r.parts) {
      const w = sx(p.value);
      const rect = el("rect", { x, y, width: Math.max(0, w), height: bh, fill: p.color }, svg);
      rect.dataset.value = String(p.value);
      el("title", {}, rect).textContent = `${r.label} ${p.name}: ${fmt(p.value)}${unit}`;
      x += w;
    }
    text(svg, x + 4, y + bh / 2 + 4, fmt(r.parts.reduce((a, p) => a + p.value, 0)) + unit);
  });
  if (names.length > 1) {
    const colors = Object.fromEntries(rows.flatMap((r) => r.parts.map((p) => [p.name, p.color])));
    names.forEach((n, i) => {
      el("rect", { x: m.l + i * 110, y: 4, width: 10, height: 10, fill: colors[n] }, svg);
      text(svg, m.l + 14 + i * 110, 13, n);
    });
  }
}

function viridis(t) {
  // a few stops of the viridis colour map, linearly interpolated
  const s = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
  const x = Math.min(1, Math.max(0, t)) * (s.length - 1), i = Math.min(s.length - 2, Math.floor(x)), f = x - i;
  const c = s[i].map((v, k) => Math.round(v + f * (s[i + 1][k] - v)));
  return `rgba(${c[0]},${c[1]},${c[2]},0.55)`;
}

// rows: completed trial rows ({params, value}); axes: the parameter names, then the value.
export function parallelCoordinates(canvas, rows, names, direction, maxLines = 2000) {
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, m = { l: 34, r: 34, t: 40, b: 26 };
  ctx.clearRect(0, 0, W, H);
  const pts = rows.filter((r) => r.value !== null).slice(-maxLines);
  canvas.dataset.lines = String(pts.length);
  ctx.fillStyle = "#444b5a";
  ctx.font = "11px system-ui, sans-serif";
  if (!pts.length || !names.length) { ctx.fillText("no completed trial yet", W / 2 - 60, H / 2); return; }
  const axes = [...names, "value"];
  const scales = axes.map((n) => {
    const vals = pts.map((r) => (n === "value" ? r.value : r.params[n]));
    if (vals.every((v) => typeof v === "number")) {
      const [lo, hi] = extent(vals);
      return { f: (v) => (v - lo) / (hi - lo), lo, hi };
    }
    const cats = [...new Set(vals.map(String))];
    return { f: (v) => (cats.length > 1 ? cats.indexOf(String(v)) / (cats.length - 1) : 0.5), cats };
  });
  const x = (i) => m.l + (i * (W - m.l - m.r)) / Math.max(1, axes.length - 1);
  const y = (t) => H - m.b - t * (H - m.t - m.b);
  const vs = scales[axes.length - 1];
  const order = [...pts].sort((a, b) => (direction === "minimize" ? b.value - a.value : a.value - b.value));
  for (const r of order) {
    let t = vs.f(r.value);
    if (direction === "minimize") t = 1 - t;
    ctx.strokeStyle = viridis(t);
    ctx.beginPath();
    axes.forEach((n, i) => {
      const v = n === "value" ? r.value : r.params[n];
      const yy = y(scales[i].f(v));
      if (i === 0) ctx.moveTo(x(i), yy); else ctx.lineTo(x(i), yy);
    });
    ctx.stroke();
  }
  ctx.strokeStyle = "#1d2330";
  ctx.fillStyle = "#1d2330";
  axes.forEach((n, i) => {
    ctx.beginPath(); ctx.moveTo(x(i), y(0)); ctx.lineTo(x(i), y(1)); ctx.stroke();
    const label = n.length > 18 ? "…" + n.slice(-17) : n;
    ctx.textAlign = i === 0 ? "left" : i === axes.length - 1 ? "right" : "center";
    ctx.fillText(label, x(i), 11 + (i % 2) * 12);
    const s = scales[i];
    if (s.cats === undefined) {
      ctx.fillText(short(s.hi), x(i), y(1) - 3);
      ctx.fillText(short(s.lo), x(i), y(0) + 12);
    }
  });
  ctx.textAlign = "left";
}
