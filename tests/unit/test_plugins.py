"""Third-party policies (schedd.plugins): found by entry point or ``module:Class``,
refused at load with the table and plugin named, and guarded at run time."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from schedd import plugins
from schedd.config import load_pipeline
from schedd.core.context import Snapshot
from schedd.core.scheduler import run_cycle
from schedd.errors import ConfigError
from tests.builders import gpu_nodes, job

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "schedd-sjf"

BAD_PLUGINS = '''
from policies.base import Policy

class Boom(Policy):
    name = "boom"
    def prepare(self, ctx):
        raise RuntimeError("prepare broke")
    def order_key(self, job, ctx):
        raise ZeroDivisionError("key broke")
    def fits(self, job, ctx):
        raise KeyError("fits broke")

class Misnamed(Policy):
    name = "other"

class Exploding(Policy):
    name = "exploding"
    @classmethod
    def from_config(cls, table):
        raise ValueError("no good")

NotAPolicy = dict
'''


@pytest.fixture
def sitepkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "site_plugins.py").write_text(BAD_PLUGINS)
    (tmp_path / "broken_plugin.py").write_text("import no_such_module_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _pipeline(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "policies.toml"
    path.write_text(textwrap.dedent(text))
    return load_pipeline(path)


def test_an_installed_entry_point_is_a_policy_by_its_table_name(tmp_path: Path) -> None:
    assert plugins.installed()["sjf"] == "schedd_sjf:ShortestFirst"  # make test installs examples/schedd-sjf
    p = _pipeline(tmp_path, '[sjf]\nby = "gpu_seconds"\n[placement]\n')
    assert list(p.policies) == ["sjf", "placement"]
    assert type(p.policies["sjf"]).__module__ == "schedd_sjf"


def test_a_plugins_bad_key_is_named_with_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"policies.toml: sjf.by: must be one of walltime"):
        _pipeline(tmp_path, '[sjf]\nby = "size"\n')


def test_module_colon_class_in_the_table(tmp_path: Path, sitepkg: Path) -> None:
    p = _pipeline(tmp_path, '[boom]\npolicy = "site_plugins:Boom"\n[placement]\n')
    assert type(p.policies["boom"]).__name__ == "Boom"


@pytest.mark.parametrize(("text", "error"), [
    ('[nosuch]\n', r"nosuch: unknown policy 'nosuch'; known: actions, backfill, .*sjf.*policy = \"module:Class\""),
    ('[boom]\npolicy = "broken_plugin:Boom"\n',
     r"boom.policy: cannot import 'broken_plugin' .*ModuleNotFoundError: No module named 'no_such_module_anywhere'"),
    ('[boom]\npolicy = "site_plugins:Nope"\n', r"boom.policy: 'site_plugins:Nope': module 'site_plugins' has no 'Nope'"),
    ('[boom]\npolicy = "site_plugins"\n', r'boom.policy: \'site_plugins\': expected "module:attribute"'),
    ('[boom]\npolicy = 3\n', r'boom.policy: must be "module:Class", not 3'),
    ('[x]\npolicy = "site_plugins:NotAPolicy"\n', r"x: policy plugin 'site_plugins:NotAPolicy' is not a subclass"),
    ('[boom]\npolicy = "site_plugins:Misnamed"\n', r"boom: .* is named 'other': its table must be \[other\]"),
    ('[exploding]\npolicy = "site_plugins:Exploding"\n', r"exploding: site_plugins.Exploding.from_config failed: ValueError: no good"),
    ('[priority]\npolicy = "site_plugins:Boom"\n', r"priority.policy: \[priority\] is a shipped policy"),
])
def test_a_bad_plugin_stops_loading_naming_key_and_plugin(tmp_path: Path, sitepkg: Path, text: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        _pipeline(tmp_path, text)


def test_a_failing_hook_fails_only_its_call_logged_and_counted(
        tmp_path: Path, sitepkg: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = _pipeline(tmp_path, '[boom]\npolicy = "site_plugins:Boom"\n[placement]\n')
    before = {k: plugins.ERRORS[("boom", k)] for k in ("prepare", "order_key", "fits")}
    jobs = [job(i).chunks(1, gpus=1).build() for i in (1, 2, 3)]
    plan = run_cycle(Snapshot(now=0.0, pending=jobs, running=[], nodes=gpu_nodes(1, gpus=2)), p)
    assert [j.id for j, _ in plan.starts] == ["1", "2"]  # the cycle went on, FCFS as with no opinion
    assert plugins.ERRORS[("boom", "prepare")] == before["prepare"] + 1
    assert plugins.ERRORS[("boom", "order_key")] >= before["order_key"] + 3
    assert plugins.ERRORS[("boom", "fits")] >= before["fits"] + 2
    assert "policy plugin 'boom': order_key failed" in caplog.text and "ZeroDivisionError: key broke" in caplog.text


def test_shipped_policies_are_not_wrapped() -> None:
    p = load_pipeline()
    assert all(not hasattr(h, "__wrapped__") for h in (*p.key_hooks, *p.fits_hooks, *p.prepare_hooks))


def test_the_example_plugins_own_tests_pass() -> None:
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
                         capture_output=True, text=True, cwd=EXAMPLE)
    assert out.returncode == 0, out.stdout + out.stderr
