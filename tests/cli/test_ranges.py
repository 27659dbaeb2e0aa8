"""A subjob range is one request, whatever its size: the commands send ``17[2-5]``
as is and report the server's per-subjob answer as PBS reports each subjob
(issue #17, item 11). Against a scripted server that records every request."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from schedd.cli import qdel, qrls, qstat
from tests.cli.test_client import Scripted, response
from tests.cli.test_qstat_format import job


def ok(body: Any) -> bytes:
    return response(json.dumps(body).encode())


def refused(status: str, code: str, message: str) -> bytes:
    return response(json.dumps({"error": {"code": code, "message": message}}).encode(), status)


def request_lines(server: Scripted) -> list[str]:
    return [r.split(b"\r\n", 1)[0].decode() for r in server.requests]


CASES: list[tuple[str, Callable[[list[str]], int], list[str], list[bytes], list[str], int, str]] = [
    ("qdel of a range no job has", qdel.main, ["999999[1-200000]"],
     [refused("404 Not Found", "unknown_job", "Unknown Job Id 999999[1-200000]")],
     ["DELETE /api/v1/jobs/999999%5B1-200000%5D HTTP/1.1"], 153, "qdel: Unknown Job Id 999999[1-200000]\n"),
    ("qdel reports each subjob's failure, exits with the last", qdel.main, ["17[1-3000000].srv"],
     [ok({"ok": False, "ids": ["17[1]", "17[2]", "17[3]"], "errors": [
         {"id": "17[2]", "code": "job_finished", "message": "Job has finished 17[2]"},
         {"id": "17[3]", "code": "permission_denied", "message": "Unauthorized Request: job 17[3] belongs to ann"}]})],
     ["DELETE /api/v1/jobs/17%5B1-3000000%5D HTTP/1.1"], 159,
     "qdel: Job has finished 17[2].srv\nqdel: Unauthorized Request: job 17[3].srv belongs to ann\n"),
    ("qdel -x of a range", qdel.main, ["-x", "17[2-5]"], [ok({"ok": True, "ids": ["17[2]"], "errors": []})],
     ["DELETE /api/v1/jobs/17%5B2-5%5D?purge=1 HTTP/1.1"], 0, ""),
    ("qdel of one job is unchanged", qdel.main, ["17.srv"], [ok({"ok": True})],
     ["DELETE /api/v1/jobs/17 HTTP/1.1"], 0, ""),
    ("qrls of a range asks nothing first", qrls.main, ["17[2-9]"], [ok({"ok": True, "ids": [], "errors": []})],
     ["POST /api/v1/jobs/17%5B2-9%5D/release HTTP/1.1"], 0, ""),
]


@pytest.mark.parametrize(("label", "main", "argv", "script", "sent", "code", "stderr"), CASES,
                         ids=[c[0] for c in CASES])
def test_a_range_is_sent_as_one_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str], label: str,
                                        main: Callable[[list[str]], int], argv: list[str], script: list[bytes],
                                        sent: list[str], code: int, stderr: str) -> None:
    server = Scripted(tmp_path / "s.sock", script)
    monkeypatch.setenv("SCHEDD_URL", f"unix://{tmp_path / 's.sock'}")
    assert main(argv) == code
    assert capsys.readouterr().err == stderr
    assert request_lines(server) == sent


def test_qstat_shows_the_subjobs_the_server_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    subs = [job(f"17[{i}]", "sweep", "ann", "default", "finished", parent="17[]", array_index=i) for i in (2, 3)]
    server = Scripted(tmp_path / "s.sock", [
        ok({"server_name": "srv", "default_queue": "default"}),
        ok({"server_name": "srv", "jobs": subs}),
    ])
    monkeypatch.setenv("SCHEDD_URL", f"unix://{tmp_path / 's.sock'}")
    assert qstat.main(["-x", "-t", "17[1-3000000]"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[2:]] == ["17[2].srv", "17[3].srv"]
    assert request_lines(server) == ["GET /api/v1/server HTTP/1.1", "GET /api/v1/jobs/17%5B1-3000000%5D HTTP/1.1"]
