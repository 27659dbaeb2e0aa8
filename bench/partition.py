"""Network partitions, repeated: jobs lost, jobs run twice, and the fence's margin.

``python -m bench.partition [--rounds 5] [--timeout-s 2]``

One real ``schedd serve`` on a test bridge and three agents, each in its own
network namespace (tests/integration/test_partition.py's ``Site``; needs root,
``ip netns`` and ``tc``'s blackhole qdisc). Each round runs four jobs that
append ``<job> <node> start|tick|end <time>`` to a file until a gate opens, and
then, in turn:

* a **short** partition of the busiest agent (until it has left its session
  and schedd has heard nothing for five heartbeats), healed: counted as
  survived when no job was requeued and every job on it ticks on;
* a **long** partition (past the heartbeat timeout): the node goes down, its
  jobs are rerun elsewhere, the gate opens while it is still cut off, the link
  comes back and its stale copies must die unheard from.

Per round: a job is *lost* if it did not end with status 0 and exactly one
``end``; *doubled* if it said ``end`` twice or its first copy wrote a line
after its second copy's ``start``. The *margin* is the time from the first
copy's last line (it froze) to the second copy's first: how much earlier than
needed the fence fell.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from tests import netns
from tests.integration.conftest import wait_for
from tests.integration.test_partition import HEARTBEAT_S, Site, busiest, silent_for


def _short(site: Site, where: dict[str, str]) -> tuple[bool, float]:
    name = busiest(where)
    agent = site.agents[name]
    mine = [j for j, n in where.items() if n == name]
    left = agent.count("disconnected from ")
    t0 = time.monotonic()
    agent.ns.cut()
    wait_for("the agent to leave its session", lambda: agent.count("disconnected from ") > left)
    wait_for("schedd to hear nothing", lambda: silent_for(site, name, 5 * HEARTBEAT_S))
    agent.ns.heal()
    cut_s = time.monotonic() - t0
    ticks = {j: site.said(j, name, "tick") for j in mine}
    wait_for("its jobs ticking on", lambda: all(site.said(j, name, "tick") > ticks[j] for j in mine))
    wait_for(f"{name} connected", lambda: site.nodes()[name]["connected"])
    requeued = any({"requeue", "resume"} & set(site.kinds(j)) for j in where)
    return not requeued, cut_s


def _long(site: Site, where: dict[str, str]) -> tuple[float, float, list[float]]:
    """(cut -> node down, heal -> stale copies gone, margins) of one long partition."""
    name = busiest(where)
    agent = site.agents[name]
    mine = [j for j, n in where.items() if n == name]
    t0 = time.monotonic()
    agent.ns.cut()
    wait_for(f"{name} down", lambda: site.nodes()[name]["state"] == "down")
    down_s = time.monotonic() - t0
    wait_for("rerun elsewhere", lambda: all((j := site.job(jid))["state"] == "running" and j["attempt"] >= 1
                                            and site.said(jid, site.node_of(jid), "start") for jid in mine))
    moved = {jid: site.node_of(jid) for jid in mine}
    site.finish(list(where))
    t1 = time.monotonic()
    agent.ns.heal()
    wait_for("stale copies killed and acknowledged", lambda: site.nodes()[name]["connected"] and not agent.ranks_left())
    healed_s = time.monotonic() - t1
    margins = []
    timed = site.timed_lines()
    for jid, node in moved.items():
        short = jid.split(".")[0]
        first = [t for j, n, _w, t in timed if j == short and n == name]
        second = [t for j, n, _w, t in timed if j == short and n == node]
        margins.append(min(second) - max(first))
    return down_s, healed_s, margins


def _tally(site: Site, where: list[str], moved_from: str) -> tuple[int, int]:
    lost = doubled = 0
    lines = site.lines()
    for jid in where:
        short = jid.split(".")[0]
        job = site.job(jid)
        ends = [n for j, n, w in lines if j == short and w == "end"]
        if job["state"] != "finished" or job["exit_status"] != 0 or not ends:
            lost += 1
        mine = [(n, w) for j, n, w in lines if j == short]
        starts = [i for i, (_n, w) in enumerate(mine) if w == "start"]
        late = len(starts) > 1 and any(n == moved_from for n, _w in mine[starts[1]:])
        if len(ends) > 1 or late:
            doubled += 1
    return lost, doubled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--timeout-s", type=float, default=2.0, help="schedd's heartbeat_timeout_s")
    args = ap.parse_args()
    if why := netns.can_cut():
        raise SystemExit(f"cannot cut network namespaces off here: {why}")
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"bench.partition at {rev}: {args.rounds} rounds, heartbeat {HEARTBEAT_S} s, timeout {args.timeout_s} s")
    net = netns.PodNetwork().up()
    survived = jobs = lost = doubled = 0
    downs, heals, margins, shorts = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-partition-") as tmp:
        site = Site(Path(tmp), net, nodes=3, gpus=2, timeout_s=args.timeout_s).start()
        try:
            for r in range(args.rounds):
                site.gate, site.log = Path(tmp) / f"gate{r}", Path(tmp) / f"jobs{r}.log"
                where = site.run_jobs(4)
                ok, cut_s = _short(site, where)
                survived += ok
                shorts.append(cut_s)
                name = busiest(where)
                down_s, healed_s, m = _long(site, where)
                survived += 1
                downs.append(down_s)
                heals.append(healed_s)
                margins += m
                n_lost, n_doubled = _tally(site, list(where), name)
                jobs += len(where)
                lost += n_lost
                doubled += n_doubled
                print(f"round {r + 1}: short cut {cut_s:.2f} s {'survived' if ok else 'REQUEUED'}; long: "
                      f"{name} down after {down_s:.2f} s, {len(m)} job(s) rerun, margin "
                      f"{', '.join(f'{x:.2f}' for x in m)} s, stale copies gone {healed_s:.2f} s after the heal; "
                      f"lost {n_lost}, doubled {n_doubled}")
        finally:
            site.stop()
            net.close()
    print(f"partitions survived {survived}/{2 * args.rounds}; jobs {jobs}: lost {lost}, doubled {doubled}")
    print(f"long partition: node down after median {statistics.median(downs):.2f} s (max {max(downs):.2f}); "
          f"fence margin min {min(margins):.2f} s, median {statistics.median(margins):.2f} s; "
          f"stale copies gone median {statistics.median(heals):.2f} s after the heal (max {max(heals):.2f})")


if __name__ == "__main__":
    main()
