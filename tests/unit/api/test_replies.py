"""The API's reply reader over a real redis-server: replies reach their requests; after Redis comes back empty, only
requests whose jobs were written before the restart fail, at once; after a failover, those whose jobs are not there."""

import asyncio

import pytest

from api import replies
from api.replies import ReplyReader
from shared.epoch import Epochs
from shared.errors import ErrorKind, ServiceError
from shared.protocol import TaskReply, encode_reply
from shared.redis_client import connect
from shared.settings import Settings


@pytest.fixture
async def redis(redis_url):
    client = connect(Settings(_env_file=None, redis_url=redis_url), blocking_timeout_s=1)
    yield client
    await client.aclose()


async def test_a_reply_reaches_its_request(redis):
    listener = ReplyReader(redis, "emb:reply:api")
    future = listener.expect("r1")
    listener.start()
    await redis.lpush("emb:reply:api", encode_reply(TaskReply("r1", data=b"[]")))
    assert (await asyncio.wait_for(future, 5)).request_id == "r1"
    await listener.stop()


async def test_after_an_empty_restart_only_requests_written_before_it_fail(redis):
    listener = ReplyReader(redis, "emb:reply:api")
    await listener.check_server()  # what the reader does when it starts and after every Redis error
    old_epoch = (await Epochs(redis).current()).id
    written_before = listener.expect("before")
    listener.written("before", old_epoch, "before.1")
    not_yet_written = listener.expect("in-flight")
    await redis.flushall()  # Redis restarted without persistence
    new_epoch = (await Epochs(redis).current()).id  # the first enqueue after the restart makes a new epoch
    written_after = listener.expect("after")
    listener.written("after", new_epoch, "after.1")
    await listener.check_server()
    with pytest.raises(ServiceError) as info:
        written_before.result()
    assert info.value.kind is ErrorKind.SERVICE_UNAVAILABLE
    assert not written_after.done() and not not_yet_written.done()


async def test_a_restart_that_kept_its_data_fails_nothing(redis):
    listener = ReplyReader(redis, "emb:reply:api")
    await listener.check_server()
    future = listener.expect("r1")
    await redis.set("arq:job:r1.1", b"job")
    listener.written("r1", (await Epochs(redis).current()).id, "r1.1")
    await listener.check_server()  # same epoch: Redis kept its data (persistence)
    assert not future.done()


async def test_after_a_failover_a_request_whose_job_is_not_on_the_new_primary_fails(redis, monkeypatch):
    listener = ReplyReader(redis, "emb:reply:api")
    await listener.check_server()
    epoch = (await Epochs(redis).current()).id
    await redis.set("arq:job:kept.1", b"job")
    kept, gone = listener.expect("kept"), listener.expect("gone")
    listener.written("kept", epoch, "kept.1")
    listener.written("gone", epoch, "gone.1")  # its job never reached the replica
    monkeypatch.setattr(listener, "_run_id", "the old primary")
    monkeypatch.setattr(replies, "VANISHED_GRACE_S", 0.05)
    await listener.check_server()
    await asyncio.sleep(0.1)
    assert not kept.done()
    with pytest.raises(ServiceError):
        gone.result()


async def test_a_duplicate_reply_is_dropped_and_the_first_one_kept(redis):
    listener = ReplyReader(redis, "emb:reply:api")
    future = listener.expect("r1")
    listener.start()
    # a job re-run after its worker seemed dead answers twice; the first answer wins
    await redis.lpush(
        "emb:reply:api", encode_reply(TaskReply("r1", data=b"[1]")), encode_reply(TaskReply("r1", data=b"[2]"))
    )
    assert (await asyncio.wait_for(future, 5)).data == b"[1]"
    await asyncio.sleep(0.1)
    assert await redis.llen("emb:reply:api") == 0  # the second was read and dropped
    await listener.stop()
