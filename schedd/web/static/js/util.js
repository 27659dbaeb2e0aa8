// Small DOM and formatting helpers. Text goes in through textContent only:
// job names, comments and log lines are the users' own words, never markup.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

// The PBS letter of a state, as qstat shows it.
const LETTERS = { held: "H", queued: "Q", waiting: "W", running: "R", exiting: "E", finished: "F" };
export const letter = (state) => LETTERS[state] || (state || "?").slice(0, 1).toUpperCase();

export function duration(s) {
  if (s === null || s === undefined || !isFinite(s) || s < 0) return "";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  const pad = (n) => String(n).padStart(2, "0");
  return `${h}:${pad(m)}:${pad(sec)}`;
}

export function when(t) {
  if (!t) return "";
  return new Date(t * 1000).toLocaleString(undefined, { hour12: false });
}

export function number(v) {
  if (v === null || v === undefined || v === "") return "";
  if (typeof v !== "number") return String(v);
  if (Number.isInteger(v)) return String(v);
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e6) ? v.toExponential(3) : v.toPrecision(5).replace(/\.?0+$/, "");
}

export const gpus = (job) => (job.chunks || []).reduce((n, c) => n + (c.ngpus || 0) * (c.count || 1), 0);

// The query of a "#/page?k=v" location.
export function hashQuery() {
  const i = location.hash.indexOf("?");
  return new URLSearchParams(i < 0 ? "" : location.hash.slice(i + 1));
}

export function setHashQuery(page, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v) q.set(k, v);
  const s = q.toString();
  history.replaceState(null, "", `#/${page}${s ? "?" + s : ""}`);
}
