"""``api.dispatch``: the requests of one enqueue round share queue entries (an owner's, within the bounds), a refused
entry's requests are admitted or refused each as it would be alone, and an entry is withdrawn only when none of its
requests still waits. Over fakeredis, with a live worker that never answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import fakeredis
import msgpack
import pytest
from arq.constants import job_key_prefix

from api.dispatch import ENTRY_TEXTS, Dispatcher, JobBuilder
from api.replies import ReplyReader
from shared import keys
from shared.errors import ErrorKind, ServiceError
from shared.protocol import EmbedTask, TaskReply
from shared.redis_memory import EvictionGuard
from shared.workers import WorkerInfo, record_heartbeat
from tests.fakes import make_embed_task


@pytest.fixture
async def redis() -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    await record_heartbeat(client, WorkerInfo("silent", "cpu", [], 0), ttl_s=60)
    yield client
    await client.aclose()


async def warm(redis: fakeredis.FakeAsyncRedis, *, timeout_s: float = 5, **limits: int) -> Dispatcher:
    """A dispatcher whose liveness and memory readings are taken, so the requests started together reach its
    enqueue in one event-loop turn: one round."""
    guard = EvictionGuard(redis, allow_evicting=False)
    dispatcher = Dispatcher(
        redis,
        ReplyReader(redis, keys.reply_list("test")),
        guard,
        worker_ttl_s=60,
        max_queued_texts=limits.get("max_queued_texts", 1000),
        max_queued_texts_per_key=limits.get("max_queued_texts_per_key", 0),
        request_timeout_s=timeout_s,
    )
    await guard.check()
    await dispatcher._require_workers()
    return dispatcher


def task(request_id: str, texts: int = 1) -> JobBuilder:
    def build(*, reply_to: str, enqueued_ms: int, deadline_ms: int) -> EmbedTask:
        return make_embed_task(
            request_id=request_id,
            inputs=[f"text {i}" for i in range(texts)],
            reply_to=reply_to,
            enqueued_ms=enqueued_ms,
            deadline_ms=deadline_ms,
        )

    return build


async def entries(redis: fakeredis.FakeAsyncRedis) -> dict[str, int]:
    """Each queue entry of the sync queue, with how many requests its job carries."""
    found = {}
    for entry in await redis.zrange(keys.SYNC_QUEUE, 0, -1):
        stored = msgpack.unpackb(await redis.get(job_key_prefix + entry.decode()), raw=False)
        found[entry.decode()] = len(stored["a"])
    return found


async def started(*runs: Callable[[], Awaitable[TaskReply]]) -> list[asyncio.Future[TaskReply]]:
    tasks = [asyncio.ensure_future(run()) for run in runs]
    await asyncio.sleep(0.05)  # the round's one script call
    return tasks


async def stopped(tasks: list[asyncio.Future[TaskReply]]) -> list[BaseException | TaskReply]:
    for waiting in tasks:
        waiting.cancel()
    return await asyncio.gather(*tasks, return_exceptions=True)


async def test_an_owners_requests_of_one_round_share_an_entry_and_owners_do_not(redis):
    dispatcher = await warm(redis)
    tasks = await started(
        lambda: dispatcher.run(task("a1"), "a"),
        lambda: dispatcher.run(task("b1", 2), "b"),
        lambda: dispatcher.run(task("a2", 3), "a"),
    )
    found = await entries(redis)
    assert sorted(found.values()) == [1, 2]
    assert {entry.split(":")[0]: entry.rsplit(".", 1)[1] for entry in found} == {"a": "4", "b": "2"}  # texts
    assert int(await redis.get(keys.QUEUED_TEXTS)) == 6
    await stopped(tasks)
    assert await redis.zcard(keys.SYNC_QUEUE) == 0  # everyone left: withdrawn, texts released
    assert int(await redis.get(keys.QUEUED_TEXTS) or 0) == 0


async def test_an_entry_carries_at_most_entry_texts_and_a_larger_request_goes_alone(redis):
    dispatcher = await warm(redis)
    sizes = [ENTRY_TEXTS // 2, ENTRY_TEXTS // 2, 1, ENTRY_TEXTS + 1]
    tasks = await started(*[lambda i=i, n=n: dispatcher.run(task(f"r{i}", n), "a") for i, n in enumerate(sizes)])
    found = await entries(redis)
    assert sorted(int(entry.rsplit(".", 1)[1]) for entry in found) == [1, ENTRY_TEXTS, ENTRY_TEXTS + 1]
    await stopped(tasks)


async def test_an_entry_is_withdrawn_only_when_none_of_its_requests_still_waits(redis):
    dispatcher = await warm(redis)
    first, second = await started(lambda: dispatcher.run(task("r1"), "a"), lambda: dispatcher.run(task("r2"), "a"))
    assert list((await entries(redis)).values()) == [2]
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    assert list((await entries(redis)).values()) == [2]  # the other still waits for its part
    await stopped([second])
    assert await redis.zcard(keys.SYNC_QUEUE) == 0


async def test_a_refused_entry_is_split_and_each_request_admitted_or_refused_as_alone(redis):
    """A key with a share of 4 holding 2: two 1-text requests and a 2-text one of a round fit as an entry of 4 would
    not; alone, the first two fit and the third is refused, as one by one."""
    dispatcher = await warm(redis, max_queued_texts_per_key=4)
    holder = await started(lambda: dispatcher.run(task("held", 2), "a"))
    tasks = await started(
        lambda: dispatcher.run(task("r1"), "a"),
        lambda: dispatcher.run(task("r2"), "a"),
        lambda: dispatcher.run(task("r3", 2), "a"),
    )
    assert tasks[2].done()
    refused = tasks[2].exception()
    assert isinstance(refused, ServiceError) and refused.kind is ErrorKind.KEY_BACKLOG_FULL
    assert not tasks[0].done() and not tasks[1].done()
    assert int(await redis.hget(keys.QUEUED_TEXTS_PER_KEY, "a")) == 4
    await stopped([*holder, *tasks])
    assert int(await redis.get(keys.QUEUED_TEXTS) or 0) == 0


async def test_an_entry_of_several_requests_never_exceeds_the_backlog_bound(redis):
    """With nothing queued a lone request larger than the bound is admitted; several that together are not one."""
    dispatcher = await warm(redis, max_queued_texts=3)
    tasks = await started(*[lambda i=i: dispatcher.run(task(f"r{i}", 2), "a") for i in range(3)])
    outcomes = [t.exception() if t.done() else None for t in tasks]
    assert outcomes[0] is None  # admitted: the first, alone in an empty queue
    assert [isinstance(o, ServiceError) and o.kind is ErrorKind.RATE_LIMITED for o in outcomes[1:]] == [True, True]
    await stopped(tasks)


async def gated(dispatcher: Dispatcher) -> asyncio.Event:
    """Hold the dispatcher's enqueue script until the returned event is set: the entry is on its way to Redis."""
    enqueue, gate = dispatcher._queue.enqueue, asyncio.Event()

    async def held(*args: object, **kwargs: object) -> object:
        await gate.wait()
        return await enqueue(*args, **kwargs)  # type: ignore[arg-type]

    dispatcher._queue.enqueue = held  # type: ignore[method-assign]
    return gate


async def test_a_request_that_leaves_while_its_entry_is_written_is_not_waited_for(redis):
    """r1 leaves while the script writing its entry is on its way: the entry waits for r2 alone, and is withdrawn
    when r2 leaves; an entry written for nobody is withdrawn at once."""
    dispatcher = await warm(redis)
    gate = await gated(dispatcher)
    first, second = await started(lambda: dispatcher.run(task("r1"), "a"), lambda: dispatcher.run(task("r2"), "a"))
    await stopped([first])
    gate.set()
    await asyncio.sleep(0.05)
    assert list((await entries(redis)).values()) == [2]
    await stopped([second])
    assert await redis.zcard(keys.SYNC_QUEUE) == 0
    assert int(await redis.get(keys.QUEUED_TEXTS) or 0) == 0

    gate.clear()
    [alone] = await started(lambda: dispatcher.run(task("r3"), "b"))
    await stopped([alone])
    gate.set()
    await asyncio.sleep(0.05)
    assert await redis.zcard(keys.SYNC_QUEUE) == 0
    assert int(await redis.get(keys.QUEUED_TEXTS) or 0) == 0


async def test_a_request_answered_no_longer_keeps_its_entry_from_being_withdrawn(redis):
    """r1 is answered (its entry due again, as after a worker died); r2 leaving then withdraws the entry."""
    dispatcher = await warm(redis)
    first, second = await started(lambda: dispatcher.run(task("r1"), "a"), lambda: dispatcher.run(task("r2"), "a"))
    dispatcher._listener._waiting["r1"].set_result(TaskReply("r1", data=b"[]"))
    assert isinstance(await first, TaskReply)
    assert list((await entries(redis)).values()) == [2]
    await stopped([second])
    assert await redis.zcard(keys.SYNC_QUEUE) == 0


async def test_an_entry_the_backlog_bound_refuses_is_split_and_each_request_admitted_or_refused_as_alone(redis):
    """A bound of 4 with 2 texts queued: three 1-text requests of a round are refused as one entry of 3; alone, the
    first two fit and the third is refused, as one by one."""
    dispatcher = await warm(redis, max_queued_texts=4)
    holder = await started(lambda: dispatcher.run(task("held", 2), "b"))
    tasks = await started(*[lambda i=i: dispatcher.run(task(f"r{i}"), "a") for i in range(3)])
    assert [t.done() for t in tasks] == [False, False, True]
    refused = tasks[2].exception()
    assert isinstance(refused, ServiceError) and refused.kind is ErrorKind.RATE_LIMITED
    assert sorted((await entries(redis)).values()) == [1, 1, 1]
    assert int(await redis.get(keys.QUEUED_TEXTS)) == 4
    await stopped([*holder, *tasks])
    assert int(await redis.get(keys.QUEUED_TEXTS) or 0) == 0
