// pacsai admin dashboard: plain JS over the JSON API, charts by the vendored Chart.js.
"use strict";

const params = new URLSearchParams(location.search);
const REFRESH_MS = Math.max(2, Number(params.get("refresh") || 10)) * 1000;
const charts = {};
let openStudy = null;

// The token may come once in the URL fragment (#token=...): kept in localStorage, removed from the URL.
(function takeTokenFromFragment() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    localStorage.setItem("pacsai-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
})();

function token() { return localStorage.getItem("pacsai-token") || ""; }

async function api(path, method = "GET") {
  const res = await fetch(path, {
    method,
    headers: { "Authorization": "Bearer " + token(),
               "X-Pacsai-User": localStorage.getItem("pacsai-user") || "" },
  });
  if (res.status === 401 || res.status === 403) { showLogin(); throw new Error("not authorised"); }
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${await res.text()}`);
  return res.json();
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(tbody, cells, opts = {}) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    if (c instanceof Node) td.appendChild(c); else td.textContent = c === null || c === undefined ? "" : String(c);
    tr.appendChild(td);
  }
  if (opts.cls) tr.className = opts.cls;
  if (opts.onclick) tr.addEventListener("click", opts.onclick);
  if (opts.id) tr.dataset.id = opts.id;
  tbody.appendChild(tr);
  return tr;
}

function body(id) { const t = document.querySelector(`#${id} tbody`); t.replaceChildren(); return t; }
function stateTag(s) { return el("span", s, "state " + s); }
function time(iso) { return iso ? new Date(iso).toLocaleString() : ""; }
function hhmm(ms) { return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false }); }
function fmt(x, d = 3) { return x === null || x === undefined ? "–" : Number(x).toFixed(d); }

function showLogin() {
  document.getElementById("main").hidden = true;
  document.getElementById("login").hidden = false;
}

function chart(id, type, data, options = {}) {
  if (charts[id]) {
    charts[id].data = data;
    charts[id].update("none");
    return;
  }
  charts[id] = new Chart(document.getElementById(id), {
    type, data,
    options: { animation: false, responsive: true, maintainAspectRatio: true, ...options },
  });
}

const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563"];

async function loadHealth() {
  const res = await fetch("/readyz");
  const body = await res.json();
  const badge = document.getElementById("health");
  badge.textContent = res.ok ? "ready" : "NOT READY";
  badge.className = "badge " + (res.ok ? "ok" : "bad");
  document.getElementById("health-detail").textContent =
    body.failing.map(c => `${c.name}: ${c.detail}`).join(" · ");
}

async function loadSummary() {
  const s = await api("/api/summary?hours=24");
  const cards = document.getElementById("cards");
  cards.replaceChildren();
  const add = (n, label, bad) => {
    const c = el("div", null, "card" + (bad && n > 0 ? " bad" : ""));
    c.append(el("div", n, "n"), el("div", label, "l"));
    cards.appendChild(c);
  };
  for (const st of ["receiving", "queued", "processing", "done", "failed", "not_routed"]) {
    add(s.studies_by_state[st] || 0, "studies " + st.replace("_", "-"), st === "failed");
  }
  add(s.failures.failed_jobs, "failed jobs", true);
  add(s.failures.dead_deliveries, "dead deliveries", true);
  const labels = s.throughput.hours.map(h => hhmm(new Date(h).getTime()));
  chart("throughputChart", "bar", { labels, datasets: [
    { label: "studies received", data: s.throughput.received, backgroundColor: COLORS[0] },
    { label: "studies analysed", data: s.throughput.analysed, backgroundColor: COLORS[2] },
  ] }, { scales: { y: { beginAtZero: true, ticks: { precision: 0 },
                        title: { display: true, text: "study versions per hour" } } } });
  const stages = Object.keys(s.latency_seconds);
  chart("latencyChart", "bar", { labels: stages.map(x => x.replaceAll("_", " ")), datasets:
    ["p50", "p90", "p99"].map((p, i) => ({ label: p, backgroundColor: COLORS[i],
      data: stages.map(k => s.latency_seconds[k][p]) })) },
    { indexAxis: "y" });
}

async function loadQueues() {
  const [queues, workers, history] = await Promise.all([
    api("/api/queues"), api("/api/workers"), api("/api/queues/history?hours=6")]);
  const qb = body("queues");
  for (const q of queues) row(qb, [q.queue, q.queued, q.running, q.failed, q.broker_messages ?? "?", q.workers]);
  const wb = body("workers");
  for (const w of workers) {
    const mem = w.gpu && w.gpu.memory_allocated != null ? (w.gpu.memory_allocated / 2 ** 20).toFixed(0) + " MiB" : "–";
    row(wb, [w.name, w.queues.join(", "), w.active, (w.gpu && (w.gpu.name || w.gpu.device)) || "CPU", mem]);
  }
  if (!workers.length) row(wb, ["no worker answered", "", "", "", ""]);
  const datasets = Object.entries(history).map(([q, pts], i) => ({
    label: q, borderColor: COLORS[i % COLORS.length], backgroundColor: COLORS[i % COLORS.length],
    data: pts.map(p => ({ x: new Date(p.at).getTime(), y: p.queued + p.running })), pointRadius: 0, tension: 0.2,
  }));
  // The axis always spans the last 6 hours (an empty history must not label epoch 0 hours).
  const end = Date.now(), start = end - 6 * 3600 * 1000;
  chart("queueChart", "line", { datasets }, {
    parsing: true,
    scales: { x: { type: "linear", min: start, max: end,
                   ticks: { stepSize: 3600 * 1000, callback: v => hhmm(v) } },
              y: { beginAtZero: true, suggestedMax: 1, ticks: { precision: 0 },
                   title: { display: true, text: "jobs queued + running" } } },
    plugins: { subtitle: { display: !datasets.some(d => d.data.length),
                           text: "no samples yet (the listener samples every minute)" } },
  });
}

async function loadStudies() {
  const studies = await api("/api/studies?limit=20");
  const tb = body("studies");
  for (const s of studies) {
    row(tb, [s.id, stateTag(s.state), s.version, s.modalities, s.num_instances, s.calling_aet, time(s.last_received_at)],
        { cls: "click", id: s.id, onclick: () => { openStudy = s.id; loadStudy(); } });
  }
  if (openStudy !== null) await loadStudy();
}

async function loadStudy() {
  const s = await api(`/api/studies/${openStudy}`);
  document.getElementById("study-panel").hidden = false;
  document.getElementById("study-id").textContent = `${s.id} (${s.state})`;
  const tb = body("timeline");
  for (const e of s.timeline) row(tb, [time(e.at), e.version, e.kind, e.job_id, JSON.stringify(e.detail)]);
  const actions = document.getElementById("study-actions");
  actions.replaceChildren();
  if (s.state === "not_routed") {  // after the routing rules were fixed
    actions.append(actionButton("Reroute", `/api/studies/${s.id}/reroute`, refresh, "routed ✓"));
  }
}

function actionButton(label, path, done, doneLabel = "queued ✓") {
  const b = el("button", label, "small");
  b.addEventListener("click", async (ev) => {
    ev.stopPropagation();
    b.disabled = true;
    try { await api(path, "POST"); b.textContent = doneLabel; await done(); }
    catch (e) { b.textContent = "failed"; showError(e); }
  });
  return b;
}

async function loadFailures() {
  const [jobs, dead] = await Promise.all([api("/api/jobs?state=failed&limit=20"), api("/api/deliveries?state=dead&limit=20")]);
  const jb = body("failed-jobs");
  for (const j of jobs) {
    row(jb, [j.id, j.study_id, j.queue, j.attempts, el("span", j.error, ""),
             actionButton("Retry", `/api/jobs/${j.id}/retry`, refresh)]).children[4].className = "err";
  }
  if (!jobs.length) row(jb, ["none", "", "", "", "", ""]);
  const db = body("dead-deliveries");
  for (const d of dead) {
    const tr = row(db, [d.id, d.study_id, d.destination, d.attempts, d.last_error,
                        actionButton("Resend", `/api/deliveries/${d.id}/resend`, refresh)], { id: d.id });
    tr.children[4].className = "err";
  }
  if (!dead.length) row(db, ["none", "", "", "", "", ""]);
}

async function loadQuality() {
  const models = await api("/api/monitoring?days=14");
  const tb = body("quality");
  const today = new Date().toISOString().slice(0, 10);
  const days = [...new Set(models.flatMap(m => m.days.map(d => d.day)))].sort();
  for (const m of models) {
    const t = m.days.find(d => d.day === today);
    const status = m.drift ? el("span", "DRIFT: " + m.reasons.join("; "), "drift")
                           : el("span", t ? "within bounds" : "no findings today", t ? "nodrift" : "muted");
    row(tb, [m.model, t ? t.n : 0, t ? fmt(t.positive_rate) : "–", fmt(m.expected.positive_rate),
             t ? `${fmt(t.score_p10)} / ${fmt(t.score_p50)} / ${fmt(t.score_p90)}` : "–", status]);
  }
  if (!models.length) row(tb, ["no model outputs yet", "", "", "", "", ""]);
  chart("qualityChart", "line", { labels: days, datasets: models.map((m, i) => ({
    label: m.model + " positive rate", borderColor: COLORS[i % COLORS.length], backgroundColor: COLORS[i % COLORS.length],
    data: days.map(day => { const d = m.days.find(x => x.day === day); return d ? d.positive_rate : null; }),
  })) }, { aspectRatio: 5, scales: { y: { min: 0, max: 1 } } });
}

function showError(e) { document.getElementById("error").textContent = String(e.message || e); }

async function refresh() {
  if (!token()) { showLogin(); return; }
  document.getElementById("login").hidden = true;
  document.getElementById("main").hidden = false;
  const results = await Promise.allSettled([loadHealth(), loadSummary(), loadQueues(), loadStudies(), loadFailures(), loadQuality()]);
  const failed = results.filter(r => r.status === "rejected");
  document.getElementById("error").textContent = failed.map(r => r.reason.message || r.reason).join("\n");
  document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  document.body.dataset.loaded = "1";
}

document.getElementById("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  localStorage.setItem("pacsai-token", document.getElementById("token").value.trim());
  refresh();
});
document.getElementById("study-close").addEventListener("click", () => {
  openStudy = null; document.getElementById("study-panel").hidden = true;
});
const user = document.getElementById("user");
user.value = localStorage.getItem("pacsai-user") || "";
user.addEventListener("change", () => localStorage.setItem("pacsai-user", user.value.trim()));

refresh();
setInterval(refresh, REFRESH_MS);
