"""The environment spec: what ``qsub`` captures and a node rebuilds. Stdlib only.

``qsub`` (a stdlib-only command), the daemon and the node agent all need the
same canonical form, so it lives here and imports nothing but ``json`` and
``hashlib``. The typed shape, which the daemon validates and the agent reads,
is :class:`schedd.protocol.EnvSpec`; in JSON (version 1)::

    {"version": 1,
     "python": {"version": "3.11.7", "executable": "/repo/.venv/bin/python",
                "base": "/usr/bin/python3.11", "implementation": "cpython"},
     "source": "installed",            # or "requirements", "pyproject", "uvlock"
     "source_path": "",                # the file the requirements came from
     "packages": [{"name": "numpy", "version": "1.26.4"},
                  {"name": "mylib", "version": "0.1", "editable": "/home/ann/mylib"},
                  {"name": "proj", "version": "0.1", "editable": "/home/ann/proj",
                   "repo_path": ".", "pth": ["src"]},
                  {"name": "x", "version": "1.0", "url": "git+https://h/x@0a1b..."}],
     "requirements": [],               # lines, when source is not "installed"
     "git": {"root": "/home/ann/proj", "remote": "https://h/proj.git", "branch": "main",
             "commit": "0a1b...", "diff": "...", "diff_encoding": "utf-8",
             "cwd": "experiments", "entry_point": "experiments/train.py", "entry_index": -1},
     "files": [{"path": "experiments/local.yaml", "mode": 420, "data": "<base64>"}]}

The **hash** of a spec is the sha256 of its canonical JSON: sorted keys, no
white space, ASCII only (so no encoding question can make two sides disagree).
It names the job's whole environment (code included) and is shown by
``qstat -f`` as ``env_hash``. The node keys its venv cache by a narrower hash
(Python minor version + packages, see :mod:`nodeagent.env.pack`), so that a new
commit reuses the venv of the previous one.
"""

from __future__ import annotations

import hashlib
import json

TYPE_CHECKING = False  # typing is not imported on the command path
if TYPE_CHECKING:
    from typing import Any

__all__ = ["MAX_INCLUDE_BYTES", "MAX_SPEC_BYTES", "SPEC_VERSION", "canonical", "spec_hash"]

SPEC_VERSION = 1
#: The largest spec the daemon accepts (its canonical JSON), diff and files included.
MAX_SPEC_BYTES = 16 * 1024 * 1024
#: The most ``qsub --env-include`` sends (file contents, before base64).
MAX_INCLUDE_BYTES = 10 * 1024 * 1024


def canonical(spec: Any) -> bytes:
    """The canonical JSON of ``spec``: sorted keys, compact, ASCII.

    >>> canonical({"b": [1, "é"], "a": None})
    b'{"a":null,"b":[1,"\\\\u00e9"]}'
    """
    return json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def spec_hash(spec: Any) -> str:
    """sha256 of the canonical JSON, hex. Key order does not matter.

    >>> spec_hash({"a": 1, "b": 2}) == spec_hash({"b": 2, "a": 1})
    True
    """
    return hashlib.sha256(canonical(spec)).hexdigest()
