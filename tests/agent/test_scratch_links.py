"""A rank's scratch is written and removed by root in a directory its owner gets:
a link planted there is refused, never followed (nodeagent.runtime.process)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeagent.runtime.process import LaunchFailed, _make_scratch, remove_scratch
from schedd.protocol import LaunchSpec


def _spec(tmp: Path) -> LaunchSpec:
    return LaunchSpec(job_id="1.srv", name="j", user="root", queue="q", workdir=str(tmp), stdout_path="o",
                      stderr_path="e", walltime_s=60.0, ncpus=1, mem_mb=0, gpus=[], kill_delay_s=1.0,
                      script="true\n", nodes=["n1"])


def test_a_planted_nodefile_link_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep me\n")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "nodefile").symlink_to(target)
    with pytest.raises(LaunchFailed, match="cannot create scratch dir"):
        _make_scratch(scratch, _spec(tmp_path), None)
    assert target.read_text() == "keep me\n"


def test_a_scratch_replaced_by_a_link_is_not_followed_when_removed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "tmp").mkdir(parents=True)
    for name in ("nodefile", "script"):
        (elsewhere / name).write_text("theirs\n")
    scratch = tmp_path / "scratch"
    scratch.symlink_to(elsewhere, target_is_directory=True)
    remove_scratch(scratch)
    assert sorted(p.name for p in elsewhere.iterdir()) == ["nodefile", "script", "tmp"]


def test_a_scratch_of_its_own_is_made_then_removed(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    tmpdir, nodefile, script = _make_scratch(scratch, _spec(tmp_path), None)
    assert Path(nodefile).read_text() == "n1\n" and Path(script).read_text() == "true\n" and Path(tmpdir).is_dir()
    remove_scratch(scratch)
    assert not scratch.exists()
