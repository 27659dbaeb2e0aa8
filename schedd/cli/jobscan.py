"""Read only qstat's columns out of a ``GET /api/v1/jobs`` body, without decoding all of it.

With 10,000 jobs the body is ~8 MB and ``json.loads`` alone costs more than
starting the interpreter; the default layout needs six fields per job. The
server encodes each JobRecord with msgspec, fields in declaration order and no
whitespace, so a record reads::

    {"id":"17","number":17,"order":17,"name":"..","owner":"..","account":"..",
     "queue":"..","chunks":[..],...,"state":"held",...,"env":{..},...,
     "start_time":null,...,"used":{"cpu_s":0.0,...}}

:func:`scan_rows` walks that shape with ``bytes.index``, takes ``id``,
``name``, ``owner``, ``queue``, ``state``, ``start_time`` and ``used.cpu_s``,
and makes the default layout's rows of them directly (no dict per job).
It is sound because user text only appears inside JSON strings, where a quote
is always escaped, so a key pattern such as ``,"state":"`` cannot match inside
a value; the one object with user-chosen keys, ``env``, is skipped string by
string before any key after it is searched. Anything unexpected (a field
order that changed, a key missing, an escape in a header field it does not
handle) returns None and the caller decodes the body with ``json.loads``.
``tests/cli/test_jobscan.py`` pins the JobRecord field order this relies on.

:func:`get_raw` fetches such a body on a connection of its own (the request
says ``Connection: close`` and the body is read to the end in 1 MB pieces),
importing nothing but ``_socket``: qstat's default layout needs neither the
client nor ``common``. It answers None on anything but a plain 200, and the
caller then goes through ``Client.call``, which reports errors the usual way.

Cost: O(body) in C (``bytes.index``) plus ~12 Python operations per job.
"""

from __future__ import annotations

import json

TYPE_CHECKING = False  # typing is not imported on the command path
if TYPE_CHECKING:
    from schedd.cli.qstat_format import Row

__all__ = ["get_raw", "scan_rows", "server_url"]


def server_url() -> str:
    """Where the server is: the rule of ``schedd.cli.client.default_url``, without importing the client."""
    import os

    url = os.environ.get("SCHEDD_URL")
    if url:
        return url
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    sock = os.path.join(base, "schedd", "schedd.sock")
    return f"unix://{sock}" if os.path.exists(sock) else "http://127.0.0.1:8330"


def get_raw(url: str, token: str | None, path: str, timeout: float = 60.0) -> bytes | None:
    """GET ``path`` from the server at ``url``: the undecoded 200 body, else None."""
    import _socket

    try:
        if url.startswith("unix://"):
            sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
            host = "localhost"
            sock.settimeout(timeout)
            try:
                sock.connect(url[len("unix://"):])
            except OSError:
                sock.close()
                return None
        elif url.startswith("http://"):
            host = url[len("http://"):].split("/", 1)[0]
            name, _, port = host.rpartition(":")
            if not name or not port.isdigit():
                name, port = host, "80"
            family, kind, proto, _, addr = _socket.getaddrinfo(name.strip("[]"), int(port), 0,
                                                               _socket.SOCK_STREAM)[0]
            sock = _socket.socket(family, kind, proto)
            sock.settimeout(timeout)
            try:
                sock.connect(addr)
            except OSError:
                sock.close()
                return None
        else:
            return None
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nConnection: close\r\n{auth}\r\n"
        try:
            sock.sendall(request.encode())
            pieces = []
            while chunk := sock.recv(1 << 20):
                pieces.append(chunk)
        finally:
            sock.close()
    except OSError:
        return None
    data = b"".join(pieces)
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].split(b"\r\n")
    status = lines[0].split(None, 2)
    if len(status) < 2 or status[1] != b"200":
        return None
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
    body = data[end + 4:]
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        return None
    length = headers.get(b"content-length")
    if length is not None and (not length.isdigit() or int(length) != len(body)):
        return None
    return body


def _string_end(b: bytes, i: int) -> int:
    """The index of the quote closing the JSON string whose first character is at ``i``."""
    j = b.index(b'"', i)
    while b[j - 1] == 92:  # a backslash: escaped unless it is itself escaped
        n = 1
        while b[j - 1 - n] == 92:
            n += 1
        if n % 2 == 0:
            break
        j = b.index(b'"', j + 1)
    return j


def _skip_env(b: bytes, i: int) -> int | None:
    """``i`` is at the ``{`` of env (a string -> string map): the index after its ``}``."""
    if b[i + 1] == 125:  # {}
        return i + 2
    i += 1
    while True:
        if b[i] != 34:
            return None
        i = _string_end(b, i + 1) + 1
        if b[i] != 58 or b[i + 1] != 34:  # :"
            return None
        i = _string_end(b, i + 2) + 1
        if b[i] == 125:
            return i + 1
        if b[i] != 44:
            return None
        i += 1


def _header_escaped(b: bytes, pos: int, end: int) -> tuple[str, str, str, str] | None:
    """id, name, owner, queue when one of them holds an escape: let json decode those few fields."""
    try:
        head = json.loads(b[pos:end] + b"}")
    except ValueError:
        return None
    return head["id"], head["name"], head["owner"], head["queue"]


_LETTERS = {b"held": "H", b"queued": "Q", b"waiting": "W", b"running": "R", b"exiting": "E", b"finished": "F"}


def scan_rows(b: bytes) -> list[Row] | None:
    """The jobs of ``{"jobs":[...]}`` as default-layout rows, or None: then decode fully.

    A row is what ``qstat_format.rows`` makes of a decoded job: (id, name,
    owner, queue, state letter, Time Use).

    >>> scan_rows(b'{"jobs":[]}')
    []
    """
    from schedd.cli.qstat_format import time_use

    if not b.startswith(b'{"jobs":[') or not b.endswith(b"]}"):
        return None
    pos = 9
    out: list[Row] = []
    index, find, append, letters = b.index, b.find, out.append, _LETTERS
    try:
        while b[pos] == 123:  # {
            chunks = index(b',"chunks":', pos)
            if find(b"\\", pos, chunks) < 0:
                # {"id":"17","number":17,"order":17,"name":"n","owner":"o","account":"a","queue":"q"
                parts = b[pos:chunks].decode().split('"')
                if len(parts) != 25 or parts[1] != "id" or parts[9] != "name" or parts[13] != "owner" \
                        or parts[21] != "queue":
                    return None
                jid, name, owner, queue = parts[3], parts[11], parts[15], parts[23]
            else:
                head = _header_escaped(b, pos, chunks)
                if head is None:
                    return None
                jid, name, owner, queue = head
            k = index(b',"state":"', chunks) + 10
            j = index(b'"', k)
            st = letters[b[k:j]]
            e = index(b',"env":{', j) + 7
            if b[e + 1] != 125:  # not {}: skip the map string by string
                skipped = _skip_env(b, e)
                if skipped is None:
                    return None
                e = skipped
            k = index(b',"start_time":', e) + 14
            j = index(b",", k)
            started = b[k:j] != b"null"
            k = index(b',"used":{"cpu_s":', j) + 17
            j = index(b",", k)
            cpu = float(b[k:j])
            pos = index(b"}", j) + 1
            if b[pos] != 125:  # the record must end right after used
                return None
            parent = jid[-1] == "]" and jid[-2] == "["
            if st == "R" and parent:
                st = "B"
            elif st == "F" and jid[-1] == "]" and not parent:
                st = "X"
            append((jid, name, owner, queue, st, time_use(cpu) if started and not parent else "0"))
            pos += 1
            if b[pos] == 44:  # ,
                pos += 1
            else:
                break
        return out if b[pos] == 93 and pos == len(b) - 2 else None
    except (ValueError, IndexError, KeyError, UnicodeDecodeError):
        return None
