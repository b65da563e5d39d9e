"""Results from the workers back to the request that waits for them, with no polling delay.

Each API process owns one reply list in Redis. One task blocks on it (BLMPOP, many results per round trip)
and hands each result to the future of the request that waits for it. A result nobody waits for any more
(the client gave up) is dropped. After every Redis error the reader looks at which Redis it now talks to:

- back from a restart empty (a new epoch, ``shared.epoch``): the jobs written in the old epoch are gone, so their
  requests get a retryable 503 at once instead of waiting for their deadline, while requests written in the new
  epoch wait for their replies as usual;
- another server with the same data (a Sentinel failover to a replica, or a restart that kept its data): a job
  the replica never received is gone too; a waiting request whose job is not there gets the same 503, after a
  moment in which a reply already on its way may still arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from arq.constants import job_key_prefix
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.epoch import Epochs
from shared.errors import ErrorKind, ProtocolError, ServiceError
from shared.protocol import TaskReply, decode_reply

log = logging.getLogger(__name__)

#: seconds one BLMPOP blocks; bounds how long shutdown waits for the listener
BLOCK_S = 1.0
#: seconds a request whose job vanished in a failover still waits for a reply that was already on its way
VANISHED_GRACE_S = 1.0
#: results taken per round trip at most
POP_COUNT = 512


class ReplyReader:
    def __init__(self, redis: Redis, reply_key: str) -> None:
        self._redis = redis
        self.reply_key = reply_key
        self._waiting: dict[str, asyncio.Future[TaskReply]] = {}
        #: for each waiting request whose job is written: the epoch it was written in, and its queue id
        self._written_in: dict[str, tuple[str, str]] = {}
        self._task: asyncio.Task[None] | None = None
        self._epochs = Epochs(redis)
        self._epoch: str | None = None
        self._run_id: str | None = None

    def expect(self, request_id: str) -> asyncio.Future[TaskReply]:
        future: asyncio.Future[TaskReply] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        return future

    def written(self, request_id: str, epoch: str, queue_id: str) -> None:
        """The request's job is in Redis as ``queue_id``, written in ``epoch``."""
        if request_id in self._waiting:
            self._written_in[request_id] = (epoch, queue_id)

    def forget(self, request_id: str) -> None:
        self._waiting.pop(request_id, None)
        self._written_in.pop(request_id, None)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="reply-reader")
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
            await self.check_server()
        while True:
            try:
                popped = await self._redis.execute_command(  # type: ignore[no-untyped-call]
                    "BLMPOP", BLOCK_S, 1, self.reply_key, "RIGHT", "COUNT", POP_COUNT
                )
            except (RedisError, OSError) as exc:
                log.warning("reading results failed (%r); retrying", exc)
                await asyncio.sleep(0.2)
                with contextlib.suppress(RedisError, OSError):
                    await self.check_server()
                continue
            if popped:
                self._deliver(popped[1])

    async def check_server(self) -> None:
        """Fail the waiting requests whose jobs the Redis we now talk to does not have (see the module's doc)."""
        epoch = (await self._epochs.current()).id
        run_id = str((await self._redis.info("server")).get("run_id"))
        if self._epoch is not None and epoch != self._epoch:
            lost = [request_id for request_id, (written, _) in self._written_in.items() if written != epoch]
            log.warning("Redis restarted empty; %d waiting requests lost their jobs", len(lost))
            self._fail(lost)
        elif self._run_id is not None and run_id != self._run_id:
            await self._fail_vanished()
        self._epoch, self._run_id = epoch, run_id

    async def _fail_vanished(self) -> None:
        written = list(self._written_in.items())
        if not written:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for _, (_, queue_id) in written:
                pipe.exists(job_key_prefix + queue_id)
            present = await pipe.execute()
        vanished = [request_id for (request_id, _), there in zip(written, present, strict=True) if not there]
        if vanished:
            log.warning("Redis changed servers; %d waiting requests' jobs are not there", len(vanished))
            asyncio.get_running_loop().call_later(VANISHED_GRACE_S, self._fail, vanished)

    def _fail(self, request_ids: list[str]) -> None:
        error = ServiceError(
            ErrorKind.SERVICE_UNAVAILABLE, "the job queue lost this request (a restart or failover); retry"
        )
        for request_id in request_ids:
            future = self._waiting.get(request_id)
            if future is not None and not future.done():
                future.set_exception(error)

    def _deliver(self, messages: list[bytes]) -> None:
        for message in messages:
            try:
                reply = decode_reply(message)
            except ProtocolError as exc:
                log.error("dropped an undecodable result: %s", exc.message)
                continue
            future = self._waiting.pop(reply.request_id, None)
            self._written_in.pop(reply.request_id, None)
            if future is not None and not future.done():
                future.set_result(reply)
