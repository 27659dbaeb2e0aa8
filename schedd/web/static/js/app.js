// The page shell: log in (or show only the login form), then route
// "#/jobs", "#/job/ID", "#/compare", "#/nodes", "#/queues" to their modules.
import { api, configure } from "./api.js";
import { el } from "./util.js";
import * as jobs from "./jobs.js";
import * as job from "./job.js";
import * as compare from "./compare.js";
import * as nodes from "./nodes.js";
import * as queues from "./queues.js";

const PAGES = { jobs, job, compare, nodes, queues };
// For tests and the curious: the charts on screen (uPlot instances by name) and the session.
window.schedd = { charts: {}, session: null, page: null };

const main = document.getElementById("main");
let unmount = null;

function clear() {
  if (unmount) { try { unmount(); } catch (e) { console.error(e); } }
  unmount = null;
  window.schedd.charts = {};
  main.replaceChildren();
}

function showLogin(message) {
  clear();
  window.schedd.session = null;
  document.getElementById("bar").hidden = true;
  document.body.dataset.page = "login";
  const form = document.getElementById("login-form").content.cloneNode(true);
  main.append(form);
  const err = document.getElementById("login-error");
  if (message) err.textContent = message;
  document.getElementById("login").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    err.textContent = "";
    try {
      const s = await api("POST", "/ui/login", { token: document.getElementById("token").value });
      started(s);
    } catch (e) {
      err.textContent = e.message;
    }
  });
}

function started(session) {
  window.schedd.session = session;
  configure(session.csrf, () => showLogin("Your session ended; log in again."));
  document.getElementById("bar").hidden = false;
  document.getElementById("whoami").textContent = `${session.user} (${session.role}) @ ${session.server_name}`;
  route();
}

function route() {
  if (!window.schedd.session) return;
  const path = location.hash.replace(/^#\/?/, "").split("?")[0];
  const [name, ...rest] = path.split("/");
  const page = PAGES[name] ? name : "jobs";
  clear();
  document.body.dataset.page = page;
  window.schedd.page = page;
  for (const a of document.querySelectorAll("header nav a")) {
    a.classList.toggle("active", a.getAttribute("href") === `#/${page}`);
  }
  const root = el("section", { id: `page-${page}` });
  main.append(root);
  unmount = PAGES[page].mount(root, decodeURIComponent(rest.join("/")));
}

document.getElementById("logout").addEventListener("click", async () => {
  try { await api("POST", "/ui/logout"); } catch (e) { /* ended already */ }
  showLogin("Logged out.");
});
window.addEventListener("hashchange", route);

fetch("/ui/session", { credentials: "same-origin" })
  .then((r) => (r.ok ? r.json() : null))
  .then((s) => (s ? started(s) : showLogin()))
  .catch(() => showLogin("schedd did not answer."));
