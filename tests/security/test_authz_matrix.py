"""Who may change what (issue #11): every mutating route × every kind of caller,
over the Unix socket and over TCP, against the real daemon run as root.

The table :data:`TABLE` has one row per mutating route of the daemon's app,
and :func:`test_every_mutating_route_has_a_row` reads the app's router, so a
new endpoint without a row fails the suite ("route X has no row in the
authorization table") instead of shipping unjudged.

The callers (:data:`PRINCIPALS`): the job's owner, another user, an operator,
an admin, a node agent, no token, a forged token, a revoked token, an expired
token. Over TCP each is a bearer token made by ``schedd token create``. Over the Unix socket the
kernel names the caller (``SO_PEERCRED``): the owner is ``sdalice``, the other
user ``sdbob``, each a real account running a tiny stdlib client through
``runuser``; the admin is root (the daemon's own uid). The socket has no operator
and ignores a bearer header, so there "operator" is sdbob sending an operator's
token (judged as sdbob: a header never raises a uid's rights) and the other
token columns are sdalice sending that token (judged as sdalice: a stale
``SCHEDD_TOKEN`` in a user's environment does not lock them out of the socket).

Each cell states the status; every 4xx must be the JSON error shape; a refused
request must have changed nothing (the job, node, token or counter it aimed at
is as it was). Jobs are held and not yet eligible, so nothing runs.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import _kill_leftovers
from tests.security.conftest import ROOT, USER_PYTHON, RootDaemon, User, wait_for

PRINCIPALS = ("owner", "other", "operator", "admin", "agent", "none", "bad", "revoked", "expired")
TRANSPORTS = ("unix", "tcp")
FORGED = "schedd_" + "A" * 43

#: Who the daemon must judge each principal to be, per transport ("anonymous": no one).
JUDGED = {
    "tcp": {"owner": "owner", "other": "other", "operator": "operator", "admin": "admin", "agent": "agent",
            "none": "anonymous", "bad": "anonymous", "revoked": "anonymous", "expired": "anonymous"},
    "unix": {"owner": "owner", "other": "other", "operator": "other", "admin": "admin", "agent": "owner",
             "none": "owner", "bad": "owner", "revoked": "owner", "expired": "owner"},
}

#: Who may do what: the principals (as judged) a row's access level lets through.
ALLOWED = {
    "user": {"owner", "other", "operator", "admin"},  # any authenticated caller (acts on their own behalf)
    "owner": {"owner", "operator", "admin"},  # the job's owner, operators and admins
    "operator": {"operator", "admin"},
    "admin": {"admin"},
    "agent": {"agent", "admin"},  # the agents' socket: an agent token's one door
}


@dataclass(frozen=True)
class Row:
    """One route's line of the table.

    ``access``: user | owner | operator | admin | agent — or, for routes outside the
    token-authenticated ``/api/``: "capability" (MLflow's per-job key in the
    path; a bearer token grants nothing), "login" (the token is in the body),
    "session" (a web session cookie; bearer tokens grant nothing).
    ``ok``: the status of an allowed caller (a 409 where the request is allowed
    but the held job is in no state for it).
    """

    method: str
    route: str  # as the router spells it
    access: str
    ok: int
    body: Any = None
    #: cells that differ from what ``access`` says, by (transport, principal), each with its reason
    except_: tuple[tuple[str, str, int], ...] = ()
    #: hold types an admin puts on the target job first (an operator's hold to release)
    held: str = ""
    label: str = ""  # what tells apart two rows of one route

    @property
    def name(self) -> str:
        return f"{self.method} {self.route}" + (f" ({self.label})" if self.label else "")


#: root over the socket is the admin but may own no job (allow_root_jobs = false, PBS's acl_roots).
_NO_ROOT_JOBS = (("unix", "admin", 403),)

TABLE = [
    Row("POST", "/api/v1/jobs", "user", 201, except_=_NO_ROOT_JOBS),
    Row("POST", "/api/v1/jobs/batch", "user", 201, except_=_NO_ROOT_JOBS),
    Row("DELETE", "/api/v1/jobs/{id}", "owner", 200),
    Row("PATCH", "/api/v1/jobs/{id}", "owner", 200, {"name": "renamed"}),
    Row("POST", "/api/v1/jobs/{id}/hold", "owner", 200, {"types": "u"}),
    Row("POST", "/api/v1/jobs/{id}/release", "owner", 200, {"types": "u"}),
    Row("POST", "/api/v1/jobs/{id}/signal", "owner", 409, {"signal": "USR1"}),  # held: not running
    Row("POST", "/api/v1/jobs/{id}/requeue", "owner", 409),  # held: not running
    # What only operators may ask of a job, even their own (PBS: o and s holds; Slurm: raising a time limit, nice < 0)
    Row("POST", "/api/v1/jobs", "operator", 201, {"nice": -5}, except_=_NO_ROOT_JOBS, label="nice < 0"),
    Row("PATCH", "/api/v1/jobs/{id}", "operator", 200, {"walltime_s": 7200.0}, label="walltime raised"),
    Row("POST", "/api/v1/jobs/{id}/hold", "operator", 200, {"types": "o"}, label="operator hold"),
    Row("POST", "/api/v1/jobs/{id}/release", "operator", 200, {"types": "o"}, held="o", label="operator hold"),
    Row("POST", "/api/v1/nodes/{name}/offline", "operator", 200, {"comment": "matrix"}),
    Row("POST", "/api/v1/nodes/{name}/drain", "operator", 200, {"comment": "matrix"}),
    Row("POST", "/api/v1/nodes/{name}/resume", "operator", 200, {}),
    Row("POST", "/api/v1/pool/{group}/scale", "operator", 200, {"count": 1}),
    Row("POST", "/api/v1/admin/reload", "operator", 200, {}),
    Row("DELETE", "/api/v1/admin/tokens/{id}", "admin", 200),
    # A GET, but the agents' channel: whoever holds it may report any job's start and exit.
    Row("GET", "/api/v1/agent", "agent", 400),  # allowed: 400 only for the missing WebSocket upgrade
    Row("POST", "/mlflow/{job}/{attempt}/{key}/{prefix}/2.0/mlflow/{op}", "capability", 403, {"key": "x", "value": 1}),
    Row("PATCH", "/mlflow/{job}/{attempt}/{key}/{prefix}/2.0/mlflow/{op}", "capability", 403, {}),
    Row("POST", "/ui/login", "login", 200),
    Row("POST", "/ui/logout", "session", 401),
]

#: Routes the table deliberately covers though they are GETs.
EXTRA_GETS = {("GET", "/api/v1/agent")}


# ---------------------------------------------------------------- the table against the app's router

def _app_routes() -> set[tuple[str, str]]:
    """The daemon's mutating routes, read from an app built as schedd.daemon.server builds it."""
    from schedd.api import admin, make_app
    from schedd.api.auth import TokenBook
    from schedd.config import load_pipeline, load_settings
    from schedd.daemon.loop import Loop
    from schedd.daemon.reload import Reloader, Sources
    from schedd.daemon.state import State

    settings = load_settings()
    state = State(settings, load_pipeline(settings.policies_path()), None, lambda: 1000.0)
    app = make_app(state, Loop(state), TokenBook(None))
    admin.setup(app, Reloader(state, Sources()))
    found = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("formatter") or info.get("path") or info.get("prefix") or ""
        if route.method in ("POST", "PUT", "PATCH", "DELETE"):
            found.add((route.method, str(path)))
    return found


def test_every_mutating_route_has_a_row() -> None:
    routes = _app_routes()
    rows = {(r.method, r.route) for r in TABLE}
    missing = sorted(routes - rows)
    assert not missing, "\n".join(f"route {m} {p} has no row in the authorization table" for m, p in missing)
    stale = sorted(rows - routes - EXTRA_GETS)
    assert not stale, f"rows for routes the app does not have: {stale}"


# ---------------------------------------------------------------- the daemon, its callers and their tokens

def _request(connect: Callable[[], http.client.HTTPConnection], method: str, path: str, body: Any,
             headers: dict[str, str]) -> tuple[int, Any]:
    conn = connect()
    try:
        raw = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=raw, headers={"Content-Type": "application/json", **headers})
        r = conn.getresponse()
        text = r.read().decode("utf-8", "replace")
    finally:
        conn.close()
    try:
        return r.status, json.loads(text)
    except ValueError:
        return r.status, text


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=60)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(self.unix_path)


#: The client a user runs: one JSON request a line on stdin, one answer a line on stdout.
_CLIENT = """\
import http.client, json, socket, sys
class C(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(sys.argv[1])
for line in sys.stdin:
    a = json.loads(line)
    c = C("localhost", timeout=60)
    c.request(a["method"], a["path"], body=a["body"], headers=a["headers"])
    r = c.getresponse()
    print(json.dumps({"status": r.status, "body": r.read().decode("utf-8", "replace")}), flush=True)
    c.close()
"""


class SocketUser:
    """A long-lived client process running as ``user``: the daemon sees its uid, and
    a request costs a pipe round trip instead of a runuser."""

    def __init__(self, d: RootDaemon, user: User) -> None:
        env = {"PATH": "/usr/bin:/bin", "HOME": str(user.home), "LANG": "C.UTF-8"}
        self.proc = subprocess.Popen(
            ["runuser", "-u", user.name, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()), USER_PYTHON,
             "-c", _CLIENT, d.url.removeprefix("unix://")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=user.home)

    def __call__(self, method: str, path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        raw = None if body is None else json.dumps(body)
        hdrs = {"Content-Type": "application/json", **headers}
        self.proc.stdin.write(json.dumps({"method": method, "path": path, "body": raw, "headers": hdrs}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the client of uid {self.proc.pid} ended"
        answer = json.loads(line)
        try:
            return answer["status"], json.loads(answer["body"])
        except ValueError:
            return answer["status"], answer["body"]

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def schedd(d: RootDaemon, *args: str) -> subprocess.CompletedProcess[str]:
    """``schedd ARGS --config`` this daemon's file, as root (the daemon's user)."""
    return subprocess.run([sys.executable, "-m", "schedd.main", *args, "--config", str(d.config)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def schedd_many(d: RootDaemon, *argvs: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
    """``schedd ARGV --config ...`` for each argv, all at once (each start costs a second or two)."""
    procs = [subprocess.Popen([sys.executable, "-m", "schedd.main", *a, "--config", str(d.config)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT) for a in argvs]
    done = []
    for a, p in zip(argvs, procs):
        out, err = p.communicate(timeout=60)
        done.append(subprocess.CompletedProcess(a, p.returncode, out, err))
    return done


def create_tokens(d: RootDaemon, *requests: tuple[str, ...]) -> list[str]:
    """``schedd token create`` for each request (USER and options), all at once."""
    made = []
    for out in schedd_many(d, *(("token", "create", *r) for r in requests)):
        assert out.returncode == 0, out
        made.append(out.stdout.strip())
    return made


def quick_token(d: RootDaemon, user: str, role: str = "user") -> str:
    """A token written to the daemon's store as ``schedd token create`` writes it, without
    starting a process (for the many a test only needs to exist)."""
    from schedd.api.auth import TokenBook
    from schedd.store import Store

    store = Store(d.state / "schedd.db")
    store.start()
    try:
        return TokenBook(store).create(user, role, time.time())
    finally:
        store.close()


def token_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:12]


@dataclass
class World:
    d: RootDaemon
    alice: User
    bob: User
    tokens: dict[str, str]  # by principal, as sent over TCP (and as a header over the socket)
    socket_users: dict[str, SocketUser]
    expires: float  # when the "expired" token stops working
    listed: str  # sdlisted's, expiring in a week: for the listing

    def root(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """A request over the socket as root: the admin, for setting up and looking."""
        return _request(lambda: _UnixConnection(self.d.url.removeprefix("unix://")), method, path, body, {})

    def tcp(self, method: str, path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
        host, _, port = self.d.http_url.removeprefix("http://").rpartition(":")
        return _request(lambda: http.client.HTTPConnection(host, int(port), timeout=60), method, path, body, headers)

    def send(self, transport: str, principal: str, method: str, path: str, body: Any,
             bearer: bool = True) -> tuple[int, Any]:
        """``principal``'s request over ``transport`` (``bearer=False``: its token not in a header)."""
        token = self.tokens.get(principal)
        headers = {"Authorization": f"Bearer {token}"} if token is not None and bearer else {}
        if transport == "tcp":
            return self.tcp(method, path, body, headers)
        if principal == "admin":
            return self.root(method, path, body)
        user = "sdbob" if principal in ("other", "operator") else "sdalice"
        if principal == "other":
            headers = {}
        return self.socket_users[user](method, path, body, headers)

    def submit(self, name: str = "target") -> str:
        """A held job of sdalice's, not eligible for a month: it never runs."""
        body = {"argv": ["true"], "hold": True, "name": name, "workdir": str(self.alice.home),
                "eligible_time": time.time() + 30 * 86400, "walltime_s": 3600.0}
        status, answer = self.tcp("POST", "/api/v1/jobs", body, {"Authorization": f"Bearer {self.tokens['owner']}"})
        assert status == 201, (status, answer)
        return str(answer["job"]["id"])


@pytest.fixture(scope="module")
def world(homes: Path, users: dict[str, User]) -> Iterator[World]:
    tmp = Path(tempfile.mkdtemp(prefix="d-", dir=homes))
    tmp.chmod(0o755)
    d = RootDaemon(tmp, nodes=1, gpus=0)
    d.start()
    clients: dict[str, SocketUser] = {}
    try:
        made = create_tokens(d, ("sdalice", "--expires-in", "1s"), ("sdalice",), ("sdbob",),
                             ("sdoper", "--role", "operator"), ("sdadmin", "--role", "admin"), ("sdalice",),
                             ("sdnode", "--role", "agent"), ("sdlisted", "--expires-in", "7d"))
        expires = time.time() + 1.0  # no earlier than the daemon's own idea of it
        tokens = {"owner": made[1], "other": made[2], "operator": made[3], "admin": made[4], "bad": FORGED,
                  "revoked": made[5], "expired": made[0], "agent": made[6]}
        out = schedd(d, "token", "revoke", token_id(tokens["revoked"]))
        assert out.returncode == 0, out
        clients = {name: SocketUser(d, users[name]) for name in ("sdalice", "sdbob")}
        yield World(d, users["sdalice"], users["sdbob"], tokens, clients, expires, made[7])
    finally:
        for c in clients.values():
            c.close()
        d.stop()
        _kill_leftovers(d.state)
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- the matrix

def assert_error_shape(status: int, body: Any, mlflow: bool = False) -> None:
    if mlflow:
        assert isinstance(body, dict) and set(body) == {"error_code", "message"}, (status, body)
    else:
        assert isinstance(body, dict) and set(body) == {"error"}, (status, body)
        assert set(body["error"]) == {"code", "message"} and body["error"]["message"], (status, body)


def expected(row: Row, transport: str, principal: str) -> int:
    for t, p, status in row.except_:
        if (t, p) == (transport, principal):
            return status
    judged = JUDGED[transport][principal]
    if row.access == "capability":
        return 403  # no bearer token, no uid opens a job's tracking URI without its key
    if row.access == "session":
        return 401  # no session cookie: a bearer token or a uid is not a web session
    if row.access == "login":  # the token in the body is judged, on either transport
        return {"none": 400, "bad": 401, "revoked": 401, "expired": 401}.get(principal, 200)
    if judged == "anonymous":
        return 401
    return row.ok if judged in ALLOWED[row.access] else 403


def _node(w: World) -> dict[str, Any]:
    status, body = w.root("GET", "/api/v1/nodes/node01")
    assert status == 200, body
    return {k: body["node"][k] for k in ("state", "comment")}


def _reloads(w: World) -> str:
    d = w.d
    text = _request(lambda: _UnixConnection(d.url.removeprefix("unix://")), "GET", "/metrics", None, {})[1]
    return "\n".join(line for line in str(text).splitlines() if line.startswith("schedd_reloads"))


@dataclass
class Target:
    path: str
    body: Any
    look: Callable[[], Any]  # what a refused request must leave as it was
    undo: Callable[[], None] = lambda: None


def _target(w: World, row: Row) -> Target:
    """The request's path and body, and how to look at what it aims at."""
    r = row.route
    if r.startswith("/api/v1/jobs/{id}"):
        jid = w.submit()
        if row.held:
            assert w.root("POST", f"/api/v1/jobs/{jid}/hold", {"types": row.held})[0] == 200
        return Target(r.replace("{id}", jid), row.body, lambda: w.root("GET", f"/api/v1/jobs/{jid}")[1]["job"])
    if r in ("/api/v1/jobs", "/api/v1/jobs/batch"):
        job = {"argv": ["true"], "hold": True, "workdir": "/tmp", "eligible_time": time.time() + 30 * 86400,
               **(row.body or {})}
        body = job if r == "/api/v1/jobs" else {"jobs": [job]}
        return Target(r, body, lambda: len(w.root("GET", "/api/v1/jobs?finished=1")[1]["jobs"]))
    if r.startswith("/api/v1/nodes/{name}"):
        if r.endswith("/resume"):
            assert w.root("POST", "/api/v1/nodes/node01/offline", {"comment": "to resume"})[0] == 200

        def undo() -> None:
            if _node(w)["state"] != "up":
                assert w.root("POST", "/api/v1/nodes/node01/resume", {"comment": ""})[0] == 200
        return Target(r.replace("{name}", "node01"), row.body, lambda: _node(w), undo)
    if r == "/api/v1/pool/{group}/scale":
        return Target(r.replace("{group}", "node"), row.body,
                      lambda: sorted((n["name"], n["state"]) for n in w.root("GET", "/api/v1/nodes")[1]["nodes"]))
    if r == "/api/v1/admin/reload":
        return Target(r, row.body, lambda: _reloads(w))
    if r == "/api/v1/admin/tokens/{id}":
        tid = token_id(quick_token(w.d, "sdthrow"))
        return Target(r.replace("{id}", tid), None,
                      lambda: [t["id"] for t in w.root("GET", "/api/v1/admin/tokens")[1]["tokens"] if t["id"] == tid])
    if r == "/api/v1/agent":
        return Target(r, None, lambda: sorted(n["name"] for n in w.root("GET", "/api/v1/nodes")[1]["nodes"]))
    if r.startswith("/mlflow/"):
        jid = w.submit()
        op = "runs/log-metric" if row.method == "POST" else "runs/update"
        return Target(f"/mlflow/{jid}/0/{'0' * 32}/api/2.0/mlflow/{op}", row.body,
                      lambda: w.root("GET", f"/api/v1/jobs/{jid}/metrics")[1])
    if r == "/ui/login":
        return Target(r, None, lambda: None)
    if r == "/ui/logout":
        return Target(r, None, lambda: None)
    raise AssertionError(f"route {row.method} {r}: no target in the test: add one to _target")


CASES = [(t, row, p) for t in TRANSPORTS for row in TABLE for p in PRINCIPALS]


@pytest.mark.parametrize(("transport", "row", "principal"), CASES,
                         ids=[f"{t}-{row.name}-{p}" for t, row, p in CASES])
def test_the_authorization_matrix(world: World, transport: str, row: Row, principal: str) -> None:
    if principal == "expired":
        wait_for("the expiring token's time to pass", lambda: time.time() > world.expires + 0.05)
    target = _target(world, row)
    try:
        body = target.body
        if row.access == "login":
            body = {"token": world.tokens.get(principal, "") if principal != "none" else ""}
        before = target.look()
        status, answer = world.send(transport, principal, row.method, target.path, body,
                                    bearer=row.access != "login")
        want = expected(row, transport, principal)
        assert status == want, (f"{row.name} by {principal} over {transport}: "
                                f"expected {want}, got {status}", answer)
        if status >= 400:
            assert_error_shape(status, answer, mlflow=row.access == "capability")
        if status in (401, 403):
            assert target.look() == before, f"a refused {row.name} changed what it aimed at"
            if row.access not in ("capability", "session"):
                fragment = {401: ("token", "not valid", "expired"), 403: ("only", "belongs to", "may not own jobs", "users may only lower")}[status]
                assert any(f in answer["error"]["message"] for f in fragment), answer
        if principal == "expired" and status == 401 and transport == "tcp" and row.access not in ("login", "session"):
            assert "expired at" in answer["error"]["message"], answer
    finally:
        target.undo()
    world.d.assert_alive()


# ---------------------------------------------------------------- a job acted on is the one asked for

def test_an_allowed_change_is_made_and_a_refused_one_is_not(world: World) -> None:
    jid = world.submit("before")
    assert world.send("tcp", "other", "PATCH", f"/api/v1/jobs/{jid}", {"name": "bobs"})[0] == 403
    assert world.send("unix", "other", "DELETE", f"/api/v1/jobs/{jid}", None)[0] == 403
    assert world.root("GET", f"/api/v1/jobs/{jid}")[1]["job"]["name"] == "before"
    assert world.send("unix", "owner", "PATCH", f"/api/v1/jobs/{jid}", {"name": "mine"})[0] == 200
    assert world.send("tcp", "operator", "DELETE", f"/api/v1/jobs/{jid}", None)[0] == 200
    job = world.root("GET", f"/api/v1/jobs/{jid}")[1]["job"]
    assert (job["name"], job["state"]) == ("mine", "finished"), job


def test_a_header_does_not_raise_a_uids_rights_on_the_socket(world: World) -> None:
    """sdbob sending the admin's token over the socket is still sdbob."""
    jid = world.submit()
    admin = {"Authorization": f"Bearer {world.tokens['admin']}"}
    bob = world.socket_users["sdbob"]
    for method, path, body in (("DELETE", f"/api/v1/jobs/{jid}", None), ("POST", "/api/v1/admin/reload", {}),
                               ("POST", "/api/v1/nodes/node01/offline", {})):
        status, answer = bob(method, path, body, admin)
        assert status == 403, (method, path, answer)
    assert world.root("GET", f"/api/v1/jobs/{jid}")[1]["job"]["state"] == "held"
    assert _node(world)["state"] == "up"


def test_an_agent_token_opens_the_agents_socket_and_nothing_else(world: World) -> None:
    import asyncio

    import aiohttp

    async def handshake(token: str) -> int:
        async with aiohttp.ClientSession() as s:
            try:
                async with s.ws_connect(world.d.http_url + "/api/v1/agent",
                                        headers={"Authorization": f"Bearer {token}"}) as ws:
                    await ws.close()
                    return 101
            except aiohttp.WSServerHandshakeError as e:
                return e.status

    assert [asyncio.run(handshake(world.tokens[p])) for p in ("agent", "admin", "operator", "owner")] == \
        [101, 101, 403, 403]
    status, answer = world.send("tcp", "agent", "GET", "/api/v1/jobs", None)  # not even a read
    assert status == 403 and "an agent token may only connect a node agent" in answer["error"]["message"], answer


# ---------------------------------------------------------------- tokens: revoked at once, listed by prefix

def _jobs_status(w: World, token: str) -> tuple[int, Any]:
    return w.tcp("GET", "/api/v1/jobs", None, {"Authorization": f"Bearer {token}"})


def test_a_revoked_token_is_refused_at_once(world: World) -> None:
    token = quick_token(world.d, "sdrevoke")
    assert _jobs_status(world, token)[0] == 200
    out = schedd(world.d, "token", "revoke", token_id(token))
    assert out.returncode == 0 and out.stdout == f"revoked {token_id(token)} (sdrevoke, user)\n", out
    status, answer = _jobs_status(world, token)  # no restart, no wait
    assert status == 401 and answer["error"]["message"] == "the bearer token is not valid", answer
    again = schedd(world.d, "token", "revoke", token_id(token))
    assert again.returncode == 1 and "no such token" in again.stderr, again


def test_revoke_by_user_revokes_all_their_tokens(world: World) -> None:
    mine = [quick_token(world.d, "sdcarol"), quick_token(world.d, "sdcarol", "operator")]
    keep = quick_token(world.d, "sddave")
    assert [_jobs_status(world, t)[0] for t in (*mine, keep)] == [200, 200, 200]
    out = schedd(world.d, "token", "revoke", "--user", "sdcarol")
    assert out.returncode == 0, out
    assert sorted(out.stdout.splitlines()) == sorted([f"revoked {token_id(mine[0])} (sdcarol, user)",
                                                      f"revoked {token_id(mine[1])} (sdcarol, operator)"])
    assert [_jobs_status(world, t)[0] for t in (*mine, keep)] == [401, 401, 200]


def test_the_list_shows_hash_prefixes_only(world: World) -> None:
    token = world.listed
    full = hashlib.sha256(token.encode()).hexdigest()
    assert _jobs_status(world, token)[0] == 200
    table, as_json = schedd_many(world.d, ("token", "list"), ("token", "list", "--json"))
    assert table.returncode == as_json.returncode == 0, (table, as_json)
    rows = json.loads(as_json.stdout)
    mine = [r for r in rows if r["user"] == "sdlisted"]
    assert len(mine) == 1 and set(mine[0]) == {"id", "user", "role", "created", "expires"}, rows
    assert mine[0]["id"] == full[:12] and mine[0]["role"] == "user" and mine[0]["expires"], mine
    assert all(r["expires"] is None for r in rows if r["user"] == "sdoper"), rows
    line = next(ln for ln in table.stdout.splitlines() if " sdlisted " in ln)
    assert line.split()[0] == full[:12] and line.split()[-1] == mine[0]["expires"], table.stdout
    assert table.stdout.splitlines()[0].split() == ["ID", "USER", "ROLE", "CREATED", "EXPIRES"]
    status, api = world.root("GET", "/api/v1/admin/tokens")
    assert status == 200
    secrets = [token, full, *world.tokens.values()] + [hashlib.sha256(t.encode()).hexdigest()
                                                      for t in world.tokens.values()]
    for where, text in (("token list", table.stdout), ("token list --json", as_json.stdout),
                        ("GET /admin/tokens", json.dumps(api)), ("the daemon's log", world.d.log.read_text())):
        leaked = [s[:16] + "..." for s in secrets if s in text and s != FORGED]
        assert not leaked, f"{where} shows a whole token or hash: {leaked}"


def test_an_expired_token_is_refused_naming_when(world: World) -> None:
    wait_for("the expiring token's time to pass", lambda: time.time() > world.expires + 0.05)
    status, answer = _jobs_status(world, world.tokens["expired"])
    assert status == 401 and "the bearer token expired at " in answer["error"]["message"], answer
    login = world.tcp("POST", "/ui/login", {"token": world.tokens["expired"]}, {})
    assert login[0] == 401, login
    listed = json.loads(schedd(world.d, "token", "list", "--json").stdout)
    assert any(r["id"] == token_id(world.tokens["expired"]) and r["expires"] for r in listed), listed


def test_a_bad_expiry_is_a_usage_error(world: World) -> None:
    out = schedd(world.d, "token", "create", "sdalice", "--expires-in", "soon")
    assert out.returncode == 2 and "--expires-in: 'soon': expected a positive duration" in out.stderr, out
    assert out.stdout == ""



# ---------------------------------------------------------------- connections that outlive their request
# (last in the module: the second registers a node of its own)

def test_a_revoked_token_ends_its_open_event_stream(world: World) -> None:
    token = quick_token(world.d, "sdstream")
    host, _, port = world.d.http_url.removeprefix("http://").rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)  # a keepalive comes every 15 s
    try:
        conn.request("GET", "/api/v1/stream", headers={"Authorization": f"Bearer {token}"})
        r = conn.getresponse()
        assert r.status == 200 and r.readline() == b"retry: 2000\n"
        assert schedd(world.d, "token", "revoke", token_id(token)).returncode == 0
        jid = world.submit("after-the-revoke")  # an event the stream would carry
        end = time.monotonic() + 60
        while line := r.readline():  # a keepalive comes at least every 15 s
            assert f'"id":"{jid}"'.encode() not in line, "the stream of a revoked token went on"
            assert time.monotonic() < end, "the stream of a revoked token went on"
    finally:
        conn.close()


def test_a_revoked_token_ends_the_stream_of_the_web_session_it_opened(world: World) -> None:
    token = quick_token(world.d, "sdbrowser")
    host, _, port = world.d.http_url.removeprefix("http://").rpartition(":")
    login = http.client.HTTPConnection(host, int(port), timeout=30)
    login.request("POST", "/ui/login", body=json.dumps({"token": token}), headers={"Content-Type": "application/json"})
    cookie = login.getresponse().getheader("Set-Cookie", "").split(";")[0]
    login.close()
    assert cookie.startswith("schedd_session="), cookie
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", "/api/v1/stream", headers={"Cookie": cookie})
        r = conn.getresponse()
        assert r.status == 200 and r.readline() == b"retry: 2000\n"
        assert schedd(world.d, "token", "revoke", token_id(token)).returncode == 0
        jid = world.submit("after-the-browsers-revoke")
        end = time.monotonic() + 60
        while line := r.readline():
            assert f'"id":"{jid}"'.encode() not in line, "the stream of a revoked token's session went on"
            assert time.monotonic() < end, "the stream of a revoked token's session went on"
    finally:
        conn.close()


def test_a_revoked_agent_token_ends_the_agents_session(world: World) -> None:
    import asyncio

    import aiohttp

    from schedd.protocol import Heartbeat, Register, Welcome, decode_server, encode

    token = quick_token(world.d, "sdfakenode", "agent")

    async def session() -> tuple[int | None, str]:
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(world.d.http_url + "/api/v1/agent",
                                    headers={"Authorization": f"Bearer {token}"}) as ws:
                await ws.send_bytes(encode(Register("sdfakenode", 1, 1000, [], True)))
                assert isinstance(decode_server((await ws.receive()).data), Welcome)
                out = await asyncio.to_thread(schedd, world.d, "token", "revoke", token_id(token))
                assert out.returncode == 0, out
                await ws.send_bytes(encode(Heartbeat(time.time(), 0.0, 0)))
                while (msg := await ws.receive()).type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                    pass  # anything schedd had queued before it read the heartbeat
                return ws.close_code, str(msg.extra)

    code, why = asyncio.run(asyncio.wait_for(session(), 30))
    assert (code, why) == (4001, "the agent's token was revoked or has expired")
