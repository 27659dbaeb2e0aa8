"""A container job on a node whose docker engine cannot be reached: it fails before
it runs, saying where the engine was looked for — no engine needed for this test."""

from __future__ import annotations

from pathlib import Path

from tests.integration.conftest import Daemon, _kill_leftovers


def test_a_container_job_without_an_engine_fails_to_launch_with_the_reason(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path, nodes=1)
    daemon.pool.write_text('[[groups]]\nname = "node"\nswitch_user = false\n'
                           f'docker_host = "unix://{tmp_path}/no-engine.sock"\n')
    daemon.start()
    try:
        jid = daemon.submit(script="echo never\n", container="busybox:1.36")
        job = daemon.wait_state(jid, "finished")
        assert job["exit_status"] == -1 and job["finish_reason"] == "failed", job
        assert job["comment"].startswith("container: ") and "no-engine.sock" in job["comment"], job["comment"]
        assert "cannot start the container" in (tmp_path / f"STDIN.e{jid}").read_text()
        assert (tmp_path / f"STDIN.o{jid}").read_text() == ""
    finally:
        daemon.stop()
        _kill_leftovers(daemon.state)
