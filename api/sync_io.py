"""The I/O every synchronous route shares (embeddings, rerank, their Cohere and TEI shapes), as plain ASGI:
the body read, the wait for the worker's reply that gives up when the client leaves, and the JSON answer with the
reply's timing headers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

from starlette.types import Receive, Send

from shared.errors import ClientGone, ServiceError
from shared.protocol import TaskReply

#: seconds into a request before a client's leaving is watched for
WATCH_AFTER_S = 0.05


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def reply_of(receive: Receive, work: Awaitable[TaskReply]) -> TaskReply:
    """The worker's successful reply; its error raised as a ServiceError. If the client goes away first, ``work`` is
    cancelled (withdrawing its queued job) and ClientGone raised.

    The watch starts ``WATCH_AFTER_S`` in: most requests are answered sooner, and a watcher task costs more,
    on every request, than catching an early leaver at once would save (its job is usually running by then).
    """
    loop = asyncio.get_running_loop()
    handler = asyncio.current_task()
    assert handler is not None
    watcher: asyncio.Task[None] | None = None

    def watch() -> None:
        nonlocal watcher
        watcher = loop.create_task(_disconnected(receive))
        watcher.add_done_callback(lambda done: done.cancelled() or handler.cancel())

    timer = loop.call_later(WATCH_AFTER_S, watch)
    try:
        reply = await work
    except asyncio.CancelledError:
        if watcher is not None and watcher.done() and not watcher.cancelled() and handler.uncancel() == 0:
            raise ClientGone from None
        raise
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()
    if reply.error is not None:
        raise ServiceError(reply.error.kind, reply.error.message, reply.error.param)
    return reply


async def send_json(send: Send, body: bytes, reply: TaskReply, started: float) -> None:
    """A 200 with ``body`` (JSON), and headers saying where the request's time went (``started``: perf_counter)."""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"x-queue-time-ms", b"%.1f" % reply.queue_ms),
        (b"x-inference-time-ms", b"%.1f" % reply.inference_ms),
        (b"x-total-time-ms", b"%.1f" % ((time.perf_counter() - started) * 1000)),
        (b"x-batch-size", b"%d" % reply.batch_size),
        (b"x-batch-requests", b"%d" % reply.batch_requests),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
