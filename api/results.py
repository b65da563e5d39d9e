"""Results from the workers back to the request that waits for them, with no polling delay.

Each API process owns one reply list in Redis. One task blocks on it (BLMPOP, many results per round trip)
and hands each result to the future of the request that waits for it. A result nobody waits for any more
(the client gave up) is dropped. When Redis comes back from a restart (a new run id), the jobs it held are gone:
their requests get a retryable 503 at once instead of waiting for their deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.errors import ErrorKind, ProtocolError, ServiceError
from shared.protocol import SyncReply, decode_reply

log = logging.getLogger(__name__)

#: seconds one BLMPOP blocks; bounds how long shutdown waits for the listener
BLOCK_S = 1.0
#: results taken per round trip at most
POP_COUNT = 512


class ResultListener:
    def __init__(self, redis: Redis, reply_key: str) -> None:
        self._redis = redis
        self.reply_key = reply_key
        self._waiting: dict[str, asyncio.Future[SyncReply]] = {}
        self._task: asyncio.Task[None] | None = None
        self._run_id: str | None = None

    def expect(self, request_id: str) -> asyncio.Future[SyncReply]:
        future: asyncio.Future[SyncReply] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        return future

    def forget(self, request_id: str) -> None:
        self._waiting.pop(request_id, None)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="result-listener")
        self._task.add_done_callback(self._on_exit)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def _on_exit(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled():
            log.error("result listener stopped (%r); restarting", task.exception())
            self.start()

    async def _run(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._check_server()
        while True:
            try:
                popped = await self._redis.execute_command(  # type: ignore[no-untyped-call]
                    "BLMPOP", BLOCK_S, 1, self.reply_key, "RIGHT", "COUNT", POP_COUNT
                )
            except (RedisError, OSError) as exc:
                log.warning("reading results failed (%r); retrying", exc)
                await asyncio.sleep(0.2)
                with contextlib.suppress(RedisError, OSError):
                    await self._check_server()
                continue
            if popped:
                self._deliver(popped[1])

    async def _check_server(self) -> None:
        info = await self._redis.info("server")
        run_id = str(info.get("run_id"))
        if self._run_id is not None and run_id != self._run_id:
            lost = [future for future in self._waiting.values() if not future.done()]
            log.warning("Redis restarted; %d waiting requests lost their jobs", len(lost))
            error = ServiceError(ErrorKind.SERVICE_UNAVAILABLE, "the job queue restarted and lost this request; retry")
            for future in lost:
                future.set_exception(error)
        self._run_id = run_id

    def _deliver(self, messages: list[bytes]) -> None:
        for message in messages:
            try:
                reply = decode_reply(message)
            except ProtocolError as exc:
                log.error("dropped an undecodable result: %s", exc.message)
                continue
            future = self._waiting.pop(reply.request_id, None)
            if future is not None and not future.done():
                future.set_result(reply)
