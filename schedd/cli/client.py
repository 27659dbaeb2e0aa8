"""A stdlib-only client for the schedd REST API (no aiohttp, no msgspec).

Commands are short-lived processes that users run in loops, so this module
imports only what ``http.client`` and ``json`` need. The server is found from
``SCHEDD_URL`` (``http://HOST:PORT`` or ``unix:///path/schedd.sock``); without
it, the default state directory's socket, then ``http://127.0.0.1:8330``.
Tokens come from ``SCHEDD_TOKEN`` (needed over TCP only).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from typing import Any

__all__ = ["ApiError", "Client", "Unreachable", "default_url"]


class ApiError(Exception):
    """The server answered with ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Unreachable(Exception):
    """No server answered at the URL."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.path)
        self.sock = sock


def default_url() -> str:
    url = os.environ.get("SCHEDD_URL")
    if url:
        return url
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    sock = os.path.join(base, "schedd", "schedd.sock")
    return f"unix://{sock}" if os.path.exists(sock) else "http://127.0.0.1:8330"


class Client:
    """One keep-alive connection; ``call`` returns the decoded JSON body."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 60.0) -> None:
        self.url = url or default_url()
        self.token = token if token is not None else os.environ.get("SCHEDD_TOKEN")
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.url.startswith("unix://"):
                self._conn = _UnixConnection(self.url[len("unix://"):], self.timeout)
            elif self.url.startswith("http://"):
                hostport = self.url[len("http://"):].rstrip("/")
                self._conn = http.client.HTTPConnection(hostport, timeout=self.timeout)
            else:
                raise Unreachable(f"SCHEDD_URL {self.url!r}: expected http://HOST:PORT or unix:///path")
        return self._conn

    def call(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        for attempt in (0, 1):  # a keep-alive connection the server closed: retry once
            conn = self._connect()
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                break
            except (ConnectionError, http.client.RemoteDisconnected, BrokenPipeError) as e:
                self.close()
                if attempt:
                    raise Unreachable(f"cannot reach schedd at {self.url}: {e}") from e
            except (FileNotFoundError, OSError) as e:
                self.close()
                raise Unreachable(f"cannot reach schedd at {self.url}: {e}") from e
        payload = json.loads(raw) if raw else None
        if resp.status >= 400:
            err = (payload or {}).get("error", {}) if isinstance(payload, dict) else {}
            raise ApiError(resp.status, err.get("code", "error"), err.get("message", raw.decode(errors="replace")))
        return payload

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
