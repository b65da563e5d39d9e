"""The least a queue between an HTTP process and a worker can cost in this stack's parts: the floor under the
pipeline's CPU a request (``bench.run``, pipeline section).

The same parts as the project (uvicorn with plain ASGI, redis-py's asyncio client with hiredis, msgpack, orjson, a
Redis list each way) doing only the trip: the HTTP process pushes each request's message onto one list (every
request that arrived while the last push was on its way goes in one ``LPUSH``), a reader takes replies off its own
list in bulk (``BLMPOP`` with a count) and resumes each request; the worker takes up to 256 messages at once and
pushes a constant 384-float ``data`` array back for each (one ``LPUSH`` per reply list). No validation, admission,
leases, retries, deadlines, metrics or model: what is left of the project's pipeline without its guarantees.

    .venv/bin/python -m bench.queue_floor api REDIS_URL PORT
    .venv/bin/python -m bench.queue_floor worker REDIS_URL
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import orjson
import uvicorn
from redis.asyncio import Redis

from tests.stack import Stack, python_env, spawn, wait_for_port

QUEUE = "floor:queue"
_DATA = orjson.dumps(
    [{"object": "embedding", "index": 0, "embedding": np.full(384, 1 / np.sqrt(384), dtype=np.float32)}],
    option=orjson.OPT_SERIALIZE_NUMPY,
)


class FloorApi:
    """The HTTP process: plain ASGI, one push per event-loop turn, one bulk reader of its reply list."""

    def __init__(self, redis_url: str) -> None:
        self._redis_url = redis_url
        self._ids = itertools.count()
        self._waiting: dict[int, asyncio.Future[bytes]] = {}
        self._outgoing: list[bytes] = []
        self._pushing = False
        self._reply_list = f"floor:replies:{id(self)}"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        request = orjson.loads(b"".join(chunks))
        request_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        self._outgoing.append(msgpack.packb([request_id, self._reply_list, request["input"]]))
        if not self._pushing:
            self._pushing = True
            asyncio.get_running_loop().create_task(self._push())
        data = await future
        body = b'{"object":"list","data":%b,"model":%b,"usage":{"prompt_tokens":0,"total_tokens":0}}' % (
            data,
            orjson.dumps(request["model"]),
        )
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _lifespan(self, receive: Any, send: Any) -> None:
        await receive()
        self._redis = Redis.from_url(self._redis_url)
        self._reader_redis = Redis.from_url(self._redis_url)
        reader = asyncio.create_task(self._read())
        await send({"type": "lifespan.startup.complete"})
        await receive()
        reader.cancel()
        await send({"type": "lifespan.shutdown.complete"})

    async def _push(self) -> None:
        while self._outgoing:
            batch, self._outgoing = self._outgoing, []
            await self._redis.lpush(QUEUE, *batch)
        self._pushing = False

    async def _read(self) -> None:
        while True:
            popped = await self._reader_redis.blmpop(1, 1, self._reply_list, direction="RIGHT", count=1024)
            for reply in popped[1] if popped else ():
                request_id, data = msgpack.unpackb(reply)
                future = self._waiting.pop(request_id, None)
                if future is not None and not future.done():
                    future.set_result(data)


async def work(redis_url: str) -> None:
    """The worker: up to 256 messages a pop, a constant ``data`` array pushed back for each."""
    redis = Redis.from_url(redis_url)
    while True:
        popped = await redis.blmpop(1, 1, QUEUE, direction="RIGHT", count=256)
        if not popped:
            continue
        replies: dict[bytes, list[bytes]] = {}
        for message in popped[1]:
            request_id, reply_to, _texts = msgpack.unpackb(message)
            replies.setdefault(reply_to, []).append(msgpack.packb([request_id, _DATA]))
        async with redis.pipeline(transaction=False) as pipe:
            for reply_to, messages in replies.items():
                pipe.lpush(reply_to, *messages)
            await pipe.execute()


@contextlib.contextmanager
def running_floor(log_dir: Path) -> Iterator[Stack]:
    """Redis, the floor's worker and its HTTP process, as a ``Stack`` (``api``, ``workers``, ``redis``)."""
    stack = Stack(log_dir, {})
    try:
        stack.start_redis()
        env = python_env(stack.redis_url)
        module = [sys.executable, "-m", "bench.queue_floor"]
        stack.workers.append(spawn([*module, "worker", stack.redis_url], log_dir / "floor-worker.log", env))
        stack.api = spawn([*module, "api", stack.redis_url, str(stack.api_port)], log_dir / "floor-api.log", env)
        wait_for_port(stack.api_port, 60)
        yield stack
    finally:
        stack.stop_all()


def main() -> None:
    role, redis_url = sys.argv[1], sys.argv[2]
    if role == "api":
        uvicorn.run(FloorApi(redis_url), host="127.0.0.1", port=int(sys.argv[3]), log_level="warning", access_log=False)
    else:
        asyncio.run(work(redis_url))


if __name__ == "__main__":
    main()
