"""The stdlib HTTP client the commands share (schedd.cli.client), against a scripted server:
framing (length, chunked, read-to-close), keep-alive reuse and its one retry, error bodies."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from schedd.cli.client import ApiError, Client, Unreachable


class Scripted:
    """A Unix-socket server answering each request with the next canned response;
    ``None`` in the script means: close the connection without answering."""

    def __init__(self, path: Path, script: list[bytes | None]) -> None:
        self.script, self.connections = list(script), 0
        self.requests: list[bytes] = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while self.script:
            conn, _ = self.listener.accept()
            self.connections += 1
            with conn, conn.makefile("rb") as f:
                while self.script:
                    head = b""
                    while not head.endswith(b"\r\n\r\n"):
                        byte = f.read(1)
                        if not byte:
                            break
                        head += byte
                    if not head:
                        break
                    length = [int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")]
                    self.requests.append(head + (f.read(length[0]) if length else b""))
                    answer = self.script.pop(0)
                    if answer is None:
                        break
                    conn.sendall(answer)
                    if b"Connection: close" in answer or b"Content-Length" not in answer and b"chunked" not in answer:
                        break


def response(body: bytes, status: str = "200 OK", extra: str = "") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


@pytest.fixture
def sock(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "s.sock"


def test_lengths_chunks_and_read_to_close(sock: Path) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n5;x=y\r\n: [1]\r\n1\r\n}\r\n0\r\n\r\n"
    until_close = b"HTTP/1.0 200 OK\r\n\r\n{\"closed\": true}"
    server = Scripted(sock, [response(b'{"n": 1}'), chunked, until_close])
    c = Client(f"unix://{sock}", token="t0k")
    assert c.call("GET", "/a") == {"n": 1}
    assert c.call("POST", "/b", {"x": [1, "é"]}) == {"a": [1]}
    assert c.call("DELETE", "/c") == {"closed": True}
    assert server.connections == 1  # one keep-alive connection for all three
    get, post, delete = server.requests
    assert get.startswith(b"GET /a HTTP/1.1\r\n") and b"Authorization: Bearer t0k\r\n" in get
    assert b"Content-Length" not in get and b"Content-Length: 0" not in delete
    assert post.endswith(b'\r\n\r\n{"x": [1, "\\u00e9"]}') and b"Content-Type: application/json" in post
    c.close()


def test_a_body_longer_than_one_receive_then_the_next_answer(sock: Path) -> None:
    """A big body is received in place (the qstat listing of 10,000 jobs, ~1 MB),
    whole, and what follows it on the connection stays for the next answer."""
    big = b'{"text": "' + b"x" * 3_000_000 + b'"}'
    server = Scripted(sock, [response(big) + response(b'{"n": 2}'), None])
    c = Client(f"unix://{sock}")
    assert c.call("GET", "/big") == {"text": "x" * 3_000_000}
    assert c.call("GET", "/two") == {"n": 2}  # already sent, after the big body
    assert server.connections == 1
    c.close()


def test_a_body_cut_short_is_unreachable(sock: Path) -> None:
    Scripted(sock, [response(b'{"text": "' + b"x" * 200_000 + b'"}', extra="Connection: close\r\n")[:150_000]])
    with pytest.raises(Unreachable, match="ended early"):
        Client(f"unix://{sock}").call("GET", "/big")


def test_a_closed_keepalive_connection_is_retried_once(sock: Path) -> None:
    server = Scripted(sock, [response(b"1"), None, response(b"2")])
    c = Client(f"unix://{sock}")
    assert c.call("GET", "/one") == 1
    assert c.call("GET", "/two") == 2  # the server dropped the idle connection: a new one, same request
    assert server.connections == 2 and server.requests[1:] == [server.requests[2]] * 2
    c.close()


def test_a_fresh_connection_closed_without_answer_is_unreachable(sock: Path) -> None:
    Scripted(sock, [None])
    with pytest.raises(Unreachable, match="connection closed"):
        Client(f"unix://{sock}").call("POST", "/jobs", {})


def test_error_bodies(sock: Path) -> None:
    Scripted(sock, [
        response(b'{"error": {"code": "unknown_job", "message": "Unknown Job Id 9"}}', "404 Not Found"),
        response(b"<html>bad gateway</html>", "502 Bad Gateway"),
        response(b"not json"),
    ])
    c = Client(f"unix://{sock}")
    with pytest.raises(ApiError) as e:
        c.call("GET", "/api/v1/jobs/9")
    assert (e.value.status, e.value.code, e.value.message) == (404, "unknown_job", "Unknown Job Id 9")
    with pytest.raises(ApiError) as e:
        c.call("GET", "/x")
    assert (e.value.status, e.value.code, e.value.message) == (502, "error", "<html>bad gateway</html>")
    with pytest.raises(ApiError) as e:
        c.call("GET", "/y")
    assert (e.value.status, e.value.code) == (200, "bad_response")


@pytest.mark.parametrize("url", ["unix:///nonexistent.sock", "http://127.0.0.1:1", "ftp://x"])
def test_unreachable(url: str) -> None:
    with pytest.raises(Unreachable):
        Client(url).call("GET", "/api/v1/jobs")


def test_tcp(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(4096)
            conn.sendall(response(b'{"host": "' + data.split(b"Host: ")[1].split(b"\r\n")[0] + b'"}'))

    threading.Thread(target=serve, daemon=True).start()
    port = listener.getsockname()[1]
    assert Client(f"http://127.0.0.1:{port}").call("GET", "/") == {"host": f"127.0.0.1:{port}"}
    listener.close()


def test_text_is_the_body_as_sent_or_the_json_answered_instead(sock: Path) -> None:
    """``text`` asks for text/plain: the bytes as they came (written to stdout
    as they are); a server that answers JSON instead gets decoded, its errors
    raised as ``call`` raises them."""
    table = "Job id  ...\n1.srv   caf\u00e9\n".encode()
    plain = f"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {len(table)}\r\n\r\n"
    server = Scripted(sock, [plain.encode() + table, response(b'{"text": "x", "ids": "1"}'),
                             response(b'{"error": {"code": "bad_request", "message": "table: no"}}', "400 Bad Request")])
    c = Client(f"unix://{sock}")
    assert c.text("/api/v1/jobs?table=qstat") == table
    assert c.text("/api/v1/jobs?table=qstat") == {"text": "x", "ids": "1"}
    with pytest.raises(ApiError) as e:
        c.text("/api/v1/jobs?table=x")
    assert (e.value.status, e.value.code, e.value.message) == (400, "bad_request", "table: no")
    assert all(b"\r\nAccept: text/plain\r\n" in r for r in server.requests)
    c.close()
