// A sortable table over many rows: click a header to sort (again: reverse); only the first
// `pageSize` rows of the sorted order are put in the DOM, so 5,000 trials stay fast.

import { fmt } from "./plot.js";

export class SortableTable {
  constructor(table, note, pageSize = 200) {
    this.table = table;
    this.note = note;
    this.pageSize = pageSize;
    this.columns = [];
    this.rows = [];
    this.sortKey = null;
    this.desc = false;
    table.tHead.addEventListener("click", (ev) => {
      const th = ev.target.closest("th");
      if (!th) return;
      const key = th.dataset.key;
      this.desc = this.sortKey === key ? !this.desc : key === "value";
      this.sortKey = key;
      this.render();
    });
  }

  // columns: [{key, label, get(row), text?}]
  setColumns(columns) {
    const same = columns.length === this.columns.length && columns.every((c, i) => c.key === this.columns[i].key);
    this.columns = columns;
    if (same) return;
    const tr = document.createElement("tr");
    for (const c of columns) {
      const th = document.createElement("th");
      th.textContent = c.label;
      th.dataset.key = c.key;
      if (c.text) th.className = "text";
      tr.appendChild(th);
    }
    this.table.tHead.replaceChildren(tr);
  }

  setRows(rows) {
    this.rows = rows;
    this.render();
  }

  sorted() {
    const col = this.columns.find((c) => c.key === this.sortKey);
    if (!col) return this.rows;
    const sign = this.desc ? -1 : 1;
    const val = (r) => col.get(r);
    return [...this.rows].sort((a, b) => {
      const x = val(a), y = val(b);
      if (x === y) return a.number - b.number;
      if (x === null || x === undefined) return 1;
      if (y === null || y === undefined) return -1;
      return (x < y ? -1 : 1) * sign;
    });
  }

  render() {
    for (const th of this.table.tHead.querySelectorAll("th")) {
      th.classList.toggle("asc", th.dataset.key === this.sortKey && !this.desc);
      th.classList.toggle("desc", th.dataset.key === this.sortKey && this.desc);
    }
    const rows = this.sorted().slice(0, this.pageSize);
    const body = document.createElement("tbody");
    for (const r of rows) {
      const tr = document.createElement("tr");
      tr.className = r.state;
      tr.dataset.number = String(r.number);
      for (const c of this.columns) {
        const td = document.createElement("td");
        const v = c.get(r);
        td.textContent = typeof v === "number" ? fmt(v) : v === null || v === undefined ? "" : String(v);
        if (c.text) td.className = "text";
        if (c.key === "value" && v !== null && v !== undefined) td.dataset.value = String(v);
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
    this.table.replaceChild(body, this.table.tBodies[0]);
    this.table.dataset.total = String(this.rows.length);
    this.note.textContent = this.rows.length > rows.length
      ? `(${this.rows.length} trials; showing the first ${rows.length} in this order)`
      : `(${this.rows.length} trials)`;
  }
}
