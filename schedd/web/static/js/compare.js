// Compare: several jobs (ids, or an array "17[]" for all its subjobs) with
// one metric overlaid on one chart, and what tells them apart in a table:
// name, array index, resources, the metric's last value, parameters and tags.
import { get, jobPath } from "./api.js";
import { el, number, gpus, duration, hashQuery, setHashQuery } from "./util.js";
import { chart, columns, align } from "./charts.js";

const MAX_JOBS = 20;

export function mount(root) {
  const q = hashQuery();
  const idsIn = el("input", { id: "cmp-ids", size: 30, value: q.get("ids") || "", placeholder: "12, 13, 17[]" });
  const keySel = el("select", { id: "cmp-key" });
  const want = q.get("key") || "loss";
  const status = el("span", { class: "muted", id: "cmp-status" });
  const box = el("div", { class: "chart", id: "cmp-chart" });
  const table = el("table", { id: "cmp-table" });
  root.append(el("h1", {}, "Compare"),
    el("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); run(); } },
      el("label", {}, "jobs ", idsIn), el("label", {}, "metric ", keySel),
      el("button", { type: "submit", id: "cmp-go" }, "Compare"), status),
    box, el("h2", {}, "Parameters"), table);
  keySel.addEventListener("change", () => run());

  async function expand(ids) {
    const out = [];
    for (const raw of ids) {
      const r = await get(jobPath(raw));
      if (r.jobs) out.push(...r.jobs.filter((j) => j.parent)); else out.push(r.job);
    }
    return out.slice(0, MAX_JOBS);
  }

  async function run() {
    const ids = idsIn.value.split(/[\s,]+/).filter(Boolean);
    if (!ids.length) { status.textContent = "name two or more jobs"; return; }
    status.textContent = "…";
    let jobs;
    try { jobs = await expand(ids.map((i) => (i.endsWith("[]") ? i.slice(0, -2) + "[0-100000]" : i))); }
    catch (e) { status.textContent = e.message; return; }
    const metrics = await Promise.all(jobs.map((j) =>
      get(`${jobPath(j.id)}/metrics?max_points=1000`).catch(() => ({ series: [], last: {} }))));
    // The metric choice: every custom key any of them reported.
    const keys = new Set();
    metrics.forEach((m) => m.series.filter((s) => s.kind === "custom").forEach((s) => keys.add(s.key)));
    const key = keySel.value || want;
    keySel.replaceChildren(...[...keys].sort().map((k) => el("option", { value: k, selected: k === key }, k)));
    const chosen = keys.has(key) ? key : [...keys].sort()[0];
    setHashQuery("compare", { ids: ids.join(","), key: chosen });
    const pairs = [], labels = [];
    let time = false;
    jobs.forEach((j, i) => {
      const s = metrics[i].series.find((x) => x.key === chosen);
      if (!s) return;
      const c = columns(s.points);
      time ||= !c.bySteps;
      labels.push(`${j.id} ${j.name}`);
      pairs.push(c);
    });
    box.replaceChildren();
    window.schedd.charts = {};
    if (pairs.length) {
      const data = align(pairs.map((c) => [time ? c.xs : c.xs, c.ys]));
      chart(box, "compare", { labels, data, time });
      box.dataset.jobs = jobs.filter((j, i) => metrics[i].series.some((x) => x.key === chosen)).map((j) => j.id).join(",");
    } else box.append(el("p", { class: "muted" }, "none of these jobs reported a metric"));
    drawTable(jobs, metrics, chosen);
    status.textContent = `${jobs.length} jobs`;
  }

  function drawTable(jobs, metrics, key) {
    const params = (j, m) => ({ ...(j.params || {}), ...(m.params || {}) });
    const tags = (j, m) => ({ ...(j.tags || {}), ...(m.tags || {}) });
    const pkeys = new Set(), tkeys = new Set();
    jobs.forEach((j, i) => { Object.keys(params(j, metrics[i])).forEach((k) => pkeys.add(k)); Object.keys(tags(j, metrics[i])).forEach((k) => tkeys.add(k)); });
    const head = ["job", "name", "state", "index", "GPUs", "walltime", `last ${key || ""}`,
      ...[...pkeys].sort().map((k) => `param ${k}`), ...[...tkeys].sort().map((k) => `tag ${k}`)];
    table.replaceChildren(el("thead", {}, el("tr", {}, head.map((h) => el("th", {}, h)))),
      el("tbody", {}, jobs.map((j, i) => {
        const m = metrics[i], lv = (m.last || {})[key];
        const p = params(j, m), t = tags(j, m);
        return el("tr", { dataset: { id: j.id } }, el("td", {}, el("a", { href: `#/job/${encodeURIComponent(j.id)}` }, j.id)),
          el("td", {}, j.name), el("td", {}, j.state), el("td", {}, j.array_index ?? ""), el("td", {}, gpus(j)),
          el("td", {}, duration(j.walltime_s)), el("td", { class: "num" }, lv ? number(lv.value) : ""),
          [...pkeys].sort().map((k) => el("td", {}, p[k] ?? "")), [...tkeys].sort().map((k) => el("td", {}, t[k] ?? "")));
      })));
  }

  if (idsIn.value) run();
  return () => {};
}
