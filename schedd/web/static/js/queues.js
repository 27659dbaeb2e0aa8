// Queues and fair-share: jobs by state per queue; usage and the fair-share
// factor per account and user (the priority policy's input).
import { get } from "./api.js";
import { el, number } from "./util.js";

const STATES = ["queued", "running", "held", "waiting", "exiting", "finished"];

export function mount(root) {
  const qt = el("table", { id: "queues" }), ut = el("table", { id: "usage" });
  const unit = el("span", { class: "muted" });
  root.append(el("h1", {}, "Queues"), qt, el("h2", {}, "Fair-share ", unit), ut);
  async function load() {
    const [{ queues }, usage] = await Promise.all([get("/api/v1/queues"), get("/api/v1/usage")]);
    qt.replaceChildren(el("thead", {}, el("tr", {}, el("th", {}, "queue"), STATES.map((s) => el("th", { class: "num" }, s)))),
      el("tbody", {}, Object.entries(queues).map(([name, q]) => el("tr", {}, el("td", {}, name),
        STATES.map((s) => el("td", { class: "num" }, q.jobs[s] || 0))))));
    unit.textContent = `(usage in ${usage.unit})`;
    ut.replaceChildren(el("thead", {}, el("tr", {}, ["account", "user", "usage", "fair-share factor"].map((h) => el("th", {}, h)))),
      el("tbody", {}, usage.usage.map((r) => el("tr", {}, el("td", {}, r.account), el("td", {}, r.user),
        el("td", { class: "num" }, number(r.usage)), el("td", { class: "num" }, number(usage.fairshare[`${r.account}/${r.user}`]))))));
  }
  load().catch((e) => { unit.textContent = e.message; });
  const t = setInterval(() => load().catch(() => {}), 5000);
  return () => clearInterval(t);
}
