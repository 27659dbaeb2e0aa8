"""Plain ``qstat`` printed by the server (``GET /api/v1/jobs?table=qstat``, issue #12).

The server prints the default layout's lines with the command's own code
(:mod:`schedd.cli.qstat_default`); these tests hold it to what the command
prints from whole records — for arbitrary records, and through the real app —
check the parameter's validation, the command's own selection among the
lines, and what plain ``qstat`` and ``qsub job.sh`` import on their way.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from schedd.api.app import make_app
from schedd.api.auth import TokenBook
from schedd.api.jobs import _PRINTED, _printed
from schedd.api.openapi import document
from schedd.cli import qstat
from schedd.cli.qstat_attrs import Context
from schedd.cli.qstat_default import TABLES, header, time_use
from schedd.cli.qstat_format import default_table, rows
from schedd.config import load_pipeline, load_settings
from schedd.daemon.loop import Loop
from schedd.daemon.reconcile import on_register
from schedd.daemon.records import JobRecord, Usage
from schedd.daemon.state import State
from schedd.protocol import Register

ROOT = Path(__file__).resolve().parents[2]
STATES = ["held", "queued", "waiting", "running", "exiting", "finished"]
TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40)


@st.composite
def records(draw: st.DrawFn) -> JobRecord:
    number = draw(st.integers(1, 10**18 - 1))
    jid = str(number) + draw(st.sampled_from(["", "[]", f"[{draw(st.integers(0, 10**9))}]"]))
    return JobRecord(
        id=jid, number=number, order=number, name=draw(TEXT), owner=draw(TEXT), account="", queue=draw(TEXT),
        chunks=[], walltime_s=0.0, submit_time=0.0, workdir="/", stdout_path="", stderr_path="",
        state=draw(st.sampled_from(STATES)), start_time=draw(st.none() | st.just(0.0) | st.floats(0, 2e9)),
        used=Usage(cpu_s=draw(st.floats(0, 1e20) | st.sampled_from([0.0, 59.9, 3600.0, 359999.0, 360000.0]))))


def _by_the_command(recs: list[JobRecord], server: str, wide: bool) -> str:
    """What qstat prints of the same jobs as whole records (its path before the table)."""
    return default_table(rows(msgspec.to_builtins(recs), Context(server)), server, wide=wide)


@settings(max_examples=300, deadline=None)
@given(st.lists(records(), max_size=8), st.sampled_from(["srv", "head.example.org", "a-very-long-server-name"]),
       st.booleans())
def test_the_servers_lines_are_the_commands_layout(recs: list[JobRecord], server: str, wide: bool) -> None:
    printed = _printed(recs, server, wide)
    assert printed["ids"] == " ".join(r.id for r in recs)
    assert (header(wide) + printed["text"] if recs else printed["text"]) == _by_the_command(recs, server, wide)


@settings(max_examples=200, deadline=None)
@given(st.lists(records(), max_size=8), st.integers(0, 8), st.booleans())
def test_a_listing_with_jobs_more_at_its_end_is_the_one_printed_afresh(recs: list[JobRecord], cut: int,
                                                                      wide: bool) -> None:
    """A listing kept, then the same jobs and more after them (the new lines
    printed, the rest copied): what printing them all afresh gives."""
    _printed(recs[:cut], "grow", wide)
    assert _printed(recs, "grow", wide) == {"ids": " ".join(r.id for r in recs),
                                            "text": _by_the_command(recs, "grow", wide).split("\n", 2)[2]
                                            if recs else ""}


# ---------------------------------------------------------------- the parameter, through the app


class Api:
    def __init__(self, client: TestClient[Any, Any], state: State, token: str) -> None:
        self.client, self.state, self.token = client, state, token
        self.url = f"http://127.0.0.1:{client.port}"

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        r = await self.client.request(method, path, json=body, headers={"Authorization": f"Bearer {self.token}"})
        return r.status, await r.json()


@pytest_asyncio.fixture
async def api() -> AsyncIterator[Api]:
    settings_ = load_settings()
    state = State(settings_, load_pipeline(settings_.policies_path()), None, lambda: 1000.0)
    on_register(state, Register("n1", 64, 100_000, [], True), lambda m: None, "127.0.0.1")
    book = TokenBook(None)
    token = book.create("ann", "user", 0.0)
    async with TestClient(TestServer(make_app(state, Loop(state), book))) as client:
        yield Api(client, state, token)


async def _some_jobs(api: Api) -> None:
    """Names at and over the widths, an array with subjobs, a running job with CPU time."""
    for name in ("short", "x" * 15, "y" * 16, "z" * 40):
        await api.call("POST", "/api/v1/jobs", {"argv": ["true"], "workdir": "/tmp", "hold": True, "name": name})
    _, body = await api.call("POST", "/api/v1/jobs", {"argv": ["true"], "workdir": "/tmp", "hold": True,
                                                      "array": "1-3", "name": "sweep"})
    rec = api.state.jobs[body["job"]["id"]]
    rec.state, rec.start_time, rec.used.cpu_s = "running", 990.0, 3725.0


async def _same_as_the_records(api: Api, table: str) -> list[str]:
    """The table's lines, checked against the command's layout of the records."""
    status, got = await api.call("GET", f"/api/v1/jobs?table={table}")
    _, records_ = await api.call("GET", "/api/v1/jobs")
    assert status == 200 and got["table"] == table and got["server_name"] == records_["server_name"]
    assert got["ids"] == " ".join(j["id"] for j in records_["jobs"])
    server, wide = got["server_name"], TABLES[table]
    expected = default_table(rows(records_["jobs"], Context(server)), server, wide=wide)
    assert header(wide) + got["text"] == expected
    lines: list[str] = got["text"].splitlines()
    return lines


@pytest.mark.asyncio
@pytest.mark.parametrize("table", sorted(TABLES))
async def test_the_table_is_what_the_command_prints_of_the_records(api: Api, table: str) -> None:
    await _some_jobs(api)
    lines = await _same_as_the_records(api, table)
    assert any(line.split()[4] == "B" for line in lines)  # the array's state, printed by the server
    _, one = await api.call("GET", f"/api/v1/jobs?table={table}&limit=1")
    assert one["text"] == lines[0] + "\n"
    rec = next(r for r in api.state.jobs.values() if r.name == "short")  # a printed line's job changes
    rec.state, rec.start_time, rec.used.cpu_s, rec.name = "running", 995.0, 59.9, "renamed"
    again = await _same_as_the_records(api, table)
    assert again != lines and sum(a != b for a, b in zip(again, lines)) == 1


async def _text(api: Api, query: str) -> tuple[int, str, str]:
    """(status, content type, body) of ``GET /api/v1/jobs?query`` asking for text/plain."""
    r = await api.client.get(f"/api/v1/jobs?{query}",
                             headers={"Authorization": f"Bearer {api.token}", "Accept": "text/plain"})
    return r.status, r.content_type, await r.text()


@pytest.mark.asyncio
@pytest.mark.parametrize("table", sorted(TABLES))
async def test_as_text_the_table_is_what_the_command_prints_with_or_without_subjobs(api: Api, table: str) -> None:
    """``Accept: text/plain``: the bytes qstat writes, heading included, the
    server selecting the jobs (``subjobs=0``: plain qstat; -t shows them); and
    printed again when a line changes, though the listing was kept."""
    _, empty = await api.call("GET", "/api/v1/jobs")
    assert await _text(api, f"table={table}") == (200, "text/plain", "") and empty["jobs"] == []
    await _some_jobs(api)
    server, wide = empty["server_name"], TABLES[table]
    for step in ("a line changes", "a job more", "done"):
        _, records_ = await api.call("GET", "/api/v1/jobs")
        for query, shown in (("", records_["jobs"]), ("&subjobs=0", [j for j in records_["jobs"] if not j["parent"]]),
                             ("&subjobs=1", records_["jobs"])):
            status, kind, text = await _text(api, f"table={table}{query}")
            assert (status, kind) == (200, "text/plain")
            assert text == default_table(rows(shown, Context(server)), server, wide=wide)
            _, got = await api.call("GET", f"/api/v1/jobs?table={table}{query}")  # the same listing as JSON
            assert header(wide) + got["text"] == text and got["ids"] == " ".join(j["id"] for j in shown)
            _, filtered = await api.call("GET", f"/api/v1/jobs?table={table}{query}&finished=0")  # the filters' path
            assert filtered == got
        assert len([line for line in text.splitlines() if "[" in line]) == 4  # the array and its 3 subjobs
        if step == "a line changes":
            rec = next(r for r in api.state.jobs.values() if r.name == "short")
            rec.used.cpu_s, rec.start_time = rec.used.cpu_s + 3600.0, 990.0  # in place, as the daemon does
        elif step == "a job more":  # the listing kept, and a line after it
            await api.call("POST", "/api/v1/jobs", {"argv": ["true"], "workdir": "/tmp", "hold": True, "name": "new"})


@pytest.mark.asyncio
async def test_subjobs_0_leaves_out_subjobs_of_records_too(api: Api) -> None:
    await _some_jobs(api)
    _, every = await api.call("GET", "/api/v1/jobs")
    _, parents = await api.call("GET", "/api/v1/jobs?subjobs=0&fields=id")
    assert [j["id"] for j in parents["jobs"]] == [j["id"] for j in every["jobs"] if j["parent"] is None]
    assert len(parents["jobs"]) == len(every["jobs"]) - 3
    status, body = await api.call("GET", "/api/v1/jobs?subjobs=maybe")
    assert status == 400 and body["error"]["message"].startswith("invalid query parameter: ")


def test_the_printed_lines_kept_stay_bounded() -> None:
    jobs = [JobRecord(id=str(i), number=i, order=i, name="j", owner="ann", account="", queue="q", chunks=[],
                      walltime_s=0.0, submit_time=0.0, workdir="/", stdout_path="", stderr_path="") for i in range(50)]
    for step in range(1000):  # each listing changes every job's Time Use: 50,000 lines printed in all
        for r in jobs:
            r.state, r.start_time, r.used.cpu_s = "running", 1.0, float(step)
        assert _printed(jobs, "bounded", False)["text"].split()[3] == time_use(step)
    assert len(_PRINTED["bounded", False]) <= 4 * len(jobs) + 10_000


@pytest.mark.asyncio
@pytest.mark.parametrize(("query", "message"), [
    ("table=", "table: '': expected qstat or qstat-wide"),
    ("table=QSTAT", "table: 'QSTAT': expected qstat or qstat-wide"),
    ("table=qstat&fields=id", "table and fields: give one of them (a table has its own columns)"),
])
async def test_a_bad_table_is_refused_saying_why(api: Api, query: str, message: str) -> None:
    status, body = await api.call("GET", f"/api/v1/jobs?{query}")
    assert (status, body) == (400, {"error": {"code": "bad_request", "message": message}})


def test_the_document_names_the_tables_the_server_prints() -> None:
    params = document()["paths"]["/api/v1/jobs"]["get"]["parameters"]
    assert next(p for p in params if p["name"] == "table")["schema"]["enum"] == list(TABLES)


# ---------------------------------------------------------------- the command's own selection


def _options(flags: str) -> qstat.Options:
    parsed = qstat._parse([f"-{flags}"] if flags else [])
    assert not isinstance(parsed, str)
    return parsed[0]


IDS = st.lists(st.builds(lambda n, kind, i: f"{n}{kind.format(i)}", st.integers(1, 99),
                         st.sampled_from(["", "[]", "[{}]"]), st.integers(0, 99)), max_size=12)


@settings(max_examples=200, deadline=None)
@given(IDS, st.sampled_from(["", "t", "J", "E", "tJ", "tE", "JE", "tJE", "x", "w"]))
def test_the_command_selects_among_lines_as_among_records(ids: list[str], flags: str) -> None:
    o = _options(flags)
    jobs = [{"id": i, "owner": "ann", "state": "queued"} for i in ids]
    expected = "".join(f"line of {j['id']}\n" for j in qstat._select(jobs, o))
    assert qstat._select_lines(" ".join(ids), "".join(f"line of {i}\n" for i in ids), o) == expected


def test_a_line_with_a_newline_of_its_own_is_left_to_the_records_path() -> None:
    o = _options("")
    assert qstat._select_lines("1 2[]", "one\ntwo\n", o) == "one\ntwo\n"  # an array, no subjob: every line
    assert qstat._select_lines("1 2[] 2[1]", "on\ne\ntwo\nsub\n", o) is None


# ---------------------------------------------------------------- what the commands import


def _imports(api: Api, argv: list[str], cwd: Path) -> asyncio.Future[tuple[int, set[str]]]:
    """Run a command's main in a fresh interpreter; (status, modules it loaded)."""
    code = ("import sys\nbefore = set(sys.modules)\n"
            f"from schedd.cli.{argv[0]} import main\n"
            f"code = main({argv[1:]!r})\n"
            "sys.stdout.flush()\n"
            "sys.stderr.write('MODULES ' + ' '.join(sorted(set(sys.modules) - before)) + '\\n')\n"
            "sys.exit(code)\n")
    env = dict(os.environ, SCHEDD_URL=api.url, SCHEDD_TOKEN=api.token, LOGNAME="ann", PYTHONPATH=str(ROOT))

    async def run() -> tuple[int, set[str]]:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, cwd=cwd, env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        line = next((x for x in err.decode().splitlines() if x.startswith("MODULES ")), err.decode())
        return proc.returncode or 0, set(line.split()[1:])

    return asyncio.ensure_future(run())


#: What both need: the packages, the socket and JSON accelerators (not ``__future__``: ~0.2 ms).
COMMON = {"schedd", "schedd.cli", "schedd.cli.client", "schedd.cli.wire", "_socket", "_json"}


@pytest.mark.asyncio
async def test_plain_qstat_and_qsub_import_only_what_their_path_uses(api: Api, tmp_path: Path) -> None:
    """A module added to either path shows here by name: each costs ~0.1-0.2 ms of a ~9 ms start."""
    await _some_jobs(api)
    (tmp_path / "job.sh").write_text("#PBS -N one\ntrue\n")
    status, loaded = await _imports(api, ["qstat"], tmp_path)
    # the server printed the heading too, and sent text: no JSON either way
    assert (status, loaded) == (0, COMMON - {"schedd.cli.wire", "_json"} | {"schedd.cli.qstat"})
    status, loaded = await _imports(api, ["qsub", "-h", "job.sh"], tmp_path)
    assert (status, loaded) == (0, COMMON | {"schedd.cli.qsub", "schedd.cli.common", "schedd.cli.directives",
                                             "schedd.cli.getopts"})
    assert len(api.state.jobs) == 9  # 4 jobs, an array of 3 and its parent, and the one qsub submitted


# ---------------------------------------------------------------- the command's text path


def _command(api: Api, argv: list[str], extra_env: dict[str, str] | None = None) -> asyncio.Future[tuple[int, bytes]]:
    """Run a command as its console script does, in a fresh interpreter: (status, stdout)."""
    code = f"from schedd.cli.{argv[0]} import main\nmain()\n"
    env = dict(os.environ, SCHEDD_URL=api.url, SCHEDD_TOKEN=api.token, PYTHONPATH=str(ROOT), **(extra_env or {}))

    async def run() -> tuple[int, bytes]:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, *argv[1:], env=env,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        return proc.returncode or 0, out

    return asyncio.ensure_future(run())


@pytest.mark.asyncio
@pytest.mark.parametrize("flags", ["", "t", "w", "tw", "J", "E", "x"])
@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
async def test_plain_qstat_writes_what_the_records_path_prints(api: Api, flags: str, encoding: str) -> None:
    """The text the server prints, written as it came (UTF-8 stdout) or as text
    (another encoding), is byte for byte what the command prints of records."""
    await _some_jobs(api)
    rec = next(r for r in api.state.jobs.values() if r.name == "short")
    rec.name = "caf\u00e9"
    _, records_ = await api.call("GET", "/api/v1/jobs")
    o = _options(flags)
    server = records_["server_name"]
    expected = default_table(rows(qstat._select(records_["jobs"], o), Context(server)), server, wide=o.wide)
    status, out = await _command(api, ["qstat", *([f"-{flags}"] if flags else [])], {"PYTHONIOENCODING": encoding})
    assert (status, out.decode(encoding)) == (0, expected)
    assert out == expected.encode(encoding)


@pytest.mark.asyncio
async def test_against_a_server_that_answers_json_the_command_selects_itself(
        api: Api, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """An older server knows neither ``subjobs`` nor text/plain: it answers
    the JSON table of every job, and the command picks the lines itself."""
    from schedd.cli import client

    await _some_jobs(api)
    monkeypatch.setenv("SCHEDD_URL", api.url)
    monkeypatch.setenv("SCHEDD_TOKEN", api.token)
    monkeypatch.setattr(client.Client, "text",
                        lambda self, path: self.call("GET", path.replace("&subjobs=0", "")))
    _, records_ = await api.call("GET", "/api/v1/jobs")
    server = records_["server_name"]
    expected = default_table(rows(qstat._select(records_["jobs"], _options("")), Context(server)), server, wide=False)
    capsys.readouterr()
    assert await asyncio.to_thread(qstat.main, []) == 0
    assert capsys.readouterr().out == expected
