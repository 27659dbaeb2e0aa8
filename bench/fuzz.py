"""Property-based requests to every REST operation, from the daemon's own
OpenAPI document (``GET /api/v1/openapi.json``), with schemathesis.

Each operation gets ``max_examples`` generated requests in each of two modes:
*positive* (values the schema allows) and *negative* (values it forbids: wrong
types, out-of-range numbers, unknown keys, missing required fields). Every
answer must be below 500; every 4xx must be the API's error shape
(``{"error": {"code", "message"}}``); every answer with a documented status must
match its documented schema (so the document cannot drift from the handlers).

Used by tests/security/test_openapi_fuzz.py (a bounded run as an ordinary
user), and runnable as a larger run::

    python -m bench.fuzz [--examples 100]

which starts ``schedd up`` with a pool of no nodes (nothing the fuzzer
submits can run), fuzzes it as an ordinary user's token, and prints the
status counts per operation.
"""

from __future__ import annotations

import argparse
import collections
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
import hypothesis.errors
import msgspec
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, Verbosity
from requests.structures import CaseInsensitiveDict
from schemathesis import GenerationMode
from schemathesis import Case as _Case
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import response_schema_conformance

from schedd.api.openapi import ErrorBody

__all__ = ["HTTP_LEVEL", "NOT_FUZZED", "Tally", "aimed_at", "capped", "confined", "error_shape", "fuzz", "seed_jobs", "main", "table", "tracebacks"]

#: Operations a request/response fuzzer cannot drive: an answer that never ends.
NOT_FUZZED = {"GET /api/v1/stream": "server-sent events: the answer is endless by design"}
#: Longest wait a generated ``/wait`` request may ask (its timeout_s is clipped to it).
WAIT_CAP_S = 1.0
#: Most nodes a generated ``/pool/GROUP/scale`` may ask (a local pool starts an agent per node).
SCALE_CAP = 3
#: The longest string, array or object generated. The document's bounds go to
#: 131072 (an argv item); a pattern on a string that long costs schemathesis
#: about a second per example to compile as a bounded regex, so generation
#: works on a copy of the served document with the bounds lowered to this.
GENERATED_LENGTH = 4096
_ERROR = msgspec.json.Decoder(ErrorBody)
Case = _Case[Any]
_LINE_TOO_LONG = b"Got more than 8190 bytes when reading"


class BadErrorShape(AssertionError):
    pass


def error_shape(ctx: Any, response: schemathesis.Response, case: Case) -> bool | None:
    """A schemathesis check: a 4xx is JSON of exactly ``{"error": {"code", "message"}}``."""
    if 400 <= response.status_code < 500:
        try:
            _ERROR.decode(response.content)
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise BadErrorShape(f"{response.status_code} not in the error shape ({e}): {response.content[:200]!r}")
    return None


@dataclass
class Tally:
    """What a run tried and what came back: statuses per operation, and failures."""

    statuses: dict[str, collections.Counter[int]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    #: plain-text 400s of aiohttp's HTTP parser for a request line over its limit
    #: (not the API's answer: the request never reached it), counted apart
    line_too_long: int = 0
    seconds: float = 0.0
    op_seconds: dict[str, float] = field(default_factory=dict)
    #: the error codes answered, per operation and status: {"GET /x 400 bad_request": n}
    codes: collections.Counter[str] = field(default_factory=collections.Counter)
    #: the error messages answered (their first 100 characters), to read what the fuzzer hit
    messages: collections.Counter[str] = field(default_factory=collections.Counter)

    @property
    def total(self) -> int:
        return sum(sum(c.values()) for c in self.statuses.values())

    def overall(self) -> collections.Counter[int]:
        out: collections.Counter[int] = collections.Counter()
        for c in self.statuses.values():
            out.update(c)
        return out


Prepare = Callable[[Case], None]
_SIZES = ("maxLength", "maxItems", "maxProperties")


def capped(node: Any, most: int) -> Any:
    """``node`` (a JSON Schema or OpenAPI document) with size bounds above ``most`` lowered to it.

    >>> capped({"a": {"maxLength": 131072, "minLength": 1}, "b": [{"maxItems": 3}]}, 4096)
    {'a': {'maxLength': 4096, 'minLength': 1}, 'b': [{'maxItems': 3}]}
    """
    if isinstance(node, dict):
        return {k: min(v, most) if k in _SIZES and isinstance(v, int) else capped(v, most) for k, v in node.items()}
    if isinstance(node, list):
        return [capped(v, most) for v in node]
    return node


def _default_prepare(case: Case) -> None:
    """Keep a generated request harmless: submitted jobs are held (only a
    later generated release could start them), and a wait is short."""
    label = f"{case.method.upper()} {case.path}"
    body: Any = case.body
    if label in ("POST /api/v1/jobs", "POST /api/v1/jobs/batch") and isinstance(body, dict):
        jobs = body.get("jobs") if label.endswith("batch") else [body]
        for job in jobs if isinstance(jobs, list) else []:
            if isinstance(job, dict):
                job["hold"] = True
    if label == "POST /api/v1/pool/{group}/scale" and isinstance(body, dict):
        n = body.get("count")
        if isinstance(n, int) and not isinstance(n, bool) and n > SCALE_CAP:
            body["count"] = SCALE_CAP  # an operator's generated count: not 999 agents on this machine
    if label == "GET /api/v1/jobs/{id}/wait" and isinstance(case.query, dict):
        t = case.query.get("timeout_s")
        if isinstance(t, (int, float)) and not isinstance(t, bool) and t > WAIT_CAP_S:
            case.query["timeout_s"] = WAIT_CAP_S


_PATHS = ("workdir", "stdout_path", "stderr_path", "shell")


def confined(top: str, base: Prepare = _default_prepare) -> Prepare:
    """``base``, then every absolute path of a generated job (workdir, output
    files, shell) moved under ``top``: a job a generated release starts reads
    and writes there only (the rest of the path, odd characters and all, kept)."""

    def prepare(case: Case) -> None:
        base(case)
        body: Any = case.body
        if not isinstance(body, dict) or case.method.upper() != "POST" or not case.path.startswith("/api/v1/jobs"):
            return
        jobs = body.get("jobs") if case.path.endswith("/batch") else [body]
        for job in jobs if isinstance(jobs, list) else []:
            if isinstance(job, dict):
                for key in _PATHS:
                    if isinstance(job.get(key), str) and job[key].startswith("/"):
                        job[key] = top.rstrip("/") + job[key]

    return prepare


def aimed_at(numbers: Sequence[int], names: Mapping[str, Sequence[str]] | None = None,
             base: Prepare = _default_prepare, share: float = 0.75) -> Prepare:
    """``base``, then, in ``share`` of the cases, a generated job id that starts
    with digits is pointed at one of the jobs ``numbers`` (its number replaced,
    the rest kept: ``17[]``, ``17[3]``, ``17[2-5]``, ``17.server``), and another
    path parameter (``name``, ``group``) at one of ``names[parameter]``: random
    values almost never name anything, and a request about nothing stops at 404."""
    rng = random.Random(0)
    names = names or {}

    def prepare(case: Case) -> None:
        base(case)
        params = case.path_parameters
        if not params or rng.random() >= share:
            return
        raw = params.get("id")
        if numbers and "/jobs/" in case.path and isinstance(raw, str):
            m = re.match(r"[0-9]+", raw)
            if m is not None:
                params["id"] = str(rng.choice(numbers)) + raw[m.end():]
        for key, values in names.items():
            if key in params and values:
                params[key] = rng.choice(values)

    return prepare


def seed_jobs(base_url: str, token: str, workdir: str) -> list[int]:
    """Held jobs for generated ids to name (see :func:`aimed_at`): one job and a
    4-subjob array, submitted as ``token``'s user; their numbers."""
    out = []
    for extra in ({}, {"array": "1-4"}):
        body = {"argv": ["true"], "workdir": workdir, "hold": True, "name": "fuzzseed", **extra}
        r = requests.post(f"{base_url}/api/v1/jobs", json=body, headers={"Authorization": f"Bearer {token}"},
                          timeout=60)
        r.raise_for_status()
        out.append(int(r.json()["job"]["number"]))
    return out


def fuzz(base_url: str, token: str, max_examples: int = 25, prepare: Prepare = _default_prepare,
         modes: tuple[GenerationMode, ...] = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE),
         seed: int | None = 0, only: Callable[[str], bool] = lambda label: True) -> Tally:
    """Fuzz every documented operation (``only`` those whose ``METHOD /path`` it
    accepts) of the daemon at ``base_url`` (TCP) as ``token``'s user."""
    auth = {"Authorization": f"Bearer {token}"}
    session = requests.Session()
    served = session.get(f"{base_url}/api/v1/openapi.json", headers=auth, timeout=60)
    served.raise_for_status()
    schema = schemathesis.openapi.from_dict(capped(served.json(), GENERATED_LENGTH))
    tally = Tally()
    t0 = time.monotonic()
    for result in schema.get_all_operations():
        if not isinstance(result, Ok):
            tally.failures.append(f"an operation schemathesis cannot load: {result}")
            continue
        op = result.ok()
        label = f"{op.method.upper()} {op.path}"
        if label in NOT_FUZZED or not only(label):
            continue
        counts = tally.statuses.setdefault(label, collections.Counter())
        t = time.monotonic()
        for mode in modes:
            _run_operation(op, mode, max_examples, seed, base_url, auth, session, prepare, counts, tally)
        tally.op_seconds[label] = time.monotonic() - t
    tally.seconds = time.monotonic() - t0
    return tally


def _run_operation(op: Any, mode: GenerationMode, max_examples: int, seed: int | None, base_url: str,
                   auth: dict[str, str], session: requests.Session, prepare: Prepare,
                   counts: collections.Counter[int], tally: Tally) -> None:
    """``max_examples`` generated requests of one mode; failures are collected, not
    raised, so one run reports every problem (and hypothesis does not shrink)."""
    label = f"{op.method.upper()} {op.path}"

    @hypothesis.settings(max_examples=max_examples, deadline=None, database=None, phases=[Phase.generate],
                         suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet)
    @hypothesis.given(case=op.as_strategy(generation_mode=mode))
    def one(case: Case) -> None:
        prepare(case)
        # the token's user, always: a generated Authorization (the document's
        # bearer scheme) would only ever be refused with a 401
        if case.headers is None:
            case.headers = CaseInsensitiveDict()
        case.headers.update(auth)
        try:
            response = case.call(base_url=base_url, session=session, headers=auth, timeout=60)
        except requests.RequestException as e:
            tally.failures.append(_short(f"{case.method} {case.formatted_path}", 400) + f": no answer: {e!r}")
            counts[0] += 1
            return
        counts[response.status_code] += 1
        if response.status_code >= 400:
            try:
                err = _ERROR.decode(response.content).error
                tally.codes[f"{label} {response.status_code} {err.code}"] += 1
                tally.messages[f"{label} {response.status_code} {err.message[:100]}"] += 1
            except (msgspec.DecodeError, msgspec.ValidationError):
                pass  # error_shape says so below
        if response.status_code == 400 and response.content.startswith(_LINE_TOO_LONG):
            tally.line_too_long += 1
            return
        try:
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance, error_shape],
                                   headers=auth)
        except (AssertionError, BaseExceptionGroup) as e:
            body = response.content[:300]
            tally.failures.append(_short(f"{case.method} {case.formatted_path} query={case.query!r} body={case.body!r}", 400)
                            + f" -> {response.status_code} {body!r}: {_short(_reason(e), 600)}")

    if seed is not None:
        one = hypothesis.seed(seed)(one)
    try:
        one()
    except hypothesis.errors.Unsatisfiable:
        pass  # negative mode, and nothing in the operation to make invalid (no parameters, no body)


def _short(text: str, most: int) -> str:
    return text if len(text) <= most else text[:most] + "..."


def _reason(e: BaseException) -> str:
    if isinstance(e, BaseExceptionGroup):
        return "; ".join(_reason(x) for x in e.exceptions)
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


#: Tracebacks of aiohttp's HTTP parser itself (a request line over its limit),
#: the HTTP level's to answer as JSON (schedd.daemon.server), not the API's.
HTTP_LEVEL = ("aiohttp.http_exceptions.LineTooLong",)


def tracebacks(log: str, ignore: tuple[str, ...] = HTTP_LEVEL) -> list[str]:
    """The tracebacks in a daemon's log, but those ending in an exception of ``ignore``."""
    blocks: list[list[str]] = []
    for line in log.splitlines():
        if line.startswith("Traceback (most recent call last)"):
            blocks.append([line])
        elif blocks and blocks[-1] and not line[:4].isdigit():  # not a new log record (they start with the date)
            blocks[-1].append(line)
        elif blocks:
            blocks.append([])
    found = ["\n".join(b) for b in blocks if b]
    return [b for b in found if not any(line.startswith(ignore) for line in b.splitlines())]


def table(tally: Tally) -> str:
    """Statuses per operation, as a Markdown table."""
    codes = sorted(tally.overall())
    head = "| operation | requests | s | " + " | ".join(str(c) for c in codes) + " |"
    rows = [head, "|" + "---|" * (len(codes) + 3)]
    for label, c in tally.statuses.items():
        rows.append(f"| `{label}` | {sum(c.values())} | {tally.op_seconds.get(label, 0):.1f} | "
                    + " | ".join(str(c.get(k, 0)) for k in codes) + " |")
    total = tally.overall()
    rows.append(f"| **all** | {tally.total} | {tally.seconds:.0f} | " + " | ".join(str(total[k]) for k in codes) + " |")
    rows.append(f"\n{tally.total} requests in {tally.seconds:.0f} s; {len(tally.failures)} failures; "
                f"{tally.line_too_long} request lines over aiohttp's 8190-byte limit (its plain-text 400)")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    from bench._daemon import LocalSchedd

    ap = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=100, help="generated requests per operation and mode")
    ap.add_argument("--user", default="fuzzuser", help="the token's user")
    ap.add_argument("--role", default="user", choices=("user", "operator"),
                    help="the token's role: an operator's requests get past the role checks of nodes, pool, reload")
    ap.add_argument("--keep-log", metavar="FILE", help="copy the daemon's log there (to read its tracebacks)")
    ap.add_argument("--messages", type=int, default=0, metavar="N", help="print the N most frequent error messages")
    ap.add_argument("--seed", type=int, default=0, help="hypothesis seed: the same requests every run (-1: random)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="schedd-fuzz-") as tmp:
        d = LocalSchedd(Path(tmp), nodes=0)
        d.start()
        try:
            def token_of(role: str) -> str:
                out = subprocess.run([sys.executable, "-m", "schedd.main", "token", "create", args.user, "--role", role,
                                      "--config", str(d.config)], capture_output=True, text=True, check=True)
                return out.stdout.strip()

            numbers = seed_jobs(d.http_url, token_of("user"), tmp)
            token = token_of(args.role)
            tally = fuzz(d.http_url, token, args.examples, aimed_at(numbers), seed=None if args.seed < 0 else args.seed)
        finally:
            d.stop()
        log = d.log.read_text(errors="replace")
        found = tracebacks(log)
        if args.keep_log:
            Path(args.keep_log).write_text(log)
    print(table(tally))
    for text, n in tally.messages.most_common(args.messages):
        print(f"{n:5d}  {text}")
    print(f"{len(found)} tracebacks in the daemon's log (HTTP-level {', '.join(HTTP_LEVEL)} not counted)")
    for tb in found:
        print(tb)
    for f in tally.failures:
        print("FAIL", f)
    return 1 if tally.failures or found else 0


if __name__ == "__main__":
    sys.exit(main())
