"""The server's ASGI middleware (body size, requests in progress, Host check), its access-log redaction, and a
uvicorn server in a background thread for tests and notebooks."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets 413 before any endpoint reads it.

    A declared Content-Length over the limit is refused without keeping a byte of the body: the rest is read and
    dropped (up to ``drain_factor`` times the limit, at least 256 MB) before answering, so that the client sees the
    413 instead of a connection reset.
    """

    def __init__(self, app: Any, max_bytes: int, drain_factor: int = 64):
        self.app, self.max_bytes, self.drain_bytes = app, max_bytes, max(max_bytes * drain_factor, 256 << 20)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and not declared.isdigit():
            await _send_error(send, 400, "invalid Content-Length header")
            return
        if declared is not None and int(declared) > self.max_bytes:
            if int(declared) <= self.drain_bytes:
                await _drain(receive, self.drain_bytes)
            await _send_error(send, 413, self._message(int(declared)))
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                if more:
                    size += await _drain(receive, self.drain_bytes - size)
                await _send_error(send, 413, self._message(size))
                return
            if not more:
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _message(self, size: int) -> str:
        return f"request body of {size} bytes is over the limit of {self.max_bytes} bytes (max_body_bytes)"


class RequestBudget:
    """ASGI middleware: at most ``limit`` requests in progress, the rest 503; ``/health`` always answers.
    Counting requests rather than sockets keeps idle connections from starving the server."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit, self.active = app, limit, 0

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope.get("path") == "/health":
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            await _send_error(send, 503, f"the server is busy ({self.limit} requests in progress); try again shortly")
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


class HostCheck:
    """ASGI middleware: a Host header not among the served names gets 400 (a DNS-rebinding page cannot reach us)."""

    def __init__(self, app: Any, allowed: tuple[str, ...]):
        self.app, self.allowed = app, {h.strip().lower().strip("[]") for h in allowed}

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and "*" not in self.allowed:
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if _host_name(host) not in self.allowed:
                await _send_error(send, 400, f"Host {host!r} is not served here (twostage serve --allowed-hosts)")
                return
        await self.app(scope, receive, send)


def _host_name(host: str) -> str:
    """The name of a Host header without its port: ``[::1]:8000`` → ``::1``, ``example.org:80`` → ``example.org``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class _RedactQuery(logging.Filter):
    """Drops query strings from uvicorn's access log: a token sent as ``?token=...`` must not land in a log file."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0] + "?[query redacted]", *args[3:])
        return True


def redact_access_log() -> None:
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _RedactQuery) for f in access.filters):
        access.addFilter(_RedactQuery())


async def _drain(receive: Callable, budget: int) -> int:
    """Read and drop the rest of a request body, at most ``budget`` bytes; returns the bytes read."""
    read = 0
    while read <= budget:
        message = await receive()
        if message["type"] != "http.request":
            break
        read += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return read


async def _send_error(send: Callable, status: int, error: str) -> None:
    body = json.dumps({"error": error, "detail": None}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ServerThread:
    """Run an app on uvicorn in a background thread (tests, notebooks); ``port=0`` picks a free port."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import socket

        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.app, self.host, self.port = app, host, self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
