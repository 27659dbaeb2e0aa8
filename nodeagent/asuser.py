"""Read the end of a job's output, or append a line to its stderr file, as the job's owner.

Why a child process: the output files are the owner's (maybe on an NFS export
that squashes root), and reading them as root would let a job name
``-o /etc/shadow``'s neighbours and read them through schedd. The agent is an
asyncio process with threads, where switching effective ids would change them
under every thread, so it runs a tiny isolated interpreter (``-I -S``, ~20 ms)
that takes the owner's groups, gid and uid as its first act, before it opens
anything; it can read nothing the owner could not. The interpreter starts with
our ids and drops them itself: the agent's own Python may live where its
users cannot go (a pyenv under a mode-700 ``/root``), so starting it as the
owner would fail. As a non-root agent (or for root's jobs) the child keeps our ids.
"""

from __future__ import annotations

import asyncio
import json
import sys

from nodeagent.runtime.process import LaunchFailed, job_user

__all__ = ["append_stderr", "tail"]

_TIMEOUT_S = 10.0

_TAIL = r"""
import json, os, sys
path, name, want, cap = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if name and os.path.isdir(path):
    path = os.path.join(path, name)
try:
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        start = max(0, size - cap)
        f.seek(start)
        data = f.read(cap)
except OSError as e:
    print(json.dumps({"error": f"{path}: {e.strerror or e}"}))
    sys.exit(0)
lines = data.decode("utf-8", "replace").split("\n")
if start > 0:
    lines = lines[1:]
if lines and lines[-1] == "":
    lines.pop()
print(json.dumps({"lines": lines[-want:], "truncated": start > 0 or len(lines) > want}))
"""

_APPEND = r"""
import os, sys
path, name, text = sys.argv[1], sys.argv[2], sys.argv[3]
if name and os.path.isdir(path):
    path = os.path.join(path, name)
fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
os.write(fd, text.encode())
os.close(fd)
"""


#: The child's first lines: take the ids in argv[1] ("uid:gid:group,group..."; "" keeps ours),
#: every module it uses imported first (the standard library may be out of the owner's reach too).
_DROP = r"""
import json, os, sys
ids = sys.argv.pop(1)
if ids:
    uid, gid, groups = ids.split(":")
    os.setgroups([int(g) for g in groups.split(",") if g])
    os.setgid(int(gid))
    os.setuid(int(uid))
"""


def _ids(user: str, switch_user: bool) -> str:
    """The child's ids for :data:`_DROP`: the job's owner, by the same rule as the
    job itself runs (:func:`~nodeagent.runtime.process.job_user`); raises
    LaunchFailed for a user this node does not know."""
    owner = job_user(user, switch_user)
    return "" if owner is None else f"{owner.uid}:{owner.gid}:{','.join(map(str, owner.groups))}"


async def _run(user: str, switch_user: bool, code: str, *args: str) -> bytes:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-I", "-S", "-c", _DROP + code, _ids(user, switch_user), *args, cwd="/",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), _TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise OSError(f"reading as {user} took over {_TIMEOUT_S:g} s") from None
    if proc.returncode:
        raise OSError(err.decode(errors="replace").strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}")
    return out


async def tail(user: str, switch_user: bool, path: str, name: str, lines: int, max_bytes: int) -> dict[str, object]:
    """``{"lines", "truncated"}`` or ``{"error"}``: the last ``lines`` lines of the
    file, from at most its last ``max_bytes`` bytes."""
    try:
        out = await _run(user, switch_user, _TAIL, path, name, str(lines), str(max_bytes))
        return dict(json.loads(out))
    except (OSError, LaunchFailed, ValueError) as exc:
        return {"error": str(exc) or type(exc).__name__}


async def append_stderr(user: str, switch_user: bool, path: str, name: str, text: str) -> None:
    """Append ``text`` to the job's stderr file as its owner (best effort)."""
    try:
        await _run(user, switch_user, _APPEND, path, name, text)
    except (OSError, LaunchFailed):
        pass
