// Nodes: one card per node (state, reason, CPU and memory in use) with a GPU
// heatmap, one cell per GPU coloured by its utilisation and naming its job.
// Read every 2 s: the agents' heartbeats are what change it.
import { get } from "./api.js";
import { el, number } from "./util.js";

// 0 % a cool grey-blue, 100 % a hot red.
export const heat = (pct) => (pct === null || pct === undefined ? "#9aa3b2" : `hsl(${Math.round(220 - 2.2 * Math.min(100, Math.max(0, pct)))}, 70%, 45%)`);

export function mount(root) {
  const grid = el("div", { class: "nodes", id: "nodes" });
  const summary = el("p", { class: "muted", id: "nodes-summary" });
  root.append(el("h1", {}, "Nodes"), summary, grid);

  async function load() {
    const { nodes } = await get("/api/v1/nodes");
    let busy = 0, total = 0;
    grid.replaceChildren(...nodes.map((n) => {
      total += n.ngpus; busy += n.ngpus - n.ngpus_free;
      return el("div", { class: "node", dataset: { node: n.name, state: n.state } },
        el("strong", {}, n.name), " ", el("span", { class: "state" }, n.state),
        n.comment ? el("div", { class: "muted" }, n.comment) : null,
        el("div", { class: "muted" }, `cpus ${n.cpus_assigned}/${n.cpus} · mem ${n.mem_assigned_mb}/${n.mem_mb} MB · cpu ${number(n.cpu_pct)}%`,
          n.jobs.length ? ` · jobs ${n.jobs.join(" ")}` : ""),
        el("div", { class: "heat" }, n.gpus.map((g) => el("div", {
          class: "gpu", style: `background:${heat(g.util_pct)}`, dataset: { gpu: g.index, util: g.util_pct ?? "" },
          title: `${g.model} · ${g.mem_used_mb ?? "?"}/${g.mem_mb} MB`,
        }, `gpu${g.index} ${g.util_pct === null ? "–" : Math.round(g.util_pct) + "%"}`, el("br"),
          g.job ? el("a", { href: `#/job/${encodeURIComponent(g.job)}`, style: "color:#fff" }, g.job) : "idle"))));
    }));
    summary.textContent = `${nodes.length} nodes · ${busy}/${total} GPUs in use`;
    root.dataset.ready = "1";
  }
  load().catch((e) => { summary.textContent = e.message; });
  const t = setInterval(() => load().catch(() => {}), 2000);
  return () => clearInterval(t);
}
