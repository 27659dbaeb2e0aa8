"""A stdlib-only client for the schedd REST API (no aiohttp, no msgspec).

Commands are short-lived processes that users run in loops, so this module
speaks HTTP/1.1 over a plain socket itself: ``http.client`` alone would cost
about as much as the interpreter's own start-up (it imports ``email`` and
``ssl``), and even ``socket.py`` costs ~2.5 ms (enum conversions, selectors),
so it uses the C module ``_socket`` that ``socket.py`` wraps; and for the same
reason JSON goes through :mod:`schedd.cli.wire`, not :mod:`json` — imported
by the first request or answer that is JSON: plain ``qstat`` sends none and
gets text (:meth:`Client.text`).
The server is found from ``SCHEDD_URL`` (``http://HOST:PORT`` or
``unix:///path/schedd.sock``); without it, the default state directory's
socket, then ``http://127.0.0.1:8330``. Tokens come from ``SCHEDD_TOKEN``
(needed over TCP only).

::

    Exception
    ├── ApiError      the server answered 4xx/5xx: status, code, message
    └── Unreachable   nothing (sane) answered at the URL
"""

import _socket
import os

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy reads this as True
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any

__all__ = ["ApiError", "Client", "Unreachable", "default_url"]

_MAX_LINE = 65536
_MAX_HEADERS = 100
_RECV = 65536


class ApiError(Exception):
    """The server answered with ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Unreachable(Exception):
    """No server answered at the URL."""


class _Closed(Exception):
    """A kept-alive connection was closed by the server before it answered."""


def default_url() -> str:
    url = os.environ.get("SCHEDD_URL")
    if url:
        return url
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    sock = os.path.join(base, "schedd", "schedd.sock")
    return f"unix://{sock}" if os.path.exists(sock) else "http://127.0.0.1:8330"


def _wire() -> "ModuleType":
    from schedd.cli import wire

    return wire


def _tls(raw: _socket.socket, host: str) -> "Any":
    """``raw`` wrapped in TLS, the server's certificate verified against
    ``SCHEDD_CA`` (a PEM file) or the system's CAs. ``ssl`` is imported only
    here: it costs ~10 ms that plain-HTTP and Unix-socket commands never pay."""
    import socket
    import ssl

    ctx = ssl.create_default_context(cafile=os.environ.get("SCHEDD_CA") or None)
    sock = socket.socket(raw.family, raw.type, raw.proto, fileno=raw.detach())
    try:
        return ctx.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise


class Client:
    """One keep-alive connection; ``call`` returns the decoded JSON body."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 60.0) -> None:
        self.url = url or default_url()
        self.token = token if token is not None else os.environ.get("SCHEDD_TOKEN")
        self.timeout = timeout
        self._sock: _socket.socket | None = None
        self._buf = bytearray()  # received, not yet consumed
        scheme = next((s for s in ("http://", "https://") if self.url.startswith(s)), "")
        self._host = self.url[len(scheme):].split("/", 1)[0] if scheme else "localhost"
        self._used = False  # the connection has carried a request already

    def _connect(self) -> _socket.socket:
        if self._sock is None:
            if self.url.startswith("unix://"):
                sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
                sock.settimeout(self.timeout)
                try:
                    sock.connect(self.url[len("unix://"):])
                except BaseException:
                    sock.close()
                    raise
            elif self.url.startswith(("http://", "https://")):
                tls = self.url.startswith("https://")
                host, _, port = self._host.rpartition(":")
                if not host or not port.isdigit():
                    host, port = self._host, "443" if tls else "80"
                sock = self._tcp(host.strip("[]"), int(port))
                if tls:
                    sock = _tls(sock, host.strip("[]"))
            else:
                raise Unreachable(f"SCHEDD_URL {self.url!r}: expected http(s)://HOST:PORT or unix:///path")
            self._sock, self._used = sock, False
            self._buf.clear()
        return self._sock

    def _tcp(self, host: str, port: int) -> _socket.socket:
        """socket.create_connection, without socket.py: every address in turn.
        An ASCII host goes to getaddrinfo as bytes: given a str, it imports the
        ``idna`` codec (with ``stringprep`` and ``unicodedata``) to encode it."""
        error: OSError = OSError(f"no address for {host}")
        name: str | bytes = host.encode() if host.isascii() else host
        for family, kind, proto, _, addr in _socket.getaddrinfo(name, port, 0, _socket.SOCK_STREAM):
            sock = _socket.socket(family, kind, proto)
            try:
                sock.settimeout(self.timeout)
                sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
                sock.connect(addr)
                return sock
            except OSError as e:
                sock.close()
                error = e
        raise error

    def pages(self, path: str) -> "Any":
        """``GET path`` and every further page its answers point to (``next``):
        the answer with all their ``jobs`` together. The server pages history
        (``finished=1``) so that neither it nor one answer holds all of it."""
        answer = self.call("GET", path)
        jobs = list(answer.get("jobs", []))
        while answer.get("next") is not None:
            answer = self.call("GET", f"{path}{'&' if '?' in path else '?'}after={answer['next']}")
            jobs += answer.get("jobs", [])
        answer["jobs"] = jobs
        answer.pop("next", None)
        return answer

    def call(self, method: str, path: str, body: "Any" = None) -> "Any":
        status, _, raw = self._exchange(method, path, body, "application/json")
        return self._payload(status, raw)

    def text(self, path: str) -> "bytes | bytearray | Any":
        """``GET path`` asking for ``text/plain`` (a table the server prints):
        the body as sent, to be written as it is; or the decoded JSON the
        server answered instead (an older server, or a listing it pages)."""
        status, kind, raw = self._exchange("GET", path, None, "text/plain")
        if status < 400 and kind.startswith(b"text/plain"):
            return raw
        return self._payload(status, raw)

    def _exchange(self, method: str, path: str, body: "Any", accept: str) -> tuple[int, bytes, bytes | bytearray]:
        """Send one request, read its response: (status, content type, body)."""
        data = b"" if body is None else _wire().dumps(body)
        head = [f"{method} {path} HTTP/1.1", f"Host: {self._host}", f"Accept: {accept}"]
        if body is not None or method in ("POST", "PUT", "PATCH"):
            head += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
        if self.token:
            head.append(f"Authorization: Bearer {self.token}")
        request = ("\r\n".join(head) + "\r\n\r\n").encode() + data
        for attempt in (0, 1):  # a keep-alive connection the server closed: retry once
            reused = self._sock is not None and self._used
            try:
                sock = self._connect()
                self._used = True
                sock.sendall(request)
                return self._response()
            except (_Closed, BrokenPipeError, ConnectionResetError) as e:
                self.close()
                if attempt or not reused:
                    raise Unreachable(f"cannot reach schedd at {self.url}: {e or 'connection closed'}") from e
            except OSError as e:
                self.close()
                raise Unreachable(f"cannot reach schedd at {self.url}: {e}") from e
        raise AssertionError("unreachable: the second attempt returns or raises")

    @staticmethod
    def _payload(status: int, raw: bytes | bytearray) -> "Any":
        """The decoded JSON body; ApiError for a 4xx/5xx or an answer that is not JSON."""
        try:
            payload = _wire().loads(raw) if raw else None
        except ValueError:
            payload = None
            if status < 400:
                raise ApiError(status, "bad_response", f"not JSON: {raw[:200].decode(errors='replace')}") from None
        if status >= 400:
            err = payload.get("error", {}) if isinstance(payload, dict) else {}
            err = err if isinstance(err, dict) else {}
            raise ApiError(status, err.get("code", "error"), err.get("message", raw.decode(errors="replace")))
        return payload

    # ------------------------------------------------------------ reading a response

    def _more(self) -> bool:
        """Receive what has arrived (blocking); False at end of stream."""
        assert self._sock is not None
        chunk = self._sock.recv(_RECV)
        self._buf += chunk
        return bool(chunk)

    def _line(self) -> bytes:
        """One line with its ending; b"" at end of stream."""
        start = 0
        while (end := self._buf.find(b"\n", start)) < 0:
            if len(self._buf) > _MAX_LINE:
                raise OSError("response line too long")
            start = len(self._buf)
            if not self._more():
                end = len(self._buf) - 1
                break
        line = bytes(self._buf[:end + 1])
        del self._buf[:end + 1]
        return line

    def _exact(self, n: int) -> bytes | bytearray:
        """The next ``n`` bytes. A body longer than what has arrived is received
        in place, into a buffer of its size (a 10,000-job listing is ~1 MB:
        appended chunk by chunk and copied out, it was copied four times)."""
        have = len(self._buf)
        if have >= n:
            raw = bytes(self._buf[:n])
            del self._buf[:n]
            return raw
        assert self._sock is not None
        body = bytearray(n)
        view = memoryview(body)
        view[:have] = self._buf
        self._buf.clear()
        while have < n:
            got = self._sock.recv_into(view[have:])
            if not got:
                raise OSError(f"the response ended early ({have} of {n} bytes)")
            have += got
        return body

    def _response(self) -> tuple[int, bytes, bytes | bytearray]:
        """Read one response: (status, content type, body). Raises _Closed if nothing came back."""
        line = self._line()
        if not line:
            raise _Closed("connection closed")
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            raise OSError(f"not an HTTP response: {line[:80]!r}")
        status = int(parts[1])
        headers: dict[bytes, bytes] = {}
        for _ in range(_MAX_HEADERS):
            h = self._line()
            if h in (b"\r\n", b"\n", b""):
                break
            key, _, value = h.partition(b":")
            headers[key.strip().lower()] = value.strip()
        else:
            raise OSError("too many response headers")
        raw: bytes | bytearray
        if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            chunks = []
            while size := int(self._line().split(b";", 1)[0].strip() or b"0", 16):
                chunks.append(self._exact(size))
                self._line()
            while self._line() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            raw = b"".join(chunks)
        elif b"content-length" in headers:
            raw = self._exact(int(headers[b"content-length"]))
        else:
            while self._more():
                pass
            raw = bytes(self._buf)
            self._buf.clear()
            headers[b"connection"] = b"close"
        if headers.get(b"connection", b"").lower() == b"close":
            self.close()
        return status, headers.get(b"content-type", b""), raw

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buf.clear()
