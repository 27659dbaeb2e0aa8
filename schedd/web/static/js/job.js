// One job: its attributes (as qstat -f), its state timeline with the pending
// reason and estimated start, the live tail of its output, its GPU and CPU use
// over time and every metric it reported, each as a chart (drag to zoom).
import { api, get, jobPath, live, ApiError } from "./api.js";
import { el, letter, when, number, duration } from "./util.js";
import { chart, columns, align, fit } from "./charts.js";

const NODE_KEY = /^(rank\d+\.)?(gpu(\d+)|cpu)\.(.+)$/;   // gpu0.util, cpu.pct, rank1.gpu0.util: the node's samples
const MAX_LIVE_POINTS = 20000;                // appended points kept before reading the series again

export function mount(root, id) {
  const title = el("h1", {}, `Job ${id}`);
  const actions = el("div", { class: "actions", id: "actions" });
  const note = el("p", { class: "muted", id: "action-note", role: "status" });
  const attrs = el("tbody");
  const pendingBox = el("p", { id: "pending" });
  const timeline = el("ol", { class: "timeline", id: "timeline" });
  const logPre = el("pre", { class: "log", id: "log" }, "…");
  let logStream = "out";
  const logSel = el("select", { id: "log-stream", onchange: (e) => { logStream = e.target.value; tail(); } },
    el("option", { value: "out" }, "stdout"), el("option", { value: "err" }, "stderr"));
  const customBox = el("div", { class: "charts", id: "custom-charts" });
  const nodeBox = el("div", { class: "charts", id: "node-charts" });
  root.append(title, actions, note,
    el("h2", {}, "Metrics ", el("span", { class: "legend-note" }, "drag to zoom, double-click to reset")), customBox,
    el("h2", {}, "GPU and CPU"), nodeBox,
    el("div", { class: "grid2" },
      el("div", {}, el("h2", {}, "State"), pendingBox, timeline, el("h2", {}, "Output ", logSel), logPre),
      el("div", {}, el("h2", {}, "Attributes"), el("table", { class: "attrs" }, attrs))));

  let job = null, last = {}, timers = [], loaded = false;
  const charts = new Map();   // name -> {u, bySteps}
  const early = [];           // points streamed before the first read of the series

  async function loadJob() {
    const r = await get(jobPath(id));
    job = r.job;
    const st = letter(job.state);
    title.replaceChildren(`Job ${job.id} `, el("span", { class: "muted" }, job.name), " ",
      el("span", { class: `state state-${st}`, id: "job-state", dataset: { state: job.state } }, st));
    drawAttrs(r.live);
    drawActions();
    const evs = await get(`${jobPath(id)}/events`);
    timeline.replaceChildren(...evs.events.map((e) => el("li", {},
      el("span", { class: "muted" }, when(e.time)), " ", el("strong", {}, e.kind), " ", summary(e.data))));
    if (job.state === "queued" || job.state === "held" || job.state === "waiting") {
      pendingBox.replaceChildren("Pending: ", el("strong", {}, job.reason || job.state),
        job.planned_start ? ` — estimated start ${when(job.planned_start)}` : " — no estimated start yet");
    } else pendingBox.replaceChildren();
  }

  function drawAttrs(liveUse) {
    const rows = [];
    const skip = new Set(["env_spec", "script", "order", "number"]);
    for (const [k, v] of Object.entries(job)) {
      if (skip.has(k) || v === null || v === "" || (Array.isArray(v) && !v.length)) continue;
      if (typeof v === "object" && !Array.isArray(v) && !Object.keys(v).length) continue;
      rows.push([k, show(k, v)]);
    }
    for (const [k, v] of Object.entries(liveUse || {})) rows.push([`live.${k}`, k.endsWith("_s") ? duration(v) : number(v)]);
    for (const [k, v] of Object.entries(last)) {
      if (!NODE_KEY.test(k)) rows.push([`metric.${k}`, `${number(v.value)}${v.step !== null && v.step !== undefined ? ` (step ${v.step})` : ""}`]);
    }
    attrs.replaceChildren(...rows.map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", {}, v))));
    if (job.script) attrs.append(el("tr", {}, el("td", {}, "script"), el("td", {}, el("pre", {}, job.script))));
  }

  function drawActions() {
    const s = window.schedd.session;
    const mine = s && (s.role !== "user" || s.user === job.owner);
    if (!mine) { actions.replaceChildren(el("span", { class: "muted" }, `read-only: ${job.owner}'s job`)); return; }
    const act = (label, method, path) => el("button", { type: "button", id: `do-${label.toLowerCase()}`, onclick: async () => {
      note.textContent = "";
      try { await api(method, path); note.textContent = `${label}: done`; await loadJob(); }
      catch (e) { note.textContent = `${label}: ${e.message}`; note.className = "error"; }
    } }, label);
    const btns = [];
    if (job.state !== "finished") btns.push(act("Cancel", "DELETE", jobPath(id)));
    if (job.state === "queued" || job.state === "waiting") btns.push(act("Hold", "POST", `${jobPath(id)}/hold`));
    if (job.state === "held") btns.push(act("Release", "POST", `${jobPath(id)}/release`));
    actions.replaceChildren(...btns);
  }

  async function tail() {
    try {
      const r = await get(`${jobPath(id)}/log?stream=${logStream}&tail=200`);
      const atEnd = logPre.scrollTop + logPre.clientHeight >= logPre.scrollHeight - 4;
      logPre.textContent = (r.truncated ? "…\n" : "") + r.lines.join("\n");
      if (atEnd) logPre.scrollTop = logPre.scrollHeight;
    } catch (e) {
      logPre.textContent = e instanceof ApiError ? `(no output: ${e.message})` : String(e);
    }
  }

  // Charts: each custom metric on its own; the node's samples grouped by
  // what they measure (gpu util: one line per GPU).
  async function loadMetrics() {
    let m;
    try { m = await get(`${jobPath(id)}/metrics?max_points=1000`); }
    catch (e) { customBox.replaceChildren(el("p", { class: "muted" }, `no metrics: ${e.message}`)); loaded = true; return; }
    last = m.last || {};
    const groups = new Map();
    for (const s of m.series) {
      const hit = NODE_KEY.exec(s.key);
      if (!hit) { draw(customBox, s.key, [[s.key, s.points]]); continue; }
      const name = hit[3] !== undefined ? `gpu.${hit[4]}` : `cpu.${hit[4]}`;
      if (!groups.has(name)) groups.set(name, []);
      groups.get(name).push([(hit[1] || "") + hit[2], s.points]);
    }
    for (const [name, members] of groups) draw(nodeBox, name, members, true);
    if (!m.series.length) customBox.replaceChildren(el("p", { class: "muted", id: "no-metrics" }, "no metrics reported yet"));
    loaded = true;
    for (const p of early.splice(0)) point(p);
    if (job) drawAttrs(null);
  }

  function draw(box, name, members, time = false) {
    const cols = members.map(([label, pts]) => [label, columns(pts)]);
    const bySteps = !time && cols.every(([, c]) => c.bySteps);
    const data = align(cols.map(([, c]) => [c.xs, c.ys]));
    const old = charts.get(name);
    if (old) { old.u.setData(data, !old.zoomed); return; }
    document.getElementById("no-metrics")?.remove();
    const holder = el("div", { class: "chart", dataset: { metric: name } });
    box.append(holder);
    const u = chart(holder, name, { labels: cols.map(([l]) => l), data, time: !bySteps });
    const entry = { u, bySteps, zoomed: false };
    u.hooks.setSelect = [() => { if (u.select.width > 0) entry.zoomed = true; }];
    holder.addEventListener("dblclick", () => { entry.zoomed = false; });
    charts.set(name, entry);
  }

  // A streamed point: a custom metric's is appended where it belongs; the
  // node's samples are read again (downsampled) a little later, in one go.
  let nodeReread = null;
  function point(p) {
    if (!loaded) { early.push(p); return; }
    last[p.key] = { time: p.time, step: p.step, value: p.value };
    if (NODE_KEY.test(p.key)) {
      nodeReread ??= setTimeout(() => { nodeReread = null; loadMetrics(); }, 2000);
      return;
    }
    const c = charts.get(p.key);
    if (!c) { draw(customBox, p.key, [[p.key, [[p.time, p.step, p.value]]]]); return; }
    const x = c.bySteps && p.step !== null && p.step !== undefined ? p.step : p.time;
    const [xs, ys] = c.u.data;
    if (xs.length && x <= xs[xs.length - 1]) return;   // already read with the series
    if (xs.length >= MAX_LIVE_POINTS) { loadMetrics(); return; }
    c.u.setData([[...xs, x], [...ys, p.value]], !c.zoomed);
  }

  const stop = live({ job: id }, {
    point: (p) => { if (p.job === id) point(p); },
    job: (ev) => { if (ev.id === id) { loadJob().catch(() => {}); tail(); } },
    lagged: () => loadMetrics(),   // the stream dropped points for us: read the series again
  }, () => Promise.all([loadJob(), loadMetrics()]));

  loadJob().then(() => { tail(); }).catch((e) => { title.textContent = `Job ${id}: ${e.message}`; });
  loadMetrics();
  timers.push(setInterval(() => { if (job && job.state !== "finished") tail(); }, 2000));
  const onResize = () => fit([...charts.values()].map((c) => c.u));
  window.addEventListener("resize", onResize);
  return () => { stop(); timers.forEach(clearInterval); window.removeEventListener("resize", onResize); };
}

function show(key, v) {
  if (key.endsWith("_time") || key === "planned_start") return when(v);
  if (key === "walltime_s") return duration(v);
  if (key === "chunks") return "select=" + v.map((c) => `${c.count}:ncpus=${c.ncpus}:ngpus=${c.ngpus}:mem=${c.mem_mb}mb`).join("+");
  if (key === "exec_nodes") return v.map((c) => `${c.node}${c.gpus && c.gpus.length ? `/gpu${c.gpus.join(",")}` : ""}`).join("+");
  if (key === "env") return Object.entries(v).map(([a, b]) => `${a}=${b}`).join(", ");
  if (Array.isArray(v) || typeof v === "object") return JSON.stringify(v);
  return String(v);
}

function summary(data) {
  if (!data || typeof data !== "object") return "";
  return Object.entries(data).filter(([, v]) => v !== null && v !== "" && typeof v !== "object")
    .slice(0, 6).map(([k, v]) => `${k}=${v}`).join(" ");
}
