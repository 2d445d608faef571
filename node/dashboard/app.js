// gearmesh dashboard: polls /api/status every 2 s and draws it. Plain DOM and
// inline SVG, no library, no network beyond this node. Every value from the
// server goes in with textContent: function names and client ids are set by
// whoever connects to the Gearman port.
"use strict";

const POLL_MS = 2000;
let csrf = document.querySelector('meta[name="csrf-token"]').content;
const actions = document.querySelector('meta[name="actions"]').content === "on";
let openFn = null;
let lastOk = 0;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else if (k === "onclick") e.addEventListener("click", v);
    else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}
const num = (v, col, extra) => el("td", { class: "n", "data-col": col, ...(extra || {}) },
                                  v === null || v === undefined ? "–" : v);
const badge = (text, cls) => el("span", { class: "badge " + (cls || text) }, text);
const fmtRate = (r) => (r >= 100 ? r.toFixed(0) : r.toFixed(1));

function fill(tbody, rows) { tbody.replaceChildren(...rows); }

function drawSummary(s) {
  const t = s.totals;
  const down = s.nodes.filter((n) => !n.reachable).length;
  const box = document.getElementById("summary");
  box.replaceChildren(
    el("span", {}, "nodes ", el("b", { id: "sum-nodes" }, s.nodes.length),
       down ? el("span", {}, " (", badge(down + " unreachable", "bad"), ")") : ""),
    "   · queued ", el("b", { id: "sum-queued" }, t.queued),
    "   · running ", el("b", { id: "sum-running" }, t.running),
    "   · workers ", el("b", { id: "sum-workers" }, t.workers),
    "   · ", el("b", {}, fmtRate(s.rates.submitted)), " submitted/s",
    "   · ", el("b", {}, fmtRate(s.rates.completed)), " completed/s");
}

function drawFunctions(s) {
  fill(document.querySelector("#functions tbody"), s.functions.map((f) => {
    const per = Object.entries(f.nodes).map(([n, v]) =>
      `${n} ${v.queued}/${v.running}/${v.workers}`).join("   ");
    const name = el("td", { "data-col": "name" }, f.name);
    if (f.stuck) name.append(" ", badge("no worker", "bad"));
    return el("tr", { class: "fn" + (f.stuck ? " stuck" : ""), "data-fn": f.name,
                      onclick: () => openJobs(f.name) },
              name, num(f.queued, "queued"), num(f.running, "running"),
              num(f.workers, "workers"), el("td", { class: "small" }, per));
  }));
}

function drawNodes(s) {
  fill(document.querySelector("#nodes tbody"), s.nodes.map((n) => {
    const links = Object.entries(n.links || {});
    const bad = links.filter(([, st]) => st !== "up");
    const linkCell = el("td", { "data-col": "links" });
    if (!links.length) linkCell.append("–");
    else if (!bad.length) linkCell.append(badge(`${links.length} up`, "up"));
    else bad.forEach(([p, st]) => linkCell.append(badge(`${p} ${st}`, st), " "));
    const state = el("td", { "data-col": "state" }, badge(n.state));
    if (!n.reachable) state.append(" ", badge("unreachable", "bad"),
                                   el("div", { class: "small" }, n.error || ""));
    else if (!n.ready) state.append(el("div", { class: "small" }, n.why || ""));
    const r = n.rates || {};
    return el("tr", { "data-node": n.id },
              el("td", { title: n.address || "" }, n.id), state, num(n.epoch, "epoch"),
              num(n.partitions, "partitions"), linkCell, num(n.connections, "connections"),
              num(n.workers, "workers"), num(fmtRate(r.submitted || 0), "submitted"),
              num(fmtRate(r.completed || 0), "completed"),
              num(n.store && n.store.commit_ms !== null && n.store.commit_ms !== undefined
                  ? n.store.commit_ms.toFixed(2) : null, "commit"));
  }));
}

function drawWorkers(s) {
  fill(document.querySelector("#workers tbody"), s.workers.map((w) =>
    el("tr", { "data-worker": w.node + "/" + w.fd },
       el("td", {}, w.node), el("td", {}, w.client_id), el("td", {}, w.peer),
       el("td", {}, w.functions.join(", ")), el("td", {}, badge(w.state)))));
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function drawChart(h) {
  const box = document.getElementById("chart");
  if (!h) { box.replaceChildren("no data yet"); return; }
  // 5-second means keep the lines readable at 900 points.
  const step = 5, W = 1200, H = 200, L = 44, B = 20;
  const avg = (a) => { const o = []; for (let i = 0; i < a.length; i += step) {
    const part = a.slice(i, i + step); o.push(part.reduce((x, y) => x + y, 0) / part.length); }
    return o; };
  const sub = avg(h.submitted), done = avg(h.completed);
  const max = Math.max(1, ...sub, ...done);
  const x = (i) => L + (i / Math.max(1, sub.length - 1)) * (W - L - 4);
  const y = (v) => 4 + (1 - v / max) * (H - B - 8);
  const path = (a) => a.map((v, i) => `${i ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`).join("");
  const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "jobs per second" });
  for (const frac of [0, 0.5, 1]) {
    const yy = y(max * frac);
    g.append(svg("line", { x1: L, x2: W, y1: yy, y2: yy, stroke: "#e5e7eb" }));
    g.append(svg("text", { x: L - 6, y: yy + 4, "text-anchor": "end", "font-size": 11,
                           fill: "#667085" }, fmtRate(max * frac)));
  }
  for (const [label, xi] of [["-15 min", 0], ["-10", 60], ["-5", 120], ["now", sub.length - 1]]) {
    g.append(svg("text", { x: x(xi), y: H - 4, "font-size": 11, fill: "#667085",
                           "text-anchor": xi ? (xi === sub.length - 1 ? "end" : "middle") : "start" },
                 label));
  }
  g.append(svg("path", { d: path(sub), fill: "none", stroke: "#2563eb", "stroke-width": 2 }));
  g.append(svg("path", { d: path(done), fill: "none", stroke: "#16a34a", "stroke-width": 2 }));
  const legend = el("div", { class: "legend" },
    el("span", { style: "color:#2563eb" }, "━ submitted/s"), "   ",
    el("span", { style: "color:#16a34a" }, "━ completed/s"));
  box.replaceChildren(g, legend);
}

async function openJobs(name) {
  openFn = name;
  document.getElementById("jobs-panel").hidden = false;
  document.getElementById("jobs-fn").textContent = name;
  await refreshJobs();
}

async function refreshJobs() {
  if (openFn === null) return;
  const name = openFn;
  const r = await fetch(`/api/functions/${encodeURIComponent(name)}/jobs?limit=200`);
  const data = await r.json();
  if (name !== openFn) return;
  document.getElementById("jobs-total").textContent =
    `${data.total} queued` + (data.jobs.length < data.total ? `, first ${data.jobs.length} shown` : "");
  fill(document.querySelector("#jobs tbody"), data.jobs.map((j) => {
    const act = el("td", {});
    if (actions && j.state === "queued") {
      act.append(el("button", { class: "cancel", type: "button", "data-handle": j.handle,
                                onclick: () => cancelJob(j.handle) }, "cancel"));
    }
    return el("tr", { "data-handle": j.handle },
              el("td", {}, j.handle), el("td", {}, j.unique), el("td", {}, j.priority),
              el("td", {}, j.state), num(j.age.toFixed(0), "age"), num(j.size, "size"),
              el("td", {}, j.owner), act);
  }));
}

async function cancelJob(handle) {
  const msg = document.getElementById("jobs-msg");
  msg.textContent = "";
  const post = () => fetch("/api/jobs/cancel", {
    method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
    body: JSON.stringify({ handle }) });
  let r = await post();
  if (r.status === 403) {
    // The node restarted since the page loaded: its token changed.
    const t = await fetch("/api/csrf").then((x) => x.json()).catch(() => null);
    if (t && t.token !== csrf) { csrf = t.token; r = await post(); }
  }
  const data = await r.json().catch(() => ({}));
  if (!r.ok || !data.cancelled) msg.textContent = `cancel ${handle}: ${data.error || r.status}`;
  await Promise.all([refreshJobs(), poll()]);
}

async function poll() {
  try {
    const r = await fetch("/api/status", { cache: "no-store" });
    if (!r.ok) throw new Error("HTTP " + r.status);
    const s = await r.json();
    drawSummary(s); drawFunctions(s); drawNodes(s); drawWorkers(s); drawChart(s.history);
    lastOk = Date.now();
    const u = document.getElementById("updated");
    u.className = "updated";
    u.textContent = "updated " + new Date().toLocaleTimeString();
    u.dataset.generated = String(s.generated_at);
  } catch (e) {
    const u = document.getElementById("updated");
    u.className = "updated stale";
    u.textContent = `no answer (${e.message}); last update ` +
      (lastOk ? new Date(lastOk).toLocaleTimeString() : "never");
  }
}

document.getElementById("jobs-close").addEventListener("click", () => {
  openFn = null; document.getElementById("jobs-panel").hidden = true; });

poll();
setInterval(() => { poll(); refreshJobs(); }, POLL_MS);
