"""``python -m api``: how many API processes it runs, and that it hands them to uvicorn as an import string."""

from __future__ import annotations

import asyncio
from typing import Any

import fakeredis
import pytest
import uvicorn

import api.__main__ as entry
from api.fast_route import ServiceApp
from api.main import create_app
from api.metrics import request_id
from shared.settings import Settings
from tests.fakes import fake_redis_factory
from tests.stack import free_port, wait_for_port


@pytest.mark.parametrize(("api_workers", "cpus", "processes"), [(1, 8, 1), (3, 1, 3), (0, 2, 2), (0, 64, 4), (0, 1, 1)])
def test_api_workers_zero_means_the_cpus_the_api_may_use_at_most_four(monkeypatch, api_workers, cpus, processes):
    monkeypatch.setattr(entry, "cpu_budget", lambda: cpus)
    assert entry.api_processes(api_workers) == processes


def test_the_entry_point_runs_the_app_factory_with_the_settings_processes(monkeypatch):
    ran: dict[str, Any] = {}
    monkeypatch.setattr(entry.uvicorn, "run", lambda app, **kwargs: ran.update(app=app, **kwargs))
    monkeypatch.setattr(entry, "get_settings", lambda: Settings(_env_file=None, api_workers=2))
    entry.main(["--host", "0.0.0.0", "--port", "9000"])
    assert ran == {
        "app": "api.main:create_app",
        "factory": True,
        "host": "0.0.0.0",
        "port": 9000,
        "workers": 2,
        "access_log": False,
        "http": entry.OneWriteHttpTools,
    }


def test_request_ids_are_32_hex_digits_and_distinct():
    ids = {request_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_the_short_way_in_is_off_while_fastapis_telemetry_is_on():
    """With tracing on, every request takes the whole way: FastAPI's server span starts the trace."""
    app = create_app(
        Settings(_env_file=None, otel_instrumentation=True), redis_factory=fake_redis_factory(fakeredis.FakeServer())
    )
    assert isinstance(app, ServiceApp) and app._short_way is None
    app = create_app(Settings(_env_file=None), redis_factory=fake_redis_factory(fakeredis.FakeServer()))
    assert app._short_way is not None and ("POST", "/v1/embeddings") in app._short_keys


async def _served(app: Any) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, http=entry.OneWriteHttpTools, log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    await asyncio.to_thread(wait_for_port, port, 10)
    return server, task, port


async def _exchange(port: int, raw: bytes, responses: int = 1) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    data = b""
    while data.count(b"HTTP/1.1 ") < responses or not data.endswith((b"hello", b"\r\n\r\n", b"0\r\n\r\n")):
        chunk = await asyncio.wait_for(reader.read(65536), 5)
        if not chunk:
            break
        data += chunk
    writer.close()
    return data


async def test_one_write_responses_are_whole_streamed_empty_and_kept_alive(monkeypatch):
    """The API's uvicorn protocol writes a response's head with its body: one write a response where uvicorn's
    own makes two; every kind of response still arrives whole, in order, and the connection stays usable."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"hel", "more_body": True})
            await send({"type": "http.response.body", "body": b"lo"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        await send({"type": "http.response.body", "body": b"hello"})

    server, task, port = await _served(app)
    try:
        two = b"GET / HTTP/1.1\r\nhost: x\r\n\r\nGET / HTTP/1.1\r\nhost: x\r\n\r\n"
        both = await _exchange(port, two, responses=2)
        assert both.count(b"HTTP/1.1 200 OK") == 2 and both.count(b"hello") == 2
        head = await _exchange(port, b"HEAD / HTTP/1.1\r\nhost: x\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK") and b"content-length: 5" in head and b"hello" not in head
        streamed = await _exchange(port, b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
        assert b"transfer-encoding: chunked" in streamed and streamed.endswith(b"3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n")
        closed = await _exchange(port, b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        assert closed.startswith(b"HTTP/1.1 200 OK") and closed.endswith(b"hello")
    finally:
        server.should_exit = True
        await task


def test_one_write_cycle_writes_the_head_with_the_body():
    written: list[bytes] = []

    class Transport:
        def write(self, data: bytes) -> None:
            written.append(data)

        def close(self) -> None:
            written.append(b"<closed>")

    head_first = entry._HeadFirst(Transport(), b"HEAD")  # type: ignore[arg-type]
    head_first.write(b"body")
    head_first.write(b"more")
    assert written == [b"HEADbody", b"more"]
    written.clear()
    head_first = entry._HeadFirst(Transport(), b"HEAD")  # type: ignore[arg-type]
    head_first.close()
    assert written == [b"HEAD", b"<closed>"]
