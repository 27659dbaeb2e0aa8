"""Typed application keys: what every handler reads from ``request.app``."""

from __future__ import annotations

from aiohttp import web

from schedd.api.auth import TokenBook
from schedd.daemon.loop import Loop
from schedd.daemon.state import State

__all__ = ["LOOP", "STATE", "TOKENS"]

STATE = web.AppKey("state", State)
LOOP = web.AppKey("loop", Loop)
TOKENS = web.AppKey("tokens", TokenBook)
