"""deploy/kubernetes/pool.yaml is exactly what ``schedd pool render`` prints for
the sample pool, so GitOps users can read (and diff) the manifests without
running schedd. A change to the manifests or to conf/ that forgets to
re-render fails here, saying how to re-render."""

from __future__ import annotations

import difflib

import pytest

from schedd.main import main
from tests.kube.imagebuild import ROOT

POOL_YAML = ROOT / "deploy" / "kubernetes" / "pool.yaml"
RERENDER = "schedd pool render --pool conf/pool.kubernetes.toml > deploy/kubernetes/pool.yaml"


def test_committed_manifests_are_what_render_prints(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pool", "render", "--pool", str(ROOT / "conf" / "pool.kubernetes.toml"),
                 "--config", str(ROOT / "conf" / "schedd.toml")]) == 0
    rendered = capsys.readouterr().out
    committed = POOL_YAML.read_text() if POOL_YAML.exists() else ""
    if committed != rendered:
        diff = difflib.unified_diff(committed.splitlines(), rendered.splitlines(), "committed", "rendered", lineterm="", n=1)
        shown = "\n".join(list(diff)[:40])
        pytest.fail(f"deploy/kubernetes/pool.yaml is out of date; run `{RERENDER}` and commit it\n{shown}")


def test_every_deploy_file_is_described_in_its_readme() -> None:
    readme = (ROOT / "deploy" / "README.md").read_text()
    files = sorted(p.relative_to(ROOT / "deploy") for p in (ROOT / "deploy").rglob("*") if p.is_file())
    missing = [str(f) for f in files if f.name != "README.md" and str(f) not in readme]
    assert not missing, f"deploy/README.md does not mention {missing}"
