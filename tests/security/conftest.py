"""The real daemon started as root with real agents, acted on by two ordinary users.

This is how a real pool runs: agents are root so that each job runs as its
owner. The tests create two unprivileged accounts (``sdalice``, ``sdbob``),
give each a home directory under a world-traversable temporary directory, and
run every command and API call *as that user* (``runuser -u``), so the
daemon's identity check (``SO_PEERCRED`` on the Unix socket) sees them as they
are. Nothing here runs a made-up request as root.

Skipped when not root (creating users and switching to them needs it).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import CONFIG, Daemon, _kill_leftovers, wait_for

ROOT = Path(__file__).resolve().parents[2]
USERS = ("sdalice", "sdbob")
#: The interpreter an ordinary user runs: the venv's may live under root's 0700
#: home (pyenv); the commands need only the standard library, from PYTHONPATH.
USER_PYTHON = "/usr/bin/python3"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates users and runs as them")


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: Path


def _ensure_user(name: str, homes: Path) -> User:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--user-group", "--shell", "/bin/sh", name], check=True,
                       capture_output=True)
        entry = pwd.getpwnam(name)
    home = homes / name
    home.mkdir(mode=0o755, exist_ok=True)
    os.chown(home, entry.pw_uid, entry.pw_gid)
    return User(name, entry.pw_uid, entry.pw_gid, home)


@pytest.fixture(scope="session")
def homes() -> Iterator[Path]:
    """A world-traversable directory holding the users' homes and the daemon's state."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    base = Path(tempfile.mkdtemp(prefix="schedd-sec-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def users(homes: Path) -> dict[str, User]:
    return {name: _ensure_user(name, homes) for name in USERS}


@pytest.fixture
def alice(users: dict[str, User]) -> User:
    return users["sdalice"]


@pytest.fixture
def bob(users: dict[str, User]) -> User:
    return users["sdbob"]


class RootDaemon(Daemon):
    """``schedd up`` as root, agents switching to each job's owner."""

    def __init__(self, tmp: Path, nodes: int = 2, gpus: int = 4, pool_extra: str = "") -> None:
        super().__init__(tmp, nodes=nodes, gpus=gpus)
        # as shipped (PBS's acl_roots): only the ordinary users here own jobs
        self.config.write_text(self.config.read_text().replace("allow_root_jobs = true", "allow_root_jobs = false"))
        self.pool.write_text(f'[[groups]]\nname = "node"\nswitch_user = true\n{pool_extra}')

    def command(self, user: User, name: str, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        """A PBS command (``qsub``, ``qstat``...) run as ``user``."""
        return self.run_as(user, USER_PYTHON, "-m", f"schedd.cli.{name}", *args, **kw)

    def run_as(self, user: User, *argv: str, stdin: str | None = None, cwd: Path | None = None,
               timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """A command run as ``user`` (``runuser -u``), with this daemon's SCHEDD_URL."""
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(user.home), "SCHEDD_URL": self.url,
               "LANG": "C.UTF-8"}
        return subprocess.run(["runuser", "-u", user.name, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()),
                               *argv], input=stdin, capture_output=True, text=True, cwd=cwd or user.home,
                              timeout=timeout)

    def api(self, user: User, method: str, path: str, body: Any = None,
            headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """One HTTP request over the Unix socket as ``user``: (status, decoded JSON body or text)."""
        script = (
            "import json, sys, http.client, socket\n"
            "a = json.load(sys.stdin)\n"
            "class C(http.client.HTTPConnection):\n"
            "    def connect(self):\n"
            "        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
            "        self.sock.settimeout(60)\n"
            "        self.sock.connect(a['sock'])\n"
            "c = C('localhost')\n"
            "raw = a['raw'].encode('latin-1') if a['raw'] is not None else None\n"
            "c.request(a['method'], a['path'], body=raw, headers=a['headers'])\n"
            "r = c.getresponse()\n"
            "print(json.dumps({'status': r.status, 'body': r.read().decode('utf-8', 'replace')}))\n"
        )
        raw = None if body is None else (body if isinstance(body, str) else json.dumps(body))
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        arg = {"sock": self.url[len("unix://"):], "method": method, "path": path, "raw": raw, "headers": hdrs}
        out = self.run_as(user, USER_PYTHON, "-c", script, stdin=json.dumps(arg))
        assert out.returncode == 0, out.stderr
        answer = json.loads(out.stdout)
        try:
            return answer["status"], json.loads(answer["body"])
        except ValueError:
            return answer["status"], answer["body"]

    def submit_as(self, user: User, **body: Any) -> str:
        body.setdefault("workdir", str(user.home))
        status, answer = self.api(user, "POST", "/api/v1/jobs", body)
        assert status == 201 or status == 200, (status, answer)
        return str(answer["job"]["id"])

    def assert_alive(self) -> None:
        """The daemon answers (after whatever a hostile request did)."""
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-4000:]
        assert self.client.call("GET", "/api/v1/server")


@pytest.fixture
def root_daemon(homes: Path, users: dict[str, User]) -> Iterator[RootDaemon]:
    tmp = Path(tempfile.mkdtemp(prefix="d-", dir=homes))
    tmp.chmod(0o755)
    d = RootDaemon(tmp).start()
    yield d
    d.stop()
    _kill_leftovers(d.state)
    shutil.rmtree(tmp, ignore_errors=True)


def root_owned_files(top: Path) -> list[Path]:
    """Files under ``top`` owned by root: what a job of an ordinary user must never leave."""
    found = []
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            try:
                if p.lstat().st_uid == 0:
                    found.append(p)
            except OSError:
                continue
    return found


__all__ = ["CONFIG", "RootDaemon", "User", "root_owned_files", "wait_for"]
