// The REST API as the page uses it: the session cookie goes with every
// request (same origin); every change carries the session's CSRF token.

let csrf = "";
let onLoggedOut = () => {};

export function configure(token, loggedOut) { csrf = token; onLoggedOut = loggedOut; }

export class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET" && method !== "HEAD") headers["X-Schedd-CSRF"] = csrf;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    if (r.status === 401) onLoggedOut();
    const e = data.error || {};
    throw new ApiError(r.status, e.code || "http_" + r.status, e.message || r.statusText);
  }
  return data;
}

export const get = (path) => api("GET", path);
export const jobPath = (id) => `/api/v1/jobs/${encodeURIComponent(id)}`;

// Live updates: one server-sent event stream (/api/v1/stream), its "job" and
// "point" events handed to `on`. Where the stream cannot be had (an older
// server answers 404) `poll` runs every `everyMs` instead, so the page stays
// live either way. Returns a function that stops both.
export function live(params, on, poll, everyMs = 1500) {
  let timer = null, es = null, stopped = false;
  const startPolling = () => {
    if (timer || stopped || !poll) return;
    timer = setInterval(() => { poll().catch(() => {}); }, everyMs);
  };
  const q = new URLSearchParams(params).toString();
  try {
    es = new EventSource(`/api/v1/stream${q ? "?" + q : ""}`);
    for (const kind of ["job", "point", "lagged"]) {
      es.addEventListener(kind, (ev) => { if (on[kind]) on[kind](JSON.parse(ev.data)); });
    }
    es.onerror = () => { if (es.readyState === EventSource.CLOSED) startPolling(); };
    es.onopen = () => { if (on.open) on.open(); };
  } catch (e) {
    startPolling();
  }
  return () => {
    stopped = true;
    if (es) es.close();
    if (timer) clearInterval(timer);
  };
}
