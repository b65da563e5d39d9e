"""A batch's output and error files, rendered from stored chunks in input order."""

import base64
import time

import fakeredis
import numpy as np
import orjson
import pytest
from sentence_transformers.util import quantize_embeddings

from api.batches.output import file_size, render
from api.batches.plan import ManifestEntry
from api.batches.store import BatchRecord, BatchStore
from api.ids import ERRORS, OUTPUT
from shared import keys
from shared.chunks import ChunkStore, PartResult
from shared.errors import ErrorKind
from shared.openai_json import float_text_bytes
from shared.protocol import TaskError
from tests.fakes import fake_redis_factory

BATCH = "batch_" + "d" * 44


async def stored_batch(rows=None, *, measured=False, formats="fb"):
    redis = fake_redis_factory(fakeredis.FakeServer())(None)
    now = int(time.time())
    record = BatchRecord(
        batch_id=BATCH,
        owner="o",
        model="m",
        input_file_id="file-x",
        created_at=now,
        expires_at=now + 60,
        kept_until=now + 600,
        total=5,
        chunks=3,
        metadata=None,
        errors=[],
    )
    jobs = ChunkStore(redis)
    batches = BatchStore(redis, jobs)
    await batches.create(record)
    entries = [
        ManifestEntry(0, ["a", "b"], [2, 1], formats),  # b: base64
        ManifestEntry(2, ["c"], [0], "f"),  # refused by the API's checks
        ManifestEntry(3, ["d", "e"], [1, 2], "ff"),  # never ran
    ]
    await redis.rpush(keys.batch_manifest(BATCH), *[entry.pack() for entry in entries])
    rows = np.arange(12, dtype="<f4").reshape(3, 4) if rows is None else rows
    bad = PartResult(error=TaskError(ErrorKind.INVALID_REQUEST, "input must not be empty", "input"))
    a, b = (
        PartResult(5, float_text_bytes=float_text_bytes(rows[:2])),
        PartResult(2, float_text_bytes=float_text_bytes(rows[2:])),
    )
    if not measured:
        a, b = PartResult(5), PartResult(2)
    async with redis.pipeline(transaction=False) as pipe:
        for chunk, vectors, parts in ((0, rows.tobytes(), [a, b]), (1, None, [bad])):
            await jobs.done_in(
                pipe,
                BATCH,
                chunk,
                vectors=vectors,
                parts=parts,
                completed=sum(p.error is None for p in parts),
                failed=sum(p.error is not None for p in parts),
                prompt_tokens=7,
                expires_at_s=now + 600,
            )
        await pipe.execute()
    return redis, batches, jobs, rows


async def lines(batches, jobs, which):
    record = await batches.get(BATCH)
    return [
        orjson.loads(line)
        for piece in [p async for p in render(batches, jobs, record, which)]
        for line in piece.splitlines()
    ]


async def test_each_request_goes_to_its_file_in_input_order_in_its_own_encoding():
    redis, batches, jobs, rows = await stored_batch()
    await batches.cancel(await batches.get(BATCH), withdrawn_chunks=1)  # the third chunk was taken off the queue
    assert (await batches.get(BATCH)).status() == "cancelled"
    output = await lines(batches, jobs, OUTPUT)
    assert [line["custom_id"] for line in output] == ["a", "b"]
    first, second = (line["response"]["body"] for line in output)
    assert [item["embedding"] for item in first["data"]] == rows[:2].tolist()
    assert first["usage"] == {"prompt_tokens": 5, "total_tokens": 5} and first["model"] == "m"
    assert np.frombuffer(base64.b64decode(second["data"][0]["embedding"]), dtype="<f4").tolist() == rows[2].tolist()
    assert [line["id"] for line in output] == [f"batch_req_{'d' * 44}_0", f"batch_req_{'d' * 44}_1"]

    errors = await lines(batches, jobs, ERRORS)
    assert [line["custom_id"] for line in errors] == ["c", "d", "e"]
    refused = errors[0]["response"]
    assert refused["status_code"] == 400 and refused["body"]["error"]["param"] == "input"
    assert [line["error"]["code"] for line in errors[1:]] == ["batch_cancelled"] * 2
    assert all(line["response"] is None for line in errors[1:])
    await redis.aclose()


async def test_packed_bits_render_as_their_request_asked():
    rows = np.random.default_rng(8).standard_normal((3, 16)).astype("<f4")
    redis, batches, jobs, _ = await stored_batch(rows, formats="sU")
    first, second = (line["response"]["body"] for line in await lines(batches, jobs, OUTPUT))
    assert [item["embedding"] for item in first["data"]] == quantize_embeddings(rows[:2], "binary").tolist()
    bits = np.frombuffer(base64.b64decode(second["data"][0]["embedding"]), dtype=np.uint8)
    assert bits.tolist() == quantize_embeddings(rows[2:], "ubinary")[0].tolist()
    await redis.aclose()


async def test_requests_of_an_expired_batch_that_never_ran_say_so():
    redis, batches, jobs, _ = await stored_batch()
    await redis.hset(keys.batch(BATCH), "expires_at", int(time.time()) - 1)
    errors = await lines(batches, jobs, ERRORS)
    assert [line["error"]["code"] for line in errors if line["error"]] == ["batch_expired"] * 2
    await redis.aclose()


@pytest.mark.parametrize("measured", [True, False], ids=["measured by the worker", "stored unmeasured"])
@pytest.mark.parametrize("ending", ["in_progress", "cancelled", "completed"])
@pytest.mark.parametrize("formats", ["fb", "sU", "uS"], ids=["floats", "binary+ubinary64", "ubinary+binary64"])
async def test_a_files_size_is_known_without_rendering_it_and_is_what_renders(measured, ending, formats, monkeypatch):
    """Float output is measured without its vectors; packed bits (JSON integers of any width) are rendered."""
    rows = np.random.default_rng(7).standard_normal((3, 384)).astype("<f4") * np.float32(1e-3)
    redis, batches, jobs, _ = await stored_batch(rows, measured=measured, formats=formats)
    if ending == "cancelled":
        await batches.cancel(await batches.get(BATCH), withdrawn_chunks=1)
    if ending == "completed":  # the last chunk's two requests fail at the worker
        failure = PartResult(error=TaskError(ErrorKind.INTERNAL, "the worker failed"))
        async with redis.pipeline(transaction=False) as pipe:
            await jobs.done_in(
                pipe,
                BATCH,
                2,
                vectors=None,
                parts=[failure] * 2,
                completed=0,
                failed=2,
                prompt_tokens=0,
                expires_at_s=int(time.time()) + 600,
            )
            await pipe.execute()
    record = await batches.get(BATCH)
    assert record.status() == ending
    rendered = {
        which: b"".join([piece async for piece in render(batches, jobs, record, which)]) for which in (OUTPUT, ERRORS)
    }
    if measured and formats == "fb":

        async def not_read(*args):
            raise AssertionError("the vectors were read to measure the file")

        monkeypatch.setattr(jobs, "vectors", not_read)
    for which in (OUTPUT, ERRORS):
        assert await file_size(batches, jobs, record, which) == len(rendered[which]) > 0
    await redis.aclose()
