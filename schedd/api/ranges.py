"""Job ids in request paths, including a subjob range (``17[2-5]``).

A range is answered by the server, in one request: ``qdel 17[1-200000]`` is
one ``DELETE /api/v1/jobs/17[1-200000]``, not 200000 of them. The server walks
only the indices its array has (the array's ``X-Y:Z`` intersected with the
range: at most ``max_array_size``) and answers for the subjobs that exist.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import msgspec

from schedd.errors import InputError, UnknownJob
from schedd.daemon.records import JobRecord
from schedd.daemon.state import State

__all__ = ["JobRef", "parse_ref", "subjob_ids", "subjobs"]

#: ``17``, ``17[]``, ``17[3]`` or ``17[2-5]``, after the ``.server`` suffix is cut.
_REF = re.compile(r"(\d{1,18})(\[(?:(\d{1,9})(?:-(\d{1,9}))?)?\])?")
_decoder = msgspec.json.Decoder(JobRecord)


@dataclass(frozen=True, slots=True)
class JobRef:
    """A parsed job operand: ``id`` is the job's id, or the range as written
    (``17[2-5]``) with ``first``/``last`` set."""

    id: str
    number: str
    first: int | None = None
    last: int | None = None

    @property
    def is_range(self) -> bool:
        return self.last is not None

    @property
    def parent(self) -> str:
        return f"{self.number}[]"


def parse_ref(raw: str) -> JobRef:
    """``17.server`` -> 17; ``17[3].server`` -> 17[3]; ``17[2-5]`` a range.

    >>> parse_ref("17[2-5].srv")
    JobRef(id='17[2-5]', number='17', first=2, last=5)
    >>> parse_ref("17[3]").is_range, parse_ref("17[]").id
    (False, '17[]')
    >>> parse_ref("17[5-2]")
    Traceback (most recent call last):
    ...
    schedd.errors.InputError: illegally formed job identifier: 17[5-2]
    """
    jid = raw.split(".", 1)[0]
    m = _REF.fullmatch(jid)
    if m is None or (m[4] is not None and int(m[4]) < int(m[3])):
        raise InputError(f"illegally formed job identifier: {raw}")
    if m[4] is None:
        return JobRef(jid, m[1])
    return JobRef(jid, m[1], int(m[3]), int(m[4]))


def subjob_ids(parent: JobRecord, first: int, last: int) -> list[str]:
    """The ids of ``parent``'s subjobs whose index is in ``first..last``: the
    array's own indices only, so the work is bounded by the array's size
    whatever the range says. O(subjobs in the range).

    >>> from schedd.daemon.records import ArraySpec
    >>> p = JobRecord("9[]", 9, 1, "a", "u", "", "q", [], 60.0, 0.0, "/", "", "", array=ArraySpec(1, 9, 2))
    >>> subjob_ids(p, 2, 10**9)
    ['9[3]', '9[5]', '9[7]', '9[9]']
    """
    spec = parent.array
    if spec is None:
        return []
    lo = max(first, spec.start)
    lo += -(lo - spec.start) % spec.step  # up to the next index the array has
    return [f"{parent.number}[{i}]" for i in range(lo, min(last, spec.end) + 1, spec.step)]


def subjobs(state: State, ref: JobRef) -> list[JobRecord]:
    """The subjobs of ``ref``'s range that exist, in index order: in memory, else
    (finished and retired) from the store in one batched read."""
    assert ref.first is not None and ref.last is not None
    parent = state.lookup(ref.parent)
    if parent is None or parent.array is None:
        raise UnknownJob(f"Unknown Job Id {ref.id}")
    ids = subjob_ids(parent, ref.first, ref.last)
    found = {i: state.jobs[i] for i in ids if i in state.jobs}
    missing = [i for i in ids if i not in found]
    if missing and state.store is not None:
        for row in state.store.load_jobs(ids=missing):
            found[row.id] = _decoder.decode(row.data)
    return [found[i] for i in ids if i in found]
