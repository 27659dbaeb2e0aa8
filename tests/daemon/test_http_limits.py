"""The HTTP layer under the API (schedd.daemon.http_limits), against a real
daemon (``schedd serve`` in a subprocess) over raw sockets on both listeners:
whatever a client sends is answered as an API error (JSON) and never puts a
traceback in the log, and idle, slow, huge or waiting clients are bounded while
qstat still answers.

Nothing here waits on a guess at timing: each test reads until the daemon
answers or closes, with a generous deadline for a loaded machine, or polls its
log for the line that says it acted.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from schedd.cli.client import Client
from tests.integration.conftest import ROOT, wait_for
from tests.tlscert import self_signed

DEADLINE_S = 60.0

CONFIG = """
listen = "127.0.0.1:0"
state_dir = "{state}"
policies = "{root}/conf/policies.toml"
allow_root_jobs = true  # the tests' jobs are submitted by root on the Unix socket

[queues.default]
default_chunk = {{ ncpus = 1, mem_mb = 0, ngpus = 0 }}

[http]
{http}
"""


class Served:
    """``schedd serve`` with some ``[http]`` keys; raw sockets to either listener."""

    def __init__(self, tmp: Path, tls: tuple[Path, Path] | None = None, **http: Any) -> None:
        self.tmp = tmp
        self.log = tmp / "schedd.log"
        config = tmp / "schedd.toml"
        keys = "\n".join(f"{k} = {v}" for k, v in http.items())
        top = f'tls_cert = "{tls[0]}"\ntls_key = "{tls[1]}"\n' if tls else ""
        config.write_text(top + CONFIG.format(state=tmp / "state", root=ROOT, http=keys))
        self.proc = subprocess.Popen([sys.executable, "-m", "schedd.main", "serve", "--config", str(config)],
                                     stdout=subprocess.PIPE, stderr=self.log.open("w"), text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        m = re.search(r"SCHEDD_URL=unix://(\S+) or https?://127.0.0.1:(\d+)", line)
        assert m, f"schedd did not start: {line!r}\n{self.log.read_text()}"
        self.socket_path, self.port = m[1], int(m[2])
        self.client = Client(f"unix://{self.socket_path}")  # root, known by SO_PEERCRED

    def connect(self, listener: str = "tcp") -> socket.socket:
        if listener == "tcp":
            s = socket.create_connection(("127.0.0.1", self.port), timeout=DEADLINE_S)
        else:
            s = socket.socket(socket.AF_UNIX)
            s.connect(self.socket_path)  # blocking: waits while the listen backlog is full
            s.settimeout(DEADLINE_S)
        return s

    def token(self) -> str:
        """A token for TCP, which asks for one before any body is read."""
        out = subprocess.run([sys.executable, "-m", "schedd.main", "token", "create", "ann", "--config",
                              str(self.tmp / "schedd.toml")], capture_output=True, text=True, check=True, cwd=ROOT)
        return out.stdout.strip()

    def qstat(self) -> list[Any]:
        return list(self.client.call("GET", "/api/v1/jobs")["jobs"])

    def log_text(self) -> str:
        return self.log.read_text()

    def await_log(self, what: str) -> None:
        wait_for(f"{what!r} in the daemon's log", lambda: what in self.log_text(), DEADLINE_S)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.client.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    started: list[Served] = []

    def start(tls: tuple[Path, Path] | None = None, **http: Any) -> Served:
        where = tmp_path / f"d{len(started)}"
        where.mkdir()
        started.append(Served(where, tls, **http))
        return started[-1]

    yield start
    for d in started:
        d.stop()


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One daemon with the shipped [http] limits, for the malformed requests."""
    d = Served(tmp_path_factory.mktemp("plain"))
    yield d
    d.stop()


class Answer:
    """One HTTP response as read off a raw socket, and whether the daemon then closed."""

    def __init__(self, raw: bytes, closed: bool) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1]) if lines[0].startswith("HTTP/") else 0
        self.headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        self.closed = closed
        self.raw = raw

    def error(self) -> tuple[int, str, str]:
        """(status, code, message) of an API error; fails on any other shape."""
        assert self.headers.get("content-type", "").startswith("application/json"), self.raw[:300]
        body = json.loads(self.body[: int(self.headers["content-length"])])
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
        return self.status, body["error"]["code"], body["error"]["message"]


def read_answer(s: socket.socket, until_closed: bool = True) -> Answer:
    """Read one response (and, with ``until_closed``, on to the daemon's close)."""
    raw, closed = b"", False
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            closed = True
            break
        if not chunk:
            closed = True
            break
        raw += chunk
        head, sep, rest = raw.partition(b"\r\n\r\n")
        if sep and not until_closed:
            m = re.search(rb"(?i)content-length:\s*(\d+)", head)
            if m and len(rest) >= int(m[1]):
                break
    return Answer(raw, closed)


# -- whatever a client sends: a JSON error, one log line, no traceback -------------

MALFORMED: dict[str, tuple[bytes, int, str]] = {
    "request line too long": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
    "header too long": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: " + b"a" * 9000 + b"\r\n\r\n", 431, "header_too_large"),
    "header name too long": (b"GET / HTTP/1.1\r\n" + b"a" * 9000 + b": 1\r\n\r\n", 431, "header_too_large"),
    "too many headers": (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n",
                         431, "header_too_large"),
    "bad method": (b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request"),
    "TLS on the plain port": (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\0" * 40, 400, "bad_request"),
    "bad HTTP version": (b"GET / HTTP/9.9\r\nHost: x\r\n\r\n", 400, "bad_request"),
    "HTTP/2.0 request line": (b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", 505, "http_version_not_supported"),
    "not HTTP": (b"GET / HTXP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request"),
    "invalid Content-Length": (b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400, "bad_request"),
    "negative Content-Length": (b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", 400, "bad_request"),
    "two Content-Lengths": (b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
                            400, "bad_request"),
    "Content-Length and chunked": (b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "bad_request"),
    "unknown Transfer-Encoding": (b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 400, "bad_request"),
    "malformed chunk": (b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
                        400, "bad_request"),
    "NUL in the target": (b"GET /\0 HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request"),
    "space in a header name": (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n", 400, "bad_request"),
    "bare LF": (b"GET / HTTP/1.1\nHost: x\n\n", 400, "bad_request"),
    "folded header": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n", 400, "bad_request"),
}


@pytest.mark.parametrize("listener", ["tcp", "unix"])
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_request_is_a_json_error_and_one_log_line(plain: Served, listener: str, case: str) -> None:
    data, status, code = MALFORMED[case]
    with plain.connect(listener) as s:
        s.sendall(data)
        answer = read_answer(s)
    got_status, got_code, message = answer.error()
    assert (got_status, got_code) == (status, code), (case, message)
    assert answer.closed, "the connection of a malformed request is closed"
    assert len(message) < 300  # the client's bytes are not echoed whole
    assert "Traceback" not in plain.log_text()


@pytest.mark.parametrize("listener", ["tcp", "unix"])
def test_a_body_that_breaks_half_way_fails_at_once(plain: Served, listener: str) -> None:
    """A bad chunk after the handler started reading: a 400, not a read that waits for the client to leave."""
    auth = f"Authorization: Bearer {plain.token()}\r\n".encode() if listener == "tcp" else b""
    head = (b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + auth +
            b"Transfer-Encoding: chunked\r\n\r\n2\r\n{\"\r\n")
    with plain.connect(listener) as s:
        s.sendall(head)
        s.sendall(b"zz\r\nabc\r\n")  # and then stay: the answer must not wait for us to hang up
        answer = read_answer(s, until_closed=False)
    assert answer.error()[:2] == (400, "bad_request")
    assert "Traceback" not in plain.log_text()


def test_a_client_gone_before_its_body_came_is_one_log_line(plain: Served) -> None:
    with plain.connect("unix") as s:  # root: the handler is reached and reads the body
        s.sendall(b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 50\r\n\r\n{\"ar")
    plain.await_log("went away during POST /api/v1/jobs before its whole body came")
    assert "Traceback" not in plain.log_text()
    assert plain.qstat() == []


# -- abuse: idle, slow, huge and waiting clients; qstat answers throughout ---------

def _get(s: socket.socket, path: str = "/healthz") -> Answer:
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return read_answer(s, until_closed=False)


def _fresh_get(d: Served) -> int:
    with d.connect("tcp") as s:
        return _get(s).status


def test_connections_past_max_connections_are_refused_and_the_others_go_on(serve: Callable[..., Served]) -> None:
    d = serve(max_connections=50, idle_timeout_s=600)
    conns = [d.connect("tcp") for _ in range(300)]
    try:
        answers = [_get(s) for s in conns]  # one after another: the first 50 hold their slot
        assert [a.status for a in answers[:50]] == [200] * 50
        for a, s in zip(answers[50:], conns[50:]):
            assert a.error()[:2] == (503, "too_many_connections") and a.headers["retry-after"] == "1"
            assert read_answer(s).closed
        assert d.qstat() == []  # the Unix socket has a count of its own
        assert [_get(s).status for s in conns[:50]] == [200] * 50  # the open ones go on
        conns[0].close()  # a slot freed: the next connection gets in
        wait_for("a new TCP connection served", lambda: _fresh_get(d) == 200)
    finally:
        for s in conns:
            s.close()
    d.await_log("tcp listener takes connections again; refused meanwhile: 250")
    assert "Traceback" not in d.log_text()


#: A local user's client: 5 connections to the Unix socket, each asking /healthz; prints the
#: statuses and holds the connections until its stdin closes. The system's python: the venv's
#: may sit under root's home, closed to others.
_LOCAL_USER = """
import socket, sys
statuses, conns = [], []
for _ in range(5):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    s.sendall(b"GET /healthz HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
    statuses.append(s.recv(65536).split()[1].decode())
    conns.append(s)
print(" ".join(statuses), flush=True)
sys.stdin.read()
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="runs a client as the user nobody")
def test_a_local_users_flood_does_not_lock_root_out_of_the_unix_socket() -> None:
    base = Path(tempfile.mkdtemp(prefix="schedd-http-"))
    base.chmod(0o755)  # the socket reachable by nobody
    d = Served(base, max_connections=3, idle_timeout_s=600)
    try:
        child = subprocess.Popen(["/usr/bin/python3", "-c", _LOCAL_USER, d.socket_path], user="nobody",
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().split() == ["200", "200", "200", "503", "503"]
        with d.connect("unix") as s:  # root, past the limit the user filled
            assert _get(s).status == 200
        assert d.qstat() == []
        child.stdin.close()
        child.wait(DEADLINE_S)
        child.stdout.close()
    finally:
        d.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("listener", ["tcp", "unix"])
def test_an_idle_connection_is_closed_after_idle_timeout(serve: Callable[..., Served], listener: str) -> None:
    d = serve(idle_timeout_s=1.0)
    with d.connect(listener) as never:  # connected, sends nothing
        assert read_answer(never).raw == b""
    with d.connect(listener) as once:  # one request, then idle
        assert _get(once).status == 200
        assert read_answer(once).closed
    assert d.qstat() == []


@pytest.mark.parametrize("listener", ["tcp", "unix"])
def test_a_slow_loris_is_cut_off_after_header_timeout(serve: Callable[..., Served], listener: str) -> None:
    """A header byte every 20 ms, for ever: answered 408 and closed after header_timeout_s."""
    d = serve(header_timeout_s=1.0, idle_timeout_s=600)
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 8000
    sel = selectors.DefaultSelector()
    with d.connect(listener) as s:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        sent, raw, end = 0, b"", time.monotonic() + DEADLINE_S
        while time.monotonic() < end:
            if sel.select(timeout=0.02):  # the daemon answered or closed
                try:
                    chunk = s.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                raw += chunk
                continue
            try:
                sent += s.send(head[sent:sent + 1])
            except OSError:
                break  # closed under us
        sel.close()
    assert sent < len(head), "the head was sent whole: the daemon never cut the client off"
    answer = Answer(raw, True)
    assert answer.error()[:2] == (408, "request_timeout")
    d.await_log("([http] header_timeout_s)")
    assert d.qstat() == []
    assert "Traceback" not in d.log_text()


def test_a_100_mb_body_is_refused_before_it_is_read(serve: Callable[..., Served]) -> None:
    """413 from the head alone; the daemon's peak memory does not grow by the body (max_body_mb = 64).

    Over the Unix socket, as root: a caller the API knows, whose body it would read."""
    d = serve()
    proc = psutil.Process(d.proc.pid)
    assert d.qstat() == []  # warm: the first request's own allocations

    def peak_mb() -> float:
        with open(f"/proc/{proc.pid}/status") as f:
            return int(re.search(r"VmHWM:\s+(\d+) kB", f.read())[1]) / 1024  # type: ignore[index]

    before = peak_mb()
    size = 100 * 1024 * 1024
    s = d.connect("unix")
    s.sendall(b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % size)

    def push() -> None:  # the body, as a client that does not wait for an answer sends it
        chunk, left = b"\0" * (1024 * 1024), size
        try:
            while left:
                left -= s.send(chunk[:left])
        except OSError:
            pass  # the daemon closed

    sender = threading.Thread(target=push, daemon=True)
    sender.start()
    answer = read_answer(s)
    sender.join(DEADLINE_S)
    s.close()
    status, code, message = answer.error()
    assert (status, code) == (413, "too_large") and "max_body_mb" in message
    assert answer.headers.get("connection", "").lower() == "close" and answer.closed
    assert peak_mb() - before < 32, f"peak RSS grew {peak_mb() - before:.0f} MB"
    assert d.qstat() == []
    assert "Traceback" not in d.log_text()


def test_long_polls_past_max_waiters_get_503(serve: Callable[..., Served]) -> None:
    """2,000 waits on a job that does not end: 1,500 wait, 500 are told to come back; qstat answers."""
    d = serve(max_connections=2500, max_waiters=1500)
    jid = d.client.call("POST", "/api/v1/jobs", {"argv": ["true"], "workdir": str(d.tmp), "hold": True})["job"]["id"]
    conns: list[socket.socket] = []
    sel = selectors.DefaultSelector()
    try:
        for _ in range(2000):
            conns.append(s := d.connect("unix"))
            s.sendall(f"GET /api/v1/jobs/{jid}/wait?timeout_s=600 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
        refused: list[Answer] = []
        end = time.monotonic() + 120
        while len(refused) < 500 and time.monotonic() < end:
            for key, _ in sel.select(timeout=1.0):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                sel.unregister(sock)
                sock.setblocking(True)
                refused.append(read_answer(sock, until_closed=False))
        assert len(refused) == 500
        for a in refused:
            status, code, message = a.error()
            assert (status, code) == (503, "too_many_waiters") and "max_waiters" in message
            assert a.headers["retry-after"] == "5"
        assert [j["id"] for j in d.qstat()] == [jid]  # while 1,500 wait
        assert not sel.select(timeout=0)  # they still wait
        d.client.call("DELETE", f"/api/v1/jobs/{jid}")  # the job ends: every waiter is answered
        waiting = [key.fileobj for key in sel.get_map().values()]
        assert len(waiting) == 1500
        for obj in waiting:
            assert isinstance(obj, socket.socket)
            sel.unregister(obj)
            obj.setblocking(True)
            answer = read_answer(obj, until_closed=False)
            assert answer.status == 200 and json.loads(answer.body)["finished"] is True
    finally:
        sel.close()
        for s in conns:
            s.close()
    other = d.client.call("POST", "/api/v1/jobs", {"argv": ["true"], "workdir": str(d.tmp), "hold": True})["job"]["id"]
    assert d.client.call("GET", f"/api/v1/jobs/{other}/wait?timeout_s=0.01")["finished"] is False  # the count went down
    assert "Traceback" not in d.log_text()


def test_over_tls_errors_and_refusals_are_json_too(serve: Callable[..., Served], tmp_path: Path) -> None:
    d = serve(tls=self_signed(tmp_path), max_connections=2, idle_timeout_s=600)
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # the test's own certificate

    def connect() -> ssl.SSLSocket:
        return ctx.wrap_socket(d.connect("tcp"))

    with connect() as s:
        s.sendall(MALFORMED["request line too long"][0])
        assert read_answer(s).error()[:2] == (414, "uri_too_long")
    with d.connect("tcp") as plain_http:  # no TLS at all: the handshake fails, quietly
        plain_http.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(plain_http).closed
    held = [connect(), connect()]
    try:
        assert [_get(s).status for s in held] == [200, 200]
        with connect() as third:
            answer = read_answer(third)
        assert answer.error()[:2] == (503, "too_many_connections") and answer.closed
    finally:
        for s in held:
            s.close()
    assert "Traceback" not in d.log_text()
