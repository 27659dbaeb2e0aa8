"""The operator's subcommands of ``schedd``: ``config check``, ``reload``, ``token list|revoke``.

``config check`` reads the three files exactly as ``schedd serve`` would (the
same loaders, plugins imported and built), prints what it would run with, and
lets :class:`~schedd.errors.ConfigError` reach ``main`` (exit 2, the file and
key named). ``reload`` and a revoke of a running daemon's token go through
the daemon's HTTP API (``schedd.api.admin``), so they take effect at once and
an error comes back to the terminal; ``token list`` and a revoke with the
daemon down read and write the store directly, as ``token create`` does.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["config_check", "duration", "reload", "token_list", "token_revoke"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: The longest lifetime ``--expires-in`` takes: ten years (a finite, storable time).
_MAX_S = 10 * 365 * 86400


def duration(text: str) -> float:
    """``90s``, ``30m``, ``12h``, ``7d``, ``2w`` or plain seconds, as seconds;
    an argparse type, so a bad value is a usage error naming it."""
    raw = text.strip().lower()
    unit = _UNITS.get(raw[-1:], 0)
    number = raw[:-1] if unit else raw
    try:
        value = float(number) * (unit or 1)
    except ValueError:
        value = -1.0
    if not 0 < value <= _MAX_S:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive duration up to 10 years, "
                                         "such as 90s, 30m, 12h, 7d or 2w")
    return value


def config_check(args: argparse.Namespace) -> None:
    """Validate schedd.toml, policies.toml (with plugins) and pool.toml; print the result."""
    from schedd import plugins
    from schedd.config import load_pipeline, load_pool, load_settings

    settings = load_settings(args.config)
    policies_path = args.policies or settings.policies_path()
    pipeline = load_pipeline(policies_path)
    pool = load_pool(args.pool)
    used = plugins.installed()
    out = sys.stdout.write
    out(f"schedd.toml   {args.config or 'shipped'}: server {settings.server_name}, listen {settings.listen}, "
        f"state_dir {settings.state_dir}, default queue {settings.default_queue}\n")
    for name, q in settings.queues.items():
        limits = [f"{k}={v}" for k, v in (("max_walltime_s", q.max_walltime_s), ("max_running_per_user", q.max_running_per_user),
                                         ("max_gpus_per_user", q.max_gpus_per_user)) if v is not None]
        out(f"  queue {name}: priority {q.priority}, tier {q.tier}, chunk {q.default_chunk.ncpus} cpu "
            f"{q.default_chunk.ngpus} gpu{', ' + ', '.join(limits) if limits else ''}\n")
    for name in settings.qos:
        out(f"  qos {name}\n")
    out(f"policies.toml {policies_path}: actions {', '.join(pipeline.actions)}\n")
    for name, policy in pipeline.policies.items():
        cls = type(policy)
        origin = "shipped" if cls.__module__.startswith("policies.") else \
            f"plugin {used.get(name) or f'{cls.__module__}:{cls.__qualname__}'}"
        out(f"  {name}: {origin}\n")
    out(f"pool.toml     {args.pool or 'shipped'}: driver {pool.driver}, "
        + ", ".join(f"{g.name} {g.count}x({g.cpus} cpu, {g.gpus or g.fake_gpus} gpu)" for g in pool.groups) + "\n")
    out("ok\n")


def _client(url: str | None) -> Any:
    from schedd.cli.client import Client, default_url

    return Client(url or default_url())


def reload(args: argparse.Namespace) -> int:
    """Ask the running daemon to reload; print what changed, or why it refused."""
    from schedd.cli.client import ApiError, Unreachable

    try:
        answer = _client(args.url).call("POST", "/api/v1/admin/reload", {})
    except ApiError as e:
        print(f"schedd reload: {e.message}", file=sys.stderr)
        return 2 if e.code == "config_error" else 1
    except Unreachable as e:
        print(f"schedd reload: {e}", file=sys.stderr)
        return 1
    for line in answer["changes"]:
        print(line)
    return 0


def _store(settings_state_dir: str) -> Any:
    from schedd.store import Store

    Path(settings_state_dir).mkdir(parents=True, exist_ok=True)
    store = Store(Path(settings_state_dir) / "schedd.db")
    store.start()
    return store


def token_list(args: argparse.Namespace, state_dir: str) -> int:
    from schedd.api.admin import token_view

    store = _store(state_dir)
    try:
        rows = sorted(store.tokens(), key=lambda r: (r.user, r.created))
    finally:
        store.close()
    views = [token_view(r) for r in rows]
    if args.json:
        print(json.dumps(views, indent=1))
        return 0
    print(f"{'ID':<13} {'USER':<16} {'ROLE':<9} {'CREATED':<21} EXPIRES")
    for v in views:
        print(f"{v['id']:<13} {v['user']:<16} {v['role']:<9} {v['created']:<21} {v['expires'] or 'never'}")
    return 0


def token_revoke(args: argparse.Namespace, state_dir: str) -> int:
    """Through the daemon's socket when it runs (effective at once), else in the store."""
    from schedd.api.admin import select_tokens, token_view
    from schedd.cli.client import ApiError, Unreachable
    from schedd.errors import InputError

    sock = Path(state_dir) / "schedd.sock"
    if sock.exists():
        try:
            path = f"/api/v1/admin/tokens/{args.id or '-'}" + (f"?user={args.user}" if args.user else "")
            gone = _client(f"unix://{sock}").call("DELETE", path)["revoked"]
        except ApiError as e:
            print(f"schedd token revoke: {e.message}", file=sys.stderr)
            return 1
        except Unreachable:
            gone = None  # a stale socket: the daemon is down
        if gone is not None:
            for v in gone:
                print(f"revoked {v['id']} ({v['user']}, {v['role']})")
            return 0
    store = _store(state_dir)
    try:
        try:
            rows = select_tokens(store.tokens(), args.id or "", args.user or "")
        except InputError as e:
            print(f"schedd token revoke: {e}", file=sys.stderr)
            return 1
        for row in rows:
            store.delete_token(row.hash)
    finally:
        store.close()  # commits what was queued
    if not rows:
        print("schedd token revoke: no such token", file=sys.stderr)
        return 1
    for v in map(token_view, rows):
        print(f"revoked {v['id']} ({v['user']}, {v['role']})")
    return 0
