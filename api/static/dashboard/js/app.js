// The eeipu dashboard: the study list, one study in detail (following it while it runs) and
// a comparison of several studies. Data: /v1/dashboard/* (incremental: ?after=N).

import { ApiError, get, post, setToken, token } from "./api.js";
import { barChart, fmt, lineChart, parallelCoordinates } from "./plot.js";
import { SortableTable } from "./table.js";

const POLL_MS = 2000;
const FILL_MS = 250; // while the server is still reading a study for the first time
const IMPORTANCE_MS = 5000;
const $ = (id) => document.getElementById(id);

// One study's rows, fetched incrementally: only trials above `nextAfter` are asked for.
class StudyData {
  constructor(id) {
    this.id = id;
    this.rows = new Map();
    this.nextAfter = -1;
    this.view = null;
  }

  // Fetch what changed; `changed` says whether anything did (else the page is not redrawn).
  async update() {
    const before = this.view ? this.view.study.updated_at : null;
    this.changed = false;
    for (let i = 0; i < 50; i++) {
      const v = await get(`/v1/dashboard/studies/${this.id}?after=${this.nextAfter}&limit=1000`);
      for (const r of v.trials) {
        const old = this.rows.get(r.number);
        if (!old || old.state !== r.state) this.changed = true;
        this.rows.set(r.number, r);
      }
      this.nextAfter = v.next_after;
      this.view = v;
      if (!v.more) break;
    }
    if (before !== this.view.study.updated_at || !this.view.complete) this.changed = true;
    return this.view;
  }

  sortedRows() {
    return [...this.rows.values()].sort((a, b) => a.number - b.number);
  }
}

// Best value so far against cumulative compute, trials in the order they finished
// (as api.report.analysis.best_so_far computes it).
export function bestSoFar(rows, direction) {
  const done = rows.filter((r) => r.state === "COMPLETE" || r.state === "FAILED");
  done.sort((a, b) => (a.finished_at || 0) - (b.finished_at || 0) || a.number - b.number);
  const sign = direction === "minimize" ? -1 : 1;
  let spent = 0, best = null;
  const out = [];
  for (const r of done) {
    spent += r.cost || 0;
    if (r.state !== "COMPLETE" || r.value === null) continue;
    if (best === null || sign * r.value > sign * best) best = r.value;
    out.push([spent, best]);
  }
  return out;
}

const state = {
  list: [],
  selected: null, // StudyData of the study shown
  compare: new Map(), // id -> StudyData
  importanceAt: 0,
  importanceComplete: -1,
  timer: null,
};

function studyLabel(s) {
  return `#${s.id} ${s.optimizer}${s.name ? " " + s.name : ""}`;
}

function renderList() {
  const body = document.createElement("tbody");
  for (const item of state.list) {
    const s = item.study;
    const tr = document.createElement("tr");
    tr.dataset.studyId = String(s.id);
    const cells = [
      null, s.id, s.name || "", s.pipeline, s.optimizer, s.state, fmt(s.best_value), s.trials_done,
      `${fmt(s.cost_spent)} / ${fmt(s.budget_seconds)} s`,
      item.saved_seconds === null ? "…" : `${fmt(item.saved_seconds)} s`,
    ];
    cells.forEach((c, i) => {
      const td = document.createElement("td");
      if (i === 0) {
        const box = document.createElement("input");
        box.type = "checkbox";
        box.className = "compare-box";
        box.value = String(s.id);
        box.checked = state.compare.has(s.id);
        box.addEventListener("click", (ev) => { ev.stopPropagation(); toggleCompare(s.id, box.checked); });
        td.appendChild(box);
      } else {
        td.textContent = String(c);
      }
      if (i === 6 && s.best_value !== null) td.dataset.value = String(s.best_value);
      if (i >= 2 && i <= 5) td.className = "text";
      tr.appendChild(td);
    });
    tr.addEventListener("click", () => { location.hash = `#/study/${s.id}`; });
    body.appendChild(tr);
  }
  const table = $("study-list");
  table.replaceChild(body, table.tBodies[0]);
  table.dataset.count = String(state.list.length);
  $("compare-btn").disabled = state.compare.size < 2;
}

function toggleCompare(id, on) {
  if (on) state.compare.set(id, state.compare.get(id) || new StudyData(id));
  else state.compare.delete(id);
  $("compare-btn").disabled = state.compare.size < 2;
}

async function renderCompare() {
  if (state.compare.size < 2) { $("compare-view").hidden = true; return; }
  $("compare-view").hidden = false;
  const series = [];
  for (const d of state.compare.values()) {
    const v = await d.update();
    series.push({ label: studyLabel(v.study), points: bestSoFar(d.sortedRows(), v.study.direction) });
  }
  lineChart($("compare-plot"), series, { xLabel: "cumulative compute (s)", yLabel: "best so far" });
}

function paramNames(rows) {
  const names = new Set();
  for (const r of rows) for (const k of Object.keys(r.params)) names.add(k);
  return [...names];
}

function renderUnlearning(rows, direction) {
  const sign = direction === "minimize" ? -1 : 1;
  let best = null;
  for (const r of rows) {
    if (r.state === "COMPLETE" && r.value !== null && (best === null || sign * r.value > sign * best.value)) best = r;
  }
  const m = best ? best.metrics : {};
  const prefixes = ["retrained_", "original_"];
  const bases = new Set();
  for (const k of Object.keys(m)) {
    const p = prefixes.find((x) => k.startsWith(x));
    if (p) bases.add(k.slice(p.length));
    if (k.endsWith("_band_low")) bases.add(k.slice(0, -"_band_low".length));
  }
  $("unlearning").hidden = bases.size === 0;
  const body = document.createElement("tbody");
  for (const b of [...bases].sort()) {
    const tr = document.createElement("tr");
    const lo = m[`${b}_band_low`], hi = m[`${b}_band_high`];
    const hasBand = typeof lo === "number" && typeof hi === "number";
    const band = hasBand ? `${fmt(lo)} – ${fmt(hi)}` : "–";
    const inside = hasBand && typeof m[b] === "number" ? (m[b] >= lo && m[b] <= hi ? "yes" : "no") : "–";
    for (const v of [b, m[b], m[`retrained_${b}`], m[`original_${b}`], band, inside]) {
      const td = document.createElement("td");
      td.textContent = typeof v === "number" ? fmt(v) : v === undefined ? "–" : String(v);
      tr.appendChild(td);
    }
    tr.firstChild.className = "text";
    body.appendChild(tr);
  }
  const t = $("unlearning-table");
  t.replaceChild(body, t.tBodies[0]);
}

const table = new SortableTable($("trial-table"), $("table-note"));

function renderStudy(d) {
  const v = d.view, s = v.study, rows = d.sortedRows();
  $("study-view").hidden = false;
  $("study-view").dataset.studyId = String(s.id);
  $("study-title").textContent =
    `Study ${s.id}${s.name ? " (" + s.name + ")" : ""}: ${s.pipeline}, ${s.optimizer}, ${s.direction} ${s.objective}`;
  $("study-state").textContent = s.state + (s.error ? `: ${s.error}` : "");
  $("trial-count").textContent = String(s.trials_done);
  $("trial-count").dataset.count = String(s.trials_done);
  $("best-value").textContent = fmt(s.best_value);
  $("best-value").dataset.value = s.best_value === null ? "" : String(s.best_value);
  $("budget-spent").textContent = `${fmt(s.cost_spent)} of ${fmt(s.budget_seconds)} s`;
  $("cache-share").textContent = v.cache_share === null ? "–"
    : `${(100 * v.cache_share).toFixed(1)}% (${fmt(v.saved_seconds)} s saved)`;
  $("csv-link").href = `/v1/studies/${s.id}/trials.csv`;
  const points = bestSoFar(rows, s.direction);
  lineChart($("best-plot"), [{ label: "", points }], { xLabel: "cumulative compute (s)", yLabel: `best ${s.objective}` });
  barChart($("stage-plot"), v.stages.map((st) => ({
    label: st.stage,
    parts: [
      { name: "computed", value: st.compute_seconds || 0, color: "#1f77b4" },
      { name: "loaded", value: st.load_seconds || 0, color: "#ff7f0e" },
      { name: "saved by cache", value: st.saved_seconds || 0, color: "#2ca02c" },
    ],
  })), { unit: " s", empty: "no stage run yet" });
  const names = paramNames(rows);
  parallelCoordinates($("parallel-plot"), rows.filter((r) => r.state === "COMPLETE"), names, s.direction);
  renderUnlearning(rows, s.direction);
  table.setColumns([
    { key: "number", label: "#", get: (r) => r.number },
    { key: "state", label: "state", get: (r) => r.state, text: true },
    { key: "value", label: "value", get: (r) => r.value },
    { key: "cost", label: "cost (s)", get: (r) => r.cost },
    { key: "reused", label: "reused stages", get: (r) => r.reused },
    ...names.map((n) => ({ key: `p:${n}`, label: n, get: (r) => (n in r.params ? r.params[n] : null) })),
    { key: "error", label: "error", get: (r) => r.error, text: true },
  ]);
  table.setRows(rows);
}

async function renderImportance(d) {
  const v = d.view;
  const due = Date.now() - state.importanceAt > IMPORTANCE_MS;
  if (v.study.n_complete === state.importanceComplete || !due) return;
  state.importanceAt = Date.now();
  const imp = await get(`/v1/dashboard/studies/${d.id}/importance`);
  state.importanceComplete = imp.complete ? v.study.n_complete : -1;
  $("importance-note").textContent = `(extra-trees impurity, ${imp.n_trials} completed trials)`;
  barChart($("importance-plot"), imp.items.map((it) => ({
    label: it.param, parts: [{ name: "importance", value: it.importance, color: "#9467bd" }],
  })), { empty: "needs a few completed trials" });
}

async function tick() {
  clearTimeout(state.timer);
  let next = POLL_MS;
  try {
    state.list = (await get("/v1/dashboard/studies")).items;
    renderList();
    const d = state.selected;
    if (d) {
      await d.update();
      if (state.selected === d && (d.changed || !d.drawn)) {
        d.drawn = true;
        renderStudy(d);
        await renderImportance(d);
        if (!d.view.complete) next = FILL_MS;
      }
    }
    await renderCompare();
    $("status").textContent = `updated ${new Date().toLocaleTimeString()}` +
      (d && !d.view.complete ? ` (reading trials: ${d.view.loaded} so far)` : "");
  } catch (e) {
    $("status").textContent = e instanceof ApiError ? `${e.status}: ${e.message}` : String(e);
  }
  state.timer = setTimeout(tick, next);
}

function route() {
  const m = location.hash.match(/^#\/study\/(\d+)/);
  const id = m ? Number(m[1]) : null;
  if (id === null) {
    state.selected = null;
    $("study-view").hidden = true;
  } else if (!state.selected || state.selected.id !== id) {
    state.selected = new StudyData(id);
    state.importanceAt = 0;
    state.importanceComplete = -1;
  }
  tick();
}

async function act(what) {
  const d = state.selected;
  if (!d) return;
  try {
    await post(`/v1/studies/${d.id}/${what}`);
    $("action-msg").textContent = `${what}: done`;
  } catch (e) {
    $("action-msg").textContent = e.status === 401
      ? `${what}: this server needs its API token (enter it at the top)`
      : `${what}: ${e.message}`;
  }
  tick();
}

$("token").value = token();
$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  setToken($("token").value.trim());
  $("action-msg").textContent = token() ? "token set for this tab" : "token cleared";
});
$("stop-btn").addEventListener("click", () => act("stop"));
$("resume-btn").addEventListener("click", () => act("resume"));
$("compare-btn").addEventListener("click", () => renderCompare());
window.addEventListener("hashchange", route);
route();
