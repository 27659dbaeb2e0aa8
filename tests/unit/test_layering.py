"""The dependency directions of DESIGN.md, read from the code itself (``ast``).

The scheduling core (``schedd/core``) and the policies do no I/O, read no clock
and start no task: that is what lets the same policy code run in the daemon,
the simulator and the unit tests. A test, not a convention: it fails naming the
file, the line and the import. Likewise the PBS commands import only the
standard library and ``schedd.cli``, and the agent reaches ``schedd`` only
through the wire types.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: What the pure core may not import: the daemon and every other shell, and the
#: standard library's I/O, processes, sockets, threads and clocks.
CORE_FORBIDDEN = (
    "schedd.daemon", "schedd.api", "schedd.store", "schedd.pool", "schedd.cli", "schedd.config", "schedd.main",
    "schedd.protocol", "nodeagent", "bench", "aiohttp", "asyncio", "socket", "_socket", "ssl", "selectors", "select",
    "os", "pathlib", "io", "shutil", "tempfile", "subprocess", "threading", "multiprocessing", "signal", "time",
    "datetime", "sqlite3", "logging", "random", "tomllib", "urllib", "http",
)
#: Builtins of the same kind, called by name.
CORE_FORBIDDEN_CALLS = ("open", "input", "print", "exec", "eval", "__import__")


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
            for alias in node.names:  # from schedd import daemon
                yield node.lineno, f"{node.module}.{alias.name}"


def _calls(path: Path) -> Iterator[tuple[int, str]]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            yield node.lineno, node.func.id


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _core_files() -> list[Path]:
    return sorted([*(ROOT / "schedd" / "core").rglob("*.py"), *(ROOT / "policies").rglob("*.py")])


@pytest.mark.parametrize("path", _core_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_and_the_policies_do_no_io_and_read_no_clock(path: Path) -> None:
    bad = [f"{path.relative_to(ROOT)}:{line}: imports {name}" for line, name in _imports(path)
           if _under(name, CORE_FORBIDDEN)]
    bad += [f"{path.relative_to(ROOT)}:{line}: calls {name}()" for line, name in _calls(path)
            if name in CORE_FORBIDDEN_CALLS]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", sorted((ROOT / "schedd" / "cli").rglob("*.py")), ids=lambda p: p.name)
def test_the_commands_import_only_the_standard_library_and_themselves(path: Path) -> None:
    ours = ("schedd.cli", "schedd.errors", "schedd.envspec")  # the last two: standard library only
    bad = [f"{path.name}:{line}: imports {name}" for line, name in _imports(path)
           if not _under(name, ours) and name.split(".")[0] not in sys.stdlib_module_names
           and name.split(".")[0] != "__future__"
           and not (name.startswith("schedd.") and _under(name.rsplit(".", 1)[0], ours))]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", sorted((ROOT / "nodeagent").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_agent_reaches_schedd_only_through_the_wire_types(path: Path) -> None:
    allowed = ("schedd.protocol", "schedd.errors", "schedd.logsetup", "schedd.envspec")
    bad = [f"{path.relative_to(ROOT)}:{line}: imports {name}" for line, name in _imports(path)
           if name.startswith("schedd") and not _under(name, allowed)
           and not _under(name.rsplit(".", 1)[0], allowed)]
    assert not bad, "\n".join(bad)


def test_the_rule_catches_what_it_should() -> None:
    """The checker itself: an I/O import and a clock read are found."""
    sample = ROOT / "tests" / "unit" / "_layering_sample.py"
    sample.write_text("import time\nfrom schedd.daemon import state\nx = open('f')\n")
    try:
        found = [name for _, name in _imports(sample) if _under(name, CORE_FORBIDDEN)]
        calls = [name for _, name in _calls(sample) if name in CORE_FORBIDDEN_CALLS]
        assert found == ["time", "schedd.daemon", "schedd.daemon.state"] and calls == ["open"]
    finally:
        sample.unlink()
