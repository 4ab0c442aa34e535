// The trace page: a step rail (j/k), the current step's rows with changed cells
// highlighted, UDF input and output side by side, replayed vs online values.
"use strict";
let trace = null;
let current = 0;
const cache = new Map();

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function table(data, id) {
  const t = el("table", id ? { id } : {});
  if (!data || !data.columns) return t;
  t.append(el("tr", {}, ...data.columns.map((c, i) => el("th", { title: data.types[i] }, c))));
  data.rows.forEach((row, r) => {
    const tr = el("tr");
    row.forEach((v, c) => {
      const td = el("td", {}, v === null ? "null" : v);
      if (v === null) td.classList.add("null");
      if (r > 0 && data.rows[r - 1][c] !== v) td.classList.add("changed");
      tr.append(td);
    });
    t.append(tr);
  });
  if (data.total > data.rows.length) t.append(el("caption", {}, `${data.rows.length} of ${data.total} rows`));
  return t;
}

function detail(obj) {
  const dl = el("dl");
  for (const [k, v] of Object.entries(obj || {})) {
    if (v === null || v === undefined) continue;
    dl.append(el("dt", {}, k), el("dd", {}, typeof v === "object" ? JSON.stringify(v, null, 1) : v));
  }
  return dl;
}

function compare() {
  const c = trace.computed, o = (trace.online && trace.online.value) || { status: "-", values: {} };
  const t = el("table", { id: "compare" });
  t.append(el("tr", {}, el("th", {}, "feature"), el("th", {}, "replayed"), el("th", {}, "online")));
  t.append(el("tr", {}, el("td", {}, "status"), el("td", {}, c.status), el("td", {}, o.status)));
  t.append(el("tr", {}, el("td", {}, "event time"), el("td", {}, c.event_time || "-"), el("td", {}, o.event_time || "-")));
  for (const f of Object.keys(c.values)) {
    const a = JSON.stringify(c.values[f]), b = JSON.stringify(o.values ? o.values[f] : null);
    const tr = el("tr", {}, el("td", {}, f), el("td", {}, a), el("td", {}, b));
    if (a !== b) tr.classList.add("diff");
    t.append(tr);
  }
  const meta = detail({
    "as of": trace.at,
    "ttl": trace.ttl || "none",
    "online view version": trace.online && trace.online.view_version,
    "materialized until": trace.online && trace.online.until,
    "materialized at": trace.online && trace.online.materialized_at,
  });
  return el("div", {}, meta, t);
}

async function rows(i) {
  if (!cache.has(i)) cache.set(i, fetch(`steps/${i}`).then(r => r.json()));
  return cache.get(i);
}

async function show(i) {
  if (!trace || i < 0 || i >= trace.steps.length) return;
  current = i;
  document.querySelectorAll("#steps li").forEach((li, j) => li.classList.toggle("current", j === i));
  const cur = document.querySelector("#steps li.current");
  if (cur) cur.scrollIntoView({ block: "nearest" });
  const s = trace.steps[i];
  document.getElementById("step-title").textContent = `${i + 1}/${trace.steps.length} · ${s.title}`;
  const d = document.getElementById("step-detail");
  d.replaceChildren(detail(s.detail));
  const body = document.getElementById("step-body");
  body.replaceChildren();
  const data = await rows(i);
  if (current !== i) return;
  if (s.kind === "udf_call") {
    body.append(el("div", { class: "side" },
      el("div", {}, el("h3", {}, "input"), table(data.rows, "udf-input")),
      el("div", {}, el("h3", {}, "output"), table(data.output, "udf-output"))));
  } else if (s.kind === "value" || s.kind === "online") {
    body.append(compare());
    if (data.rows) body.append(table(data.rows, "step-rows"));
  } else if (data.rows) {
    body.append(table(data.rows, "step-rows"));
  }
  document.body.dataset.step = String(i);
}

async function main() {
  trace = await (await fetch("trace.json")).json();
  const v = document.getElementById("verdict");
  v.textContent = trace.verdict;
  v.className = `verdict ${trace.verdict}`;
  const entity = trace.entity.map(([k, val]) => `${k}=${val}`).join(", ");
  document.getElementById("what").textContent = `${trace.view}@${trace.view_version} · ${entity} · as of ${trace.at}`;
  document.getElementById("reason").textContent = trace.reason;
  document.getElementById("command").textContent = trace.command;
  document.getElementById("plan").textContent = trace.plan;
  document.getElementById("sql").textContent = trace.sql || "";
  const list = document.getElementById("steps");
  trace.steps.forEach((s, i) => {
    const li = el("li", { "data-index": i }, el("span", { class: "kind" }, s.kind.replace("_", " ")), s.title);
    li.addEventListener("click", () => show(i));
    list.append(li);
  });
  document.getElementById("copy").addEventListener("click", async () => {
    try { await navigator.clipboard.writeText(trace.command); } catch (e) {
      const r = document.createRange(); r.selectNodeContents(document.getElementById("command"));
      const sel = window.getSelection(); sel.removeAllRanges(); sel.addRange(r);
    }
  });
  document.addEventListener("keydown", e => {
    if (e.key === "j" || e.key === "ArrowDown") { show(current + 1); e.preventDefault(); }
    if (e.key === "k" || e.key === "ArrowUp") { show(current - 1); e.preventDefault(); }
  });
  await show(0);
  document.body.dataset.ready = "1";
}
main();
