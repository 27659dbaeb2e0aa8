"""Property-based requests to every REST operation of the real daemon, as an
ordinary user, from the daemon's own OpenAPI document (bench/fuzz.py drives
schemathesis): no 5xx, every 4xx in the API's error shape, every documented
answer matching its schema, no traceback in the daemon's log.

The daemon runs as root with agents that switch to each job's owner (the
security fixtures); the requests go over loopback TCP with a token of
``sdalice``, so everything the fuzzer submits is sdalice's, held, its paths
moved under her temporary home (a generated release could start one: it runs
as sdalice, there).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.fuzz import aimed_at, confined, fuzz, seed_jobs, table, tracebacks
from tests.security.conftest import ROOT, RootDaemon, User, root_owned_files

#: Generated requests per operation and mode (positive, negative): ~1100 in all,
#: about two minutes on a loaded 2-core machine.
EXAMPLES = 20


def _token(d: RootDaemon, user: str, role: str = "user") -> str:
    out = subprocess.run([sys.executable, "-m", "schedd.main", "token", "create", user, "--role", role, "--config",
                          str(d.config)],
                         capture_output=True, text=True, check=True, cwd=ROOT, timeout=60)
    return out.stdout.strip()


def test_fuzzing_every_operation_finds_no_5xx_no_bad_shape_no_traceback(root_daemon: RootDaemon, alice: User,
                                                                         bob: User) -> None:
    daemon = root_daemon
    token = _token(daemon, alice.name)
    numbers = seed_jobs(daemon.http_url, token, str(alice.home))
    numbers.append(int(daemon.submit_as(bob, argv=["true"], hold=True)))  # another user's job: 403s
    tally = fuzz(daemon.http_url, token, EXAMPLES, aimed_at(numbers, base=confined(str(alice.home))))
    print("\n" + table(tally))
    assert tally.failures == []
    found = tracebacks(daemon.log.read_text(errors="replace"))
    assert found == [], "\n\n".join(found)
    # every operation was exercised, and reached its handler with both kinds of answer
    overall = tally.overall()
    assert tally.total >= 20 * EXAMPLES and overall[200] > 0 and overall[201] > 0 and overall[400] > 0
    assert overall[404] > 0 and overall[403] > 0
    # the fuzzer's jobs are sdalice's, whatever it sent (never root's)
    owners = {j["owner"] for j in daemon.client.call("GET", "/api/v1/jobs?finished=1")["jobs"]}
    assert owners <= {alice.name, bob.name}, owners
    assert root_owned_files(alice.home) == []
    assert daemon.client.call("GET", "/healthz")["ok"] is True


def _operators(label: str) -> bool:
    return any(part in label for part in ("/nodes/", "/pool/", "/admin/reload", "/jobs/{id}"))


def test_fuzzing_as_an_operator_reaches_the_bodies_a_user_is_refused_before(root_daemon: RootDaemon, alice: User,
                                                                            bob: User) -> None:
    """The node, pool and reload routes answer a user 403 before their body is
    read: here sdalice holds an operator's token (still not root), and generated
    node names and groups name the real ones."""
    daemon = root_daemon
    numbers = seed_jobs(daemon.http_url, _token(daemon, alice.name), str(alice.home))
    numbers.append(int(daemon.submit_as(bob, argv=["true"], hold=True)))
    names = {"name": [n["name"] for n in daemon.up_nodes()], "group": ["node"]}
    tally = fuzz(daemon.http_url, _token(daemon, alice.name, "operator"), EXAMPLES,
                 aimed_at(numbers, names, base=confined(str(alice.home))), only=_operators)
    print("\n" + table(tally))
    assert tally.failures == []
    found = tracebacks(daemon.log.read_text(errors="replace"))
    assert found == [], "\n\n".join(found)
    overall = tally.overall()
    assert overall[200] > 0 and overall[400] > 0 and overall[404] > 0
    assert sum(tally.statuses["POST /api/v1/nodes/{name}/drain"][c] for c in (200, 400)) > 0  # past the role check
    assert daemon.client.call("GET", "/healthz")["ok"] is True


def test_the_error_shape_check_refuses_what_is_not_the_shape() -> None:
    """The custom check can fail: a plain-text 400 (aiohttp's own) or an extra key."""
    from types import SimpleNamespace

    from bench.fuzz import BadErrorShape, error_shape

    ok = SimpleNamespace(status_code=404, content=b'{"error": {"code": "not_found", "message": "no job 7"}}')
    assert error_shape(None, ok, None) is None  # type: ignore[arg-type]
    for content in (b"Got more than 8190 bytes when reading", b'{"error": "x"}',
                    b'{"error": {"code": "a", "message": "b"}, "detail": 1}'):
        with pytest.raises(BadErrorShape):
            error_shape(None, SimpleNamespace(status_code=400, content=content), None)  # type: ignore[arg-type]


def test_only_http_level_tracebacks_are_left_out() -> None:
    log = (
        "2026-01-01 00:00:00,000 aiohttp.server ERROR Error handling request\n"
        "Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n"
        "aiohttp.http_exceptions.LineTooLong: 400, message:\n"
        "2026-01-01 00:00:01,000 schedd.api ERROR internal error on GET /api/v1/jobs\n"
        "Traceback (most recent call last):\n  File \"jobs.py\", line 2, in g\nKeyError: 'x'\n"
        "2026-01-01 00:00:02,000 schedd INFO schedd stopping\n")
    found = tracebacks(log)
    assert len(found) == 1 and found[0].endswith("KeyError: 'x'")
