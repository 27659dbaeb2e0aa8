"""qstat's latency while clients abuse the daemon's HTTP layer (issue #11).

::

    python -m bench.abuse [--window 8] [--jobs 200]

A real ``schedd up`` (no nodes; ``--jobs`` held jobs in the queue, so that
``GET /api/v1/jobs`` has rows to write) with the shipped ``[http]`` limits.
Measured: qstat's request (``GET /api/v1/jobs``), each on a new connection as a
``qstat`` process makes it, one after another for ``--window`` seconds — on the
Unix socket (local users) and on the TCP port with a token (remote users) —
first alone, then while each abuse goes on:

- ``idle``: 300 idle TCP connections;
- ``flood``: 1,500 TCP connections held open, past max_connections (1000);
- ``slowloris``: 100 TCP connections sending one header byte every 100 ms
  (each cut off after header_timeout_s, and opened again);
- ``body``: 100 MB bodies posted one after another by a user with a token
  (each refused 413);
- ``waits``: 2,000 long polls on a held job over the Unix socket (1,000 wait,
  max_waiters; the others are told 503).

A request refused (503 past max_connections) counts as refused, not as a
latency. The daemon's peak resident memory (VmHWM) is printed after each.
"""

from __future__ import annotations

import argparse
import platform
import re
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench._daemon import LocalSchedd
from schedd.cli.client import ApiError, Client, Unreachable

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Sample:
    """qstat's latencies over one window on one listener, and the requests refused."""

    ms: list[float]
    refused: int

    def row(self) -> str:
        if not self.ms:
            return f"- | - | {self.refused}"
        q = statistics.quantiles(self.ms, n=100) if len(self.ms) > 1 else [self.ms[0]] * 99
        return f"{q[49]:.1f} | {q[98]:.1f} | {self.refused}"


def _qstat(url: str, token: str | None, window_s: float, out: Sample) -> None:
    end = time.monotonic() + window_s
    while time.monotonic() < end:
        client = Client(url, token=token, timeout=30)
        t0 = time.perf_counter()
        try:
            client.call("GET", "/api/v1/jobs")
            out.ms.append((time.perf_counter() - t0) * 1000)
        except (ApiError, Unreachable):
            out.refused += 1
        finally:
            client.close()


def _measure(d: LocalSchedd, token: str, window_s: float) -> tuple[Sample, Sample]:
    unix, tcp = Sample([], 0), Sample([], 0)
    threads = [threading.Thread(target=_qstat, args=(d.url, None, window_s, unix)),
               threading.Thread(target=_qstat, args=(d.http_url, token, window_s, tcp))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return unix, tcp


def _port(d: LocalSchedd) -> int:
    return int(d.http_url.rsplit(":", 1)[1])


def _request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


@contextmanager
def _idle(d: LocalSchedd, n: int) -> Iterator[None]:
    conns = [socket.create_connection(("127.0.0.1", _port(d))) for _ in range(n)]
    try:
        yield
    finally:
        for s in conns:
            s.close()


@contextmanager
def _background(work: Callable[[threading.Event], None]) -> Iterator[None]:
    stop = threading.Event()
    t = threading.Thread(target=work, args=(stop,), daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join(60)


def _slowloris(d: LocalSchedd, n: int) -> Callable[[threading.Event], None]:
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100_000

    def work(stop: threading.Event) -> None:
        sel = selectors.DefaultSelector()
        sent: dict[socket.socket, int] = {}

        def open_one() -> None:
            s = socket.create_connection(("127.0.0.1", _port(d)))
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            sent[s] = 0

        for _ in range(n):
            open_one()
        while not stop.is_set():
            for key, _ in sel.select(timeout=0.1):  # answered 408 or closed: open another
                s = key.fileobj
                assert isinstance(s, socket.socket)
                sel.unregister(s)
                s.close()
                del sent[s]
                open_one()
            for s in list(sent):
                try:
                    sent[s] += s.send(head[sent[s]:sent[s] + 1])
                except OSError:
                    pass
        for s in sent:
            s.close()
        sel.close()

    return work


def _bodies(d: LocalSchedd, token: str) -> Callable[[threading.Event], None]:
    """100 MB bodies from a user the API knows (a token): one it would read, were it not refused."""
    size = 100 * 1024 * 1024
    chunk = b"\0" * (1024 * 1024)

    def work(stop: threading.Event) -> None:
        while not stop.is_set():
            with socket.create_connection(("127.0.0.1", _port(d))) as s:
                s.sendall(b"POST /api/v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n" % (token.encode(), size))
                left = size
                try:
                    while left and not stop.is_set():
                        left -= s.send(chunk[:left])
                except OSError:
                    pass  # refused and closed
                try:
                    while s.recv(65536):
                        pass
                except OSError:
                    pass

    return work


@contextmanager
def _waits(d: LocalSchedd, n: int, workdir: str) -> Iterator[None]:
    jid = d.client.call("POST", "/api/v1/jobs", {"argv": ["true"], "hold": True, "workdir": workdir})["job"]["id"]
    path = d.url[len("unix://"):]
    conns = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        s.sendall(_request(f"/api/v1/jobs/{jid}/wait?timeout_s=600"))
        conns.append(s)
    try:
        yield
    finally:
        for s in conns:
            s.close()
        d.client.call("DELETE", f"/api/v1/jobs/{jid}")


def _peak_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        m = re.search(r"VmHWM:\s+(\d+) kB", f.read())
    return int(m[1]) / 1024 if m else 0.0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.abuse")
    ap.add_argument("--window", type=float, default=8.0, help="seconds of qstat per case")
    ap.add_argument("--jobs", type=int, default=200, help="held jobs in the queue")
    args = ap.parse_args(argv)
    rows: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        d = LocalSchedd(Path(tmp), nodes=0)
        d.start()
        try:
            for first in range(0, args.jobs, 1000):
                batch = [{"argv": ["true"], "hold": True, "workdir": tmp} for _ in range(first, min(args.jobs, first + 1000))]
                d.client.call("POST", "/api/v1/jobs/batch", {"jobs": batch})
            token = subprocess.run([sys.executable, "-m", "schedd.main", "token", "create", "bench", "--config",
                                    str(d.config)], capture_output=True, text=True, check=True).stdout.strip()
            cases: list[tuple[str, Callable[[], AbstractContextManager[None]]]] = [
                ("baseline", lambda: _idle(d, 0)),
                ("300 idle TCP connections", lambda: _idle(d, 300)),
                ("1,500 TCP connections (max_connections 1000)", lambda: _idle(d, 1500)),
                ("slow-loris: 100 connections, a header byte each per 100 ms", lambda: _background(_slowloris(d, 100))),
                ("100 MB bodies, one after another", lambda: _background(_bodies(d, token))),
                ("2,000 long polls (max_waiters 1000)", lambda: _waits(d, 2000, tmp)),
            ]
            for name, make in cases:
                with make():
                    unix, tcp = _measure(d, token, args.window)
                rows.append(f"| {name} | {unix.row()} | {tcp.row()} | {_peak_mb(d.pid):.0f} |")
        finally:
            d.stop()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    print(f"host {platform.node()} ({platform.processor() or platform.machine()}), commit {commit}, "
          f"{args.jobs} held jobs, {args.window:g} s of qstat per case (a new connection each)")
    print("| abuse | unix p50 ms | unix p99 ms | unix refused | tcp p50 ms | tcp p99 ms | tcp refused | daemon peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
