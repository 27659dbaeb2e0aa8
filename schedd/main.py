"""``schedd``: run the daemon (``serve``), the daemon with a local pool (``up``),
or manage tokens (``token create``).

::

    schedd up [--nodes N] [--gpus-per-node G] [--cpus-per-node C] [--mem-per-node MB]
              [--state-dir DIR] [--listen HOST:PORT] [--config FILE] [--pool FILE]
    schedd serve [--config FILE] [--pool FILE] [--log-format text|json]
    schedd token create USER [--role user|operator|admin|agent] [--expires-in 7d] [--config FILE]
    schedd token list [--json] | schedd token revoke (ID | --user USER)
    schedd pool render [--pool FILE] [--config FILE]
    schedd config check [--config FILE] [--policies FILE] [--pool FILE]
    schedd reload [--url URL]                 (or SIGHUP to the daemon)
    schedd completion bash|zsh
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from schedd.errors import ConfigError
from schedd.logsetup import configure
from schedd.operate import duration

if TYPE_CHECKING:
    from schedd.daemon.server import Daemon

__all__ = ["main"]


_EPILOG = """\
examples:
  schedd up --nodes 2 --gpus-per-node 4      a daemon and two local nodes, in the foreground
  schedd serve --config /etc/schedd/schedd.toml --pool /etc/schedd/pool.toml
  schedd token create alice --role user      a token for a TCP client (SCHEDD_TOKEN)
  schedd config check --pool pool.toml       validate the files, print what would run
  schedd reload                              re-read the files live (as kill -HUP does)
  eval "$(schedd completion bash)"           shell completion
  schedd SUBCOMMAND --help                   each subcommand's options

exit codes: 0 ok, 1 the daemon unreachable or a file unreadable (OSError), 2 usage or a
  configuration error (file and key named; a refused reload keeps the old configuration)
"""


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="schedd", description="A batch scheduler for ML teams on a pool of GPU nodes.",
                                 epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the daemon (agents connect on their own)")
    up = sub.add_parser("up", help="run the daemon plus a local pool of node agents (foreground)")
    for p in (serve, up):
        p.add_argument("--config", type=Path, help="schedd.toml (default: the shipped conf/schedd.toml)")
        p.add_argument("--state-dir", help="where the database, socket and agent state live")
        p.add_argument("--listen", help="HOST:PORT for HTTP (default 127.0.0.1:8330)")
        p.add_argument("-v", "--verbose", action="store_true")
        p.add_argument("--log-format", choices=("text", "json"), default="text",
                       help="json: one JSON object per log line, for a log pipeline")
    up.add_argument("--pool", type=Path, help="pool.toml (default: the shipped conf/pool.toml)")
    serve.add_argument("--pool", type=Path, help='pool.toml; with driver = "kubernetes" the daemon applies and '
                       "watches the agent pods (default: $SCHEDD_POOL; none: agents connect on their own)")
    up.add_argument("--nodes", type=int, help="number of local agents (overrides pool.toml)")
    up.add_argument("--gpus-per-node", type=int, help="GPUs per node, faked where NVML has none")
    up.add_argument("--cpus-per-node", type=int, help="CPUs each node offers (default: this machine's)")
    up.add_argument("--mem-per-node", type=int, help="memory each node offers, MB (default: this machine's)")
    up.add_argument("--allow-root-jobs", action="store_true",
                    help="let root own jobs (allow_root_jobs = true): a trial on your own machine, never a shared one")
    pool = sub.add_parser("pool", help="the node pool").add_subparsers(dest="action", required=True)
    render = pool.add_parser("render", help="print the Kubernetes manifests of a driver = \"kubernetes\" pool (YAML)")
    render.add_argument("--pool", type=Path, help="pool.toml (default: the shipped conf/pool.toml)")
    render.add_argument("--config", type=Path, help="schedd.toml (default: the shipped conf/schedd.toml)")
    token = sub.add_parser("token", help="API tokens for TCP clients and remote agents")
    tsub = token.add_subparsers(dest="action", required=True)
    create = tsub.add_parser("create", help="print a new token for USER (only its hash is stored)")
    create.add_argument("user")
    create.add_argument("--role", choices=("user", "operator", "admin", "agent"), default="user",
                        help="agent: may only connect a node agent (nodeagent --token-file), nothing else")
    create.add_argument("--expires-in", metavar="DURATION", type=duration,
                        help="refuse the token after this long: 90s, 30m, 12h, 7d, 2w (default: never)")
    create.add_argument("--config", type=Path)
    create.add_argument("--state-dir")
    tlist = tsub.add_parser("list", help="the tokens: id (a prefix of the hash), user, role, created")
    tlist.add_argument("--json", action="store_true")
    revoke = tsub.add_parser("revoke", help="revoke a token by id, or every token of --user (at once if schedd runs)")
    revoke.add_argument("id", nargs="?", default="")
    revoke.add_argument("--user", default="")
    for p in (tlist, revoke):
        p.add_argument("--config", type=Path)
        p.add_argument("--state-dir")
    config = sub.add_parser("config", help="the configuration files").add_subparsers(dest="action", required=True)
    check = config.add_parser("check", help="validate schedd.toml, policies.toml (and plugins), pool.toml; print the result")
    check.add_argument("--config", type=Path, help="schedd.toml (default: the shipped conf/schedd.toml)")
    check.add_argument("--policies", type=Path, help="policies.toml (default: the one schedd.toml names)")
    check.add_argument("--pool", type=Path, help="pool.toml (default: the shipped conf/pool.toml)")
    reload = sub.add_parser("reload", help="make the running daemon re-read its configuration (as SIGHUP does)")
    reload.add_argument("--url", help="the daemon (default: SCHEDD_URL, else the local socket)")
    completion = sub.add_parser("completion", help="print a shell completion script: eval \"$(schedd completion bash)\"")
    completion.add_argument("shell", choices=("bash", "zsh"))
    return ap


def _settings(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from schedd.config import load_settings

    settings = load_settings(args.config)
    if getattr(args, "state_dir", None):
        settings.state_dir = str(Path(args.state_dir).expanduser().resolve())
    if getattr(args, "listen", None):
        settings.listen = args.listen
    return settings


def _up(args: argparse.Namespace) -> None:
    from schedd.pool.local import local_agents
    from schedd.daemon.server import Daemon, run
    from schedd.config import load_pool

    settings = _settings(args)
    settings.allow_root_jobs = settings.allow_root_jobs or args.allow_root_jobs
    pool = load_pool(args.pool)
    agents = []
    for g in pool.groups:
        count = args.nodes if args.nodes is not None else g.count
        gpus = args.gpus_per_node if args.gpus_per_node is not None else g.fake_gpus
        cpus = args.cpus_per_node or g.cpus
        mem = args.mem_per_node or g.mem_mb
        agents += local_agents(count, gpus, cpus, mem, prefix=g.name, switch_user=g.switch_user,
                               extra_args=tuple(g.agent_args()))
        if args.nodes is not None:
            break  # --nodes describes the whole pool
    # pool.toml as read: a reload applies a group's changed count (see schedd.daemon.reload)
    run(_sourced(args, Daemon(settings, agents, pool=pool)))


def _serve(args: argparse.Namespace) -> None:
    import os

    from schedd.config import load_pool
    from schedd.daemon.server import Daemon, run

    path = args.pool or (Path(os.environ["SCHEDD_POOL"]) if os.environ.get("SCHEDD_POOL") else None)
    run(_sourced(args, Daemon(_settings(args), pool=load_pool(path) if path else None)))


def _token(args: argparse.Namespace) -> None:
    from schedd.api.auth import TokenBook
    from schedd.store import Store

    settings = _settings(args)
    if args.action != "create":
        from schedd import operate

        act = operate.token_list if args.action == "list" else operate.token_revoke
        raise SystemExit(act(args, settings.state_dir))
    now = time.time()
    expires = now + args.expires_in if args.expires_in is not None else None
    Path(settings.state_dir).mkdir(parents=True, exist_ok=True)
    store = Store(Path(settings.state_dir) / "schedd.db")
    store.start()
    token = TokenBook(store).create(args.user, args.role, now, expires)
    store.close()
    print(token)


def _sourced(args: argparse.Namespace, daemon: Daemon) -> Daemon:
    """The daemon, told where its configuration came from: SIGHUP and ``schedd reload`` re-read it."""
    from schedd.daemon.reload import Sources

    daemon.sources = Sources(args.config, getattr(args, "pool", None), getattr(args, "state_dir", None),
                             getattr(args, "listen", None))
    return daemon


def _operate(args: argparse.Namespace) -> int:
    from schedd import operate

    if args.command == "config":
        operate.config_check(args)
        return 0
    if args.command == "reload":
        return operate.reload(args)
    from schedd import completion

    sys.stdout.write((completion.bash if args.shell == "bash" else completion.zsh)(_parser()))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure(getattr(args, "log_format", "text"), logging.DEBUG if getattr(args, "verbose", False) else logging.INFO)
    try:
        if args.command == "up":
            _up(args)
        elif args.command == "serve":
            _serve(args)
        elif args.command in ("config", "reload", "completion"):
            return _operate(args)
        elif args.command == "pool":
            from schedd.pool.kube.manifests import render_files

            sys.stdout.write(render_files(args.pool, args.config))
        else:
            _token(args)
    except ModuleNotFoundError as e:  # `pip install schedd` is the client alone
        print(f"schedd: {e.name} is not installed: the daemon needs pip install 'schedd[server]'", file=sys.stderr)
        return 1
    except ConfigError as e:
        print(f"schedd: configuration error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"schedd: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
