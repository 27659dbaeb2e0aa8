// The jobs page: every job (the live ones and the history, newest first) in
// a table filtered by user, state, queue and a search, kept current by the
// event stream; one chosen metric's last value for the jobs on screen.
import { get, live, jobPath, ApiError } from "./api.js";
import { el, letter, duration, gpus, number, hashQuery, setHashQuery } from "./util.js";

const FIELDS = "id,order,name,owner,queue,state,chunks,submit_time,start_time,end_time,exit_status,finish_reason,reason";
const SHOWN = 500;          // rows drawn at most: a usable table, not 10,000 DOM rows
const METRIC_ROWS = 50;     // jobs whose metric is fetched at most, per refresh
const MAX_PAGES = 40;       // history pages read at most (5000 jobs each)

export function mount(root) {
  const q = hashQuery();
  const filt = { user: q.get("user") || "", state: q.get("state") || "", queue: q.get("queue") || "",
                 search: q.get("q") || "", metric: q.get("metric") || "loss" };
  const byId = new Map();
  const metric = new Map();  // job id -> last value of filt.metric
  let drawn = false, timers = [];

  const input = (name, ph) => el("input", { id: `f-${name}`, value: filt[name], placeholder: ph, size: 12,
    oninput: (e) => { filt[name] = e.target.value.trim(); changed(); } });
  const stateSel = el("select", { id: "f-state", onchange: (e) => { filt.state = e.target.value; changed(); } },
    ["", "queued", "running", "held", "waiting", "exiting", "finished"].map((s) =>
      el("option", { value: s, selected: s === filt.state }, s || "any state")));
  const queueSel = el("select", { id: "f-queue", onchange: (e) => { filt.queue = e.target.value; changed(); } },
    el("option", { value: "" }, "any queue"));
  const count = el("span", { class: "muted", id: "count" });
  const tbody = el("tbody");
  root.append(
    el("h1", {}, "Jobs"),
    el("div", { class: "filters" }, input("search", "search id, name"), input("user", "user"), stateSel, queueSel,
      el("label", {}, "metric ", input("metric", "loss")), count),
    el("table", { id: "jobs" }, el("thead", {}, el("tr", {},
      ["id", "name", "owner", "queue", "state", "GPUs", "runtime", "wait", ""].map((h, i) =>
        el("th", { class: i >= 5 ? "num" : undefined, id: i === 8 ? "metric-head" : undefined }, h)))), tbody),
  );

  async function load() {
    const seen = new Set();
    let after = null, pages = 0;
    do {
      const page = await get(`/api/v1/jobs?finished=1&fields=${FIELDS}${after !== null ? `&after=${after}` : ""}`);
      for (const j of page.jobs) { byId.set(j.id, j); seen.add(j.id); }
      after = page.next ?? null;
    } while (after !== null && ++pages < MAX_PAGES);
    for (const id of [...byId.keys()]) if (!seen.has(id)) byId.delete(id);
    const queues = new Set([...byId.values()].map((j) => j.queue));
    const have = new Set([...queueSel.options].map((o) => o.value));
    for (const name of [...queues].sort()) if (!have.has(name)) queueSel.append(el("option", { value: name, selected: name === filt.queue }, name));
    schedule();
  }

  function matches(j) {
    if (filt.user && j.owner !== filt.user) return false;
    if (filt.state && j.state !== filt.state) return false;
    if (filt.queue && j.queue !== filt.queue) return false;
    if (filt.search) {
      const s = filt.search.toLowerCase();
      if (!j.id.toLowerCase().includes(s) && !j.name.toLowerCase().includes(s) && !j.owner.toLowerCase().includes(s)) return false;
    }
    return true;
  }

  function visible() {
    return [...byId.values()].filter(matches).sort((a, b) => b.order - a.order);
  }

  function row(j, now) {
    const end = j.end_time || now;
    const runtime = j.start_time ? end - j.start_time : null;
    const wait = (j.start_time || (j.state === "finished" ? j.end_time : now)) - j.submit_time;
    const mv = metric.get(j.id);
    const st = letter(j.state);
    return el("tr", { dataset: { id: j.id, state: j.state } },
      el("td", {}, el("a", { href: `#/job/${encodeURIComponent(j.id)}` }, j.id)),
      el("td", {}, j.name), el("td", {}, j.owner), el("td", {}, j.queue),
      el("td", { class: `state state-${st}`, title: j.reason || j.finish_reason || "" }, st),
      el("td", { class: "num" }, gpus(j)), el("td", { class: "num" }, duration(runtime)),
      el("td", { class: "num" }, duration(wait)), el("td", { class: "num metric" }, mv === undefined ? "" : number(mv)));
  }

  function render() {
    const rows = visible();
    const now = Date.now() / 1000;
    tbody.replaceChildren(...rows.slice(0, SHOWN).map((j) => row(j, now)));
    count.textContent = rows.length > SHOWN ? `${SHOWN} of ${rows.length} jobs shown; narrow the filter`
      : `${rows.length} job${rows.length === 1 ? "" : "s"}`;
    document.getElementById("metric-head").textContent = filt.metric;
    if (!drawn) { drawn = true; root.dataset.ready = "1"; }
  }

  let pending = false;
  function schedule() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; render(); });
  }

  function changed() {
    setHashQuery("jobs", { user: filt.user, state: filt.state, queue: filt.queue, q: filt.search,
                           metric: filt.metric === "loss" ? "" : filt.metric });
    schedule();
  }

  // The metric column: the last value, for the first jobs on screen that run or ran.
  async function metrics() {
    if (!filt.metric) return;
    const key = filt.metric;
    const jobs = visible().slice(0, SHOWN).filter((j) => j.start_time).slice(0, METRIC_ROWS);
    await Promise.all(jobs.map(async (j) => {
      if (j.state === "finished" && metric.has(j.id)) return;
      try {
        const m = await get(`/api/v1/jobs/${encodeURIComponent(j.id)}/metrics?keys=${encodeURIComponent(key)}&max_points=2`);
        const last = (m.last || {})[key];
        if (last) metric.set(j.id, last.value);
      } catch (e) { if (!(e instanceof ApiError)) throw e; }
    }));
    schedule();
  }

  // One job read again: its times change with its state, and a new one is not in the table yet.
  async function refresh(id) {
    try { byId.set(id, (await get(jobPath(id))).job); schedule(); } catch (e) { /* purged meanwhile */ }
  }

  const stop = live({}, {
    job: (ev) => {
      const j = byId.get(ev.id);
      if (j) { j.state = ev.state; j.exit_status = ev.exit_status; schedule(); }
      refresh(ev.id);
    },
  }, load);

  load().then(metrics).catch((e) => { count.textContent = e.message; });
  timers.push(setInterval(schedule, 1000));          // runtimes tick
  timers.push(setInterval(() => metrics().catch(() => {}), 3000));
  return () => { stop(); timers.forEach(clearInterval); };
}
