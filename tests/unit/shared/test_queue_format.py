"""The formats Python writes and Lua reads back, run in both languages: the Lua of ``shared.queue_format`` on a
real redis-server (and fakeredis, which the fast tests use), against ids and progress hashes the Python made."""

import time

import fakeredis
import pytest
from redis.asyncio import Redis

from shared import keys
from shared.chunks import ChunkStore, Progress
from shared.clock import now_ms
from shared.job_queue import JobQueue, NewJob
from shared.queue_format import (
    PARENT_OF_LUA,
    PARSE_ID_LUA,
    PROGRESS_FIELDS,
    PROGRESS_FIELDS_LUA,
    chunk_queue_id,
    chunk_request_id,
    queue_job_id,
)


@pytest.fixture(params=["fakeredis", "redis-server"])
async def lua(request):
    """A Redis to run Lua in: fakeredis (lupa), and a real redis-server."""
    if request.param == "fakeredis":
        client = fakeredis.FakeAsyncRedis()
    else:
        client = Redis.from_url(request.getfixturevalue("redis_url"))
    yield client
    await client.aclose()


@pytest.mark.parametrize(
    ("request_id", "texts", "owner"),
    [
        ("9f86d081884c7d659a2feaa0c55ad015", 3, "0123456789abcdef"),
        ("9f86d081884c7d659a2feaa0c55ad015", 1, "anonymous"),
        ("a.b-c:d.7", 2048, "0123456789abcdef"),  # dots, a dash and a colon in the request id itself
        ("r", 0, "under_score-and-dash"),
        ("embjob_0a1b2c-17", 256, None),  # a chunk: no owner
        ("batch_0a1b.2c-3", 5, None),
    ],
)
async def test_the_lua_parser_reads_back_what_queue_job_id_builds(lua, request_id, texts, owner):
    job_id = queue_job_id(request_id, texts, owner)
    parsed = await lua.eval(PARSE_ID_LUA + "local texts, owner = parse_id(ARGV[1]); return {texts, owner}", 0, job_id)
    assert parsed == ([texts, owner.encode()] if owner is not None else [texts])  # Lua's nil ends the list


def test_queue_job_id_refuses_what_the_parser_would_misread():
    with pytest.raises(ValueError, match="cannot own"):
        queue_job_id("r", 1, "a:b")
    with pytest.raises(ValueError, match="cannot own"):
        queue_job_id("r", 1, "")
    with pytest.raises(ValueError, match="no owner"):
        queue_job_id("owner:r", 1)  # would read as owned by "owner"


@pytest.mark.parametrize(
    ("parent", "chunk", "texts"),
    [
        ("embjob_0192f3a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3", 0, 256),
        ("batch_0192f3a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3", 1234, 1),
        ("odd-parent.with-7.dots", 3, 12),  # dashes and dots of its own: the chunk is the last "-<n>.<n>"
    ],
)
async def test_the_lua_reads_a_chunks_parent_from_the_id_python_built(lua, parent, chunk, texts):
    queue_id = chunk_queue_id(parent, chunk, texts)
    assert chunk_request_id(parent, chunk) in queue_id
    script = PARSE_ID_LUA + PARENT_OF_LUA + "local texts = parse_id(ARGV[1]); return {parent_of(ARGV[1]), texts}"
    assert await lua.eval(script, 0, queue_id) == [parent.encode(), texts]
    assert await lua.eval(PARENT_OF_LUA + "return parent_of(ARGV[1])", 0, "no-chunk-here") == b"no-chunk-here"


async def test_the_lua_names_every_progress_field_as_python_does(lua):
    listing = "local out = {}; for k, v in pairs(F) do out[#out + 1] = k .. '=' .. v end; return out"
    names = await lua.eval(PROGRESS_FIELDS_LUA + listing, 0)
    assert {name.decode() for name in names} == {f"{name}={field}" for name, field in PROGRESS_FIELDS.items()}


async def test_a_progress_hash_the_scripts_wrote_parses_as_python_reads_it(redis_url):
    """The API creates the progress, the chunk queue's claim marks it started, a chunk counts into it with an
    error, a cancel stamps it: ``Progress.parse`` reads every field those scripts wrote."""
    redis = Redis.from_url(redis_url)
    try:
        parent, now_s = "embjob_parent", int(time.time())
        async with redis.pipeline(transaction=True) as pipe:
            ChunkStore.create_in(pipe, parent, total=5, chunks=2, expire_at_s=now_s + 600)
            await pipe.execute()
        queue = JobQueue.chunks(redis)
        job = NewJob(chunk_queue_id(parent, 0, 3), (b"message",), now_ms(), 600_000, 3)
        await queue.enqueue([job], backlog_limit=100, now_ms=now_ms())
        [claimed] = await queue.claim(most_jobs=1, most_texts=10, lease_ms=60_000, now_ms=now_ms())
        assert claimed.job_id == job.job_id and not claimed.cancelled
        store = ChunkStore(redis)
        await store.done_in(
            None,
            parent,
            0,
            vectors=None,
            completed=2,
            failed=1,
            prompt_tokens=9,
            expires_at_s=now_s + 600,
            error="one input failed",
        )
        await store.cancel(parent, withdrawn_chunks=1)
        progress = await store.progress(parent)
        assert progress == Progress(
            total=5,
            chunks=2,
            completed=2,
            failed=1,
            prompt_tokens=9,
            chunks_done=2,
            started=True,
            cancelled=True,
            cancelling_at=progress.cancelling_at,
            completed_at=None,
            finished_at=progress.finished_at,
            chunk_errors={0: "one input failed"},
        )
        assert progress.cancelling_at and progress.finished_at and progress.finished_at >= now_s
        assert await redis.hexists(keys.progress(parent), PROGRESS_FIELDS["done"] + "0")
    finally:
        await redis.aclose()
