"""The worker's job handling over fakeredis, with a stub model."""

import base64

import msgpack
import numpy as np
import orjson
import pytest

from shared import keys
from shared.chunks import ChunkStore
from shared.clock import now_ms
from shared.errors import ErrorKind
from shared.job_queue import JobQueue, NewJob
from shared.protocol import EmbedTask, decode_reply, encode_job
from shared.queue_format import queue_job_id
from tests.fakes import (
    REPLY_TO,
    Loader,
    fake_vector,
    make_embed_chunk,
    make_embed_task,
    make_registry,
)
from worker import metrics
from worker.service import TaskService


@pytest.fixture
async def service(redis):
    registry = make_registry(Loader(failing={"missing"}))
    yield TaskService(registry, redis, "w1", max_attempts=2)
    await registry.close()


@pytest.fixture
def counted():
    """The jobs counted since the test began (``worker.metrics.job_counts``), by outcome, those not counted left
    out."""
    before = metrics.job_counts()
    return lambda: {outcome: n - before[outcome] for outcome, n in metrics.job_counts().items() if n != before[outcome]}


def job(**overrides) -> EmbedTask:
    return make_embed_task(**overrides)


async def reply(redis):
    messages = await redis.lrange(REPLY_TO, 0, -1)
    assert len(messages) == 1
    return decode_reply(messages[0])


async def test_job_result_is_published_to_its_reply_list(service, redis):
    await service.handle("job-1", encode_job(job()))
    result = await reply(redis)
    assert result.error is None and result.request_id == "r1"
    assert [item["embedding"] for item in orjson.loads(result.data)] == [fake_vector("abc"), fake_vector("de")]
    assert result.prompt_tokens == 2  # one token per text; the special token is not counted
    assert await redis.ttl(REPLY_TO) > 0


async def test_dimensions_cut_and_normalize_when_asked(service, redis):
    await service.handle("job-1", encode_job(job(dimensions=2, normalize=True)))
    vectors = np.array([item["embedding"] for item in orjson.loads((await reply(redis)).data)])
    expected = np.array([[3, 1], [2, 1]]) / np.sqrt([[10], [5]])  # [len, 1], re-normalized
    assert np.allclose(vectors, expected, rtol=0, atol=1e-6)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, rtol=0, atol=1e-6)


async def test_a_model_that_does_not_normalize_gives_raw_vectors_and_cuts_stay_raw(service, redis):
    await service.handle("job-1", encode_job(job(dimensions=2)))
    vectors = [item["embedding"] for item in orjson.loads((await reply(redis)).data)]
    assert vectors == [[3.0, 1.0], [2.0, 1.0]]


async def test_a_prompt_goes_before_each_text_and_its_length_reaches_the_model(service, redis):
    await service.handle("job-1", encode_job(job(prompt_name="q")))
    result = await reply(redis)
    assert [item["embedding"] for item in orjson.loads(result.data)] == [fake_vector("Q: abc"), fake_vector("Q: de")]
    encoder = (await service.registry.get("m")).model
    assert encoder.prompt_lengths[-1] == len("Q: ")


async def test_an_unknown_prompt_is_a_400_naming_the_models_prompts(service, redis):
    await service.handle("job-1", encode_job(job(prompt_name="nope")))
    error = (await reply(redis)).error
    assert (error.kind, error.param) == (ErrorKind.INVALID_REQUEST, "prompt_name") and "'q'" in error.message


async def test_openai_token_ids_are_read_as_cl100k_text(redis):
    registry = make_registry(Loader())
    service = TaskService(registry, redis, "w1", max_attempts=2, openai_token_ids=True)
    ids = [[1820, 8415], [1820]]  # cl100k_base: "the cat", "the"
    await service.handle("job-1", encode_job(job(input_kind="tokens", inputs=ids)))
    result = await reply(redis)
    assert [item["embedding"] for item in orjson.loads(result.data)] == [fake_vector("the cat"), fake_vector("the")]
    await registry.close()


async def test_the_data_array_is_rendered_in_the_requested_format(service, redis):
    await service.handle("job-1", encode_job(job(encoding_format="base64")))
    items = orjson.loads((await reply(redis)).data)  # the API only frames the rendered array
    assert [item["index"] for item in items] == [0, 1]
    decoded = np.frombuffer(base64.b64decode(items[1]["embedding"]), dtype="<f4")
    assert decoded.tolist() == fake_vector("de")


async def test_dimensions_above_the_model_are_refused(service, redis):
    await service.handle("job-1", encode_job(job(dimensions=5)))  # FakeEncoder has 4
    result = await reply(redis)
    assert result.error is not None
    assert (result.error.kind, result.error.param) == (ErrorKind.INVALID_REQUEST, "dimensions")


async def test_token_ids_out_of_range_are_refused(service, redis):
    await service.handle("job-1", encode_job(job(input_kind="tokens", inputs=[[1, 2], [100]])))
    assert (await reply(redis)).error.kind is ErrorKind.INVALID_REQUEST


async def test_unknown_model_is_reported(service, redis):
    await service.handle("job-1", encode_job(job(model="missing")))
    assert (await reply(redis)).error.kind is ErrorKind.MODEL_NOT_FOUND


async def queued(redis, sync_job: EmbedTask, owner: str = "anonymous") -> str:
    """``sync_job`` on the sync queue, as the API puts it there (counted in the backlog); its queue id."""
    queue_id = queue_job_id(sync_job.request_id, len(sync_job.inputs), owner)
    new_job = NewJob(queue_id, (encode_job(sync_job),), now_ms(), 60_000, len(sync_job.inputs))
    assert (await JobQueue.sync(redis).enqueue([new_job], backlog_limit=100, now_ms=now_ms())).admitted == [True]
    return queue_id


async def test_expired_job_is_skipped_and_leaves_the_backlog(service, redis, counted):
    expired = job(deadline_ms=now_ms() - 1)
    await service.handle(await queued(redis, expired), encode_job(expired))
    assert await redis.llen(REPLY_TO) == 0
    assert service.registry.loaded_names() == []  # not even the model was touched
    assert counted() == {"expired": 1}
    assert int(await redis.get(keys.QUEUED_TEXTS)) == 0
    assert await redis.hgetall(keys.QUEUED_TEXTS_PER_KEY) == {}


async def test_job_whose_model_loads_past_its_deadline_times_out(redis):
    loader = Loader()
    loader.release.clear()
    registry = make_registry(loader)
    service = TaskService(registry, redis, "w1", max_attempts=2)
    await service.handle("job-1", encode_job(job(deadline_ms=now_ms() + 50)))
    assert (await reply(redis)).error.kind is ErrorKind.TIMEOUT
    loader.release.set()
    await registry.close()


async def test_answered_job_leaves_the_backlog(service, redis, counted):
    await queued(redis, job(request_id="other", inputs=["x", "y", "z"]), owner="0123456789abcdef")
    answered = job()
    await service.handle(await queued(redis, answered), encode_job(answered))
    assert int(await redis.get(keys.QUEUED_TEXTS)) == 3
    assert await redis.hgetall(keys.QUEUED_TEXTS_PER_KEY) == {b"0123456789abcdef": b"3"}
    assert counted() == {"answered": 1}


async def test_an_undecodable_job_leaves_the_backlog_too(service, redis):
    queue_id = queue_job_id("r1", 4, "0123456789abcdef")
    await JobQueue.sync(redis).enqueue([NewJob(queue_id, (b"not msgpack",), 1, 60_000, 4)], 100, now_ms=1)
    await service.handle(queue_id, b"not msgpack")
    assert await redis.llen(keys.DEAD_LETTER) == 1
    assert int(await redis.get(keys.QUEUED_TEXTS)) == 0
    assert await redis.hgetall(keys.QUEUED_TEXTS_PER_KEY) == {}


async def test_job_attempted_too_often_is_abandoned_with_an_error(service, redis, counted):
    await service.handle("job-1", encode_job(job()), attempt=3)
    result = await reply(redis)
    assert result.error.kind is ErrorKind.INTERNAL and "2 times" in result.error.message
    assert service.registry.loaded_names() == []
    assert counted() == {"abandoned": 1}


async def test_undecodable_job_with_a_reply_address_gets_an_error(service, redis):
    message = msgpack.packb({"v": 999, "request_id": "r1", "reply_to": REPLY_TO})
    await service.handle("job-1", message)
    result = await reply(redis)
    assert result.error.kind is ErrorKind.INTERNAL


async def test_garbage_job_is_moved_aside_and_the_worker_goes_on(service, redis):
    await service.handle("job-1", b"\xc1\xc1")
    [entry] = [msgpack.unpackb(raw) for raw in await redis.lrange("emb:dead-letter", 0, -1)]
    assert (entry["id"], entry["payload"], entry["worker"]) == ("job-1", b"\xc1\xc1", "w1")
    await service.handle("job-2", encode_job(job()))
    assert (await reply(redis)).error is None


async def test_finishing_removes_the_job_from_arqs_keys(service, redis):
    await redis.set("arq:job:job-1", b"x")
    await redis.zadd("emb:queue:sync", {"job-1": 1})
    await service.handle("job-1", encode_job(job()))
    assert await redis.exists("arq:job:job-1") == 0
    assert await redis.zcard("emb:queue:sync") == 0


async def _batch_record(redis, requests: int) -> None:
    fields = {"total": requests, "chunks": 1, "completed": 0, "failed": 0, "prompt_tokens": 0, "chunks_done": 0}
    await redis.hset(keys.progress("batch_1"), mapping=fields)


async def test_a_batch_chunk_fails_only_the_requests_that_cannot_be_encoded(service, redis):
    await _batch_record(redis, 3)
    # three requests: one input; one input with a token id outside the vocabulary; two inputs
    chunk = make_embed_chunk(
        parent_job="batch_1", input_kind="tokens", inputs=[[1, 2], [150], [3], [4]], parts=[1, 1, 2]
    )
    await service.handle_chunk("chunk-1", encode_job(chunk))
    store = ChunkStore(redis)
    [parts] = await store.parts("batch_1", [0])
    assert [part.prompt_tokens for part in parts] == [2, 0, 2]
    assert parts[0].error is None and parts[2].error is None
    assert (parts[1].error.kind, parts[1].error.param) == (ErrorKind.INVALID_REQUEST, "input")
    [stored] = await store.vectors("batch_1", [0])
    rows = np.frombuffer(stored, dtype="<f4").reshape(-1, 4)
    assert rows.tolist() == [[2, 1, 0, 0], [3, 1, 0, 0], [4, 1, 0, 0]]  # the requests that succeeded, in order
    progress = await redis.hgetall(keys.progress("batch_1"))
    assert (progress[b"completed"], progress[b"failed"], progress[b"chunks_done"]) == (b"2", b"1", b"1")
    assert b"completed_at" in progress and b"finished_at" in progress


async def test_a_batch_chunk_that_fails_as_a_whole_fails_each_of_its_requests(service, redis):
    await _batch_record(redis, 2)
    chunk = make_embed_chunk(parent_job="batch_1", model="missing", inputs=["a", "b", "c"], parts=[2, 1])
    await service.handle_chunk("chunk-1", encode_job(chunk))
    [parts] = await ChunkStore(redis).parts("batch_1", [0])
    assert [part.error.kind for part in parts] == [ErrorKind.MODEL_NOT_FOUND] * 2
    assert (await redis.hget(keys.progress("batch_1"), "failed")) == b"2"


async def test_a_chunk_of_a_cancelled_batch_is_counted_as_done_with_nothing_run(service, redis):
    await _batch_record(redis, 1)
    chunk = make_embed_chunk(parent_job="batch_1", parts=[2])
    await service.handle_chunk("chunk-1", encode_job(chunk), cancelled=True)  # as the claim said
    progress = await redis.hgetall(keys.progress("batch_1"))
    assert (progress[b"completed"], progress[b"failed"], progress[b"chunks_done"]) == (b"0", b"0", b"1")
    assert await ChunkStore(redis).parts("batch_1", [0]) == [None]


async def test_an_entry_of_several_requests_answers_each_and_ends_once(service, redis, counted):
    """An entry the API filled with one round's requests: each is answered on its own (an undecodable one moved aside,
    an expired one skipped, a failing one with its error), and the entry ends, its texts released, once all are."""
    first, failing = job(request_id="a"), job(request_id="b", model="missing")
    expired = job(request_id="c", deadline_ms=now_ms() - 1)
    messages = (encode_job(first), b"\xc1", encode_job(failing), encode_job(expired))
    queue_id = queue_job_id("a", 8, "0123456789abcdef")
    await JobQueue.sync(redis).enqueue([NewJob(queue_id, messages, now_ms(), 60_000, 8)], 100, now_ms=now_ms())
    [claimed] = await JobQueue.sync(redis).claim(10, 100, lease_ms=10_000, now_ms=now_ms())
    assert claimed.messages == list(messages)
    await service.handle_entry(claimed.job_id, claimed.messages, claimed.attempt)
    replies = {r.request_id: r for r in map(decode_reply, await redis.lrange(REPLY_TO, 0, -1))}
    assert set(replies) == {"a", "b"}
    assert replies["a"].error is None and replies["b"].error.kind is ErrorKind.MODEL_NOT_FOUND
    assert await redis.llen(keys.DEAD_LETTER) == 1
    assert counted() == {"answered": 2, "expired": 1, "dead_letter": 1}
    assert await redis.zcard(keys.SYNC_QUEUE) == 0 and await redis.exists(f"arq:job:{queue_id}") == 0
    assert int(await redis.get(keys.QUEUED_TEXTS)) == 0
    assert await redis.hgetall(keys.QUEUED_TEXTS_PER_KEY) == {}


async def test_a_job_that_raises_in_an_entry_leaves_it_unended_once_the_others_are_answered(
    service, redis, monkeypatch
):
    """A job whose handling raises (its reply's push failed) fails the entry, but only once every other job of it
    has run to its answer: none outlives the entry's lease. Unended, the entry runs again when its lease lapses."""
    handle = service._sync._handle

    async def failing_on_boom(queue_id: str, message: bytes, attempt: int, *, ends: bool) -> None:
        if message == b"boom":
            raise RuntimeError("the push of its reply failed")
        await handle(queue_id, message, attempt, ends=ends)

    monkeypatch.setattr(service._sync, "_handle", failing_on_boom)
    messages = (b"boom", encode_job(job(request_id="a")))
    queue_id = queue_job_id("a", 2, "0123456789abcdef")
    await JobQueue.sync(redis).enqueue([NewJob(queue_id, messages, now_ms(), 60_000, 2)], 100, now_ms=now_ms())
    [claimed] = await JobQueue.sync(redis).claim(10, 100, lease_ms=10_000, now_ms=now_ms())
    with pytest.raises(RuntimeError):
        await service.handle_entry(claimed.job_id, claimed.messages, claimed.attempt)
    assert [decode_reply(r).request_id for r in await redis.lrange(REPLY_TO, 0, -1)] == ["a"]
    assert await redis.zcard(keys.SYNC_QUEUE) == 1 and int(await redis.get(keys.QUEUED_TEXTS)) == 2


async def test_an_entry_past_its_attempts_answers_each_request_abandoned_and_ends(service, redis, counted):
    messages = (encode_job(job(request_id="a")), encode_job(job(request_id="b")))
    queue_id = queue_job_id("a", 2, "0123456789abcdef")
    await JobQueue.sync(redis).enqueue([NewJob(queue_id, messages, now_ms(), 60_000, 2)], 100, now_ms=now_ms())
    [claimed] = await JobQueue.sync(redis).claim(10, 100, lease_ms=10_000, now_ms=now_ms())
    await service.handle_entry(claimed.job_id, claimed.messages, attempt=3)  # the service allows 2
    replies = {r.request_id: r for r in map(decode_reply, await redis.lrange(REPLY_TO, 0, -1))}
    assert {request: reply.error.kind for request, reply in replies.items()} == {
        "a": ErrorKind.INTERNAL,
        "b": ErrorKind.INTERNAL,
    }
    assert "abandoned" in replies["a"].error.message
    assert counted() == {"abandoned": 2}
    assert await redis.zcard(keys.SYNC_QUEUE) == 0 and int(await redis.get(keys.QUEUED_TEXTS)) == 0
