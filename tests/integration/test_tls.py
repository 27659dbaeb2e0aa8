"""HTTPS end to end: the daemon serves TLS, commands and an agent verify it by a private CA.

A self-signed certificate for 127.0.0.1 stands in for the site's; the token
travels only inside TLS. Without the CA, a client refuses the server.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from schedd.cli.client import Client, Unreachable
from tests.integration.conftest import _kill_leftovers, wait_for
from tests.tlscert import self_signed

ROOT = Path(__file__).resolve().parents[2]



class TlsDaemon:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.cert, key = self_signed(tmp)
        self.config = tmp / "schedd.toml"
        self.config.write_text(f'listen = "127.0.0.1:0"\nstate_dir = "{tmp / "state"}"\n'
                               f'policies = "{ROOT / "conf" / "policies.toml"}"\nheartbeat_s = 0.5\n'
                               f'tls_cert = "{self.cert}"\ntls_key = "{key}"\n')
        self.log = (tmp / "schedd.log").open("a")
        self.proc = subprocess.Popen([sys.executable, "-m", "schedd.main", "serve", "--config", str(self.config)],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        m = re.search(r"or (https://\S+)", line)
        assert m, f"no https URL in {line!r}"
        self.url = m[1]
        self.token = self.make_token("root", "admin")
        self.agent: subprocess.Popen[str] | None = None

    def make_token(self, user: str, role: str) -> str:
        out = subprocess.run([sys.executable, "-m", "schedd.main", "token", "create", user, "--role", role,
                              "--config", str(self.config)], capture_output=True, text=True, check=True, cwd=ROOT)
        return out.stdout.strip()

    def stop(self) -> None:
        for p in (self.agent, self.proc):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()
        _kill_leftovers(self.tmp / "state")


@pytest.fixture
def tls_daemon(tmp_path: Path) -> Iterator[TlsDaemon]:
    d = TlsDaemon(tmp_path)
    yield d
    d.stop()


def test_commands_and_an_agent_over_https(tls_daemon: TlsDaemon, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCHEDD_CA", str(tls_daemon.cert))
    client = Client(tls_daemon.url, token=tls_daemon.token)
    assert client.call("GET", "/api/v1/server")
    token_file = tls_daemon.tmp / "agent.token"
    token_file.write_text(tls_daemon.token)
    tls_daemon.agent = subprocess.Popen(
        [sys.executable, "-m", "nodeagent.main", "--server", tls_daemon.url, "--ca", str(tls_daemon.cert), "--name",
         "tls01", "--fake-gpus", "1", "--token-file", str(token_file), "--state-dir", str(tls_daemon.tmp / "state" / "a"),
         "--heartbeat-s", "0.5"], stderr=tls_daemon.log, cwd=ROOT, text=True)
    wait_for("the agent registered over TLS",
             lambda: any(n["name"] == "tls01" and n["state"] == "up" for n in client.call("GET", "/api/v1/nodes")["nodes"]))
    out = subprocess.run([sys.executable, "-m", "schedd.cli.qstat", "-Q"], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "SCHEDD_URL": tls_daemon.url, "SCHEDD_TOKEN": tls_daemon.token})
    assert out.returncode == 0 and "default" in out.stdout, out.stderr
    client.close()


def test_a_server_not_signed_by_a_trusted_ca_is_refused(tls_daemon: TlsDaemon, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCHEDD_CA", raising=False)
    with pytest.raises(Unreachable, match="CERTIFICATE_VERIFY_FAILED"):
        Client(tls_daemon.url, token=tls_daemon.token).call("GET", "/api/v1/server")
    plain = Client(tls_daemon.url.replace("https://", "http://"), token=tls_daemon.token)
    with pytest.raises(Unreachable):  # plain HTTP to a TLS port: no answer that parses, no token accepted
        plain.call("GET", "/api/v1/server")
