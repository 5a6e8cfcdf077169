"""Raw sockets for tests that behave badly on purpose (slow, idle, half-sent), always closed."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager


def address(base_url: str) -> tuple[str, int]:
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


@contextmanager
def open_sockets(base_url: str, count: int, timeout: float = 5.0) -> Iterator[list[socket.socket]]:
    """``count`` connected sockets, all closed on exit."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(address(base_url), timeout=timeout)
            sockets.append(sock)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


@contextmanager
def unaccepting_port() -> Iterator[int]:
    """A loopback port whose accept queue is full: connection attempts to it hang unanswered until closed."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            try:
                filler.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fillers.append(filler)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def closed_by_server(sock: socket.socket, wait: float = 0.0) -> bool:
    """True when the server has closed ``sock`` (EOF or reset), possibly after sending a response."""
    sock.settimeout(wait if wait > 0 else 0.001)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (TimeoutError, BlockingIOError):
        return False
    except (ConnectionResetError, BrokenPipeError):
        return True


def read_response(sock: socket.socket, timeout: float = 30.0) -> tuple[int, dict[str, str], dict | str]:
    """One HTTP/1.1 response with a Content-Length body (as our servers send)."""
    sock.settimeout(timeout)
    raw = b""
    while b"\r\n\r\n" not in raw:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"closed before a response: {raw!r}")
        raw += data
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        data = sock.recv(65536)
        if not data:
            break
        rest += data
    body = rest[:length]
    try:
        parsed: dict | str = json.loads(body)
    except ValueError:
        parsed = body.decode(errors="replace")
    return int(lines[0].split(" ")[1]), headers, parsed


def request_bytes(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
