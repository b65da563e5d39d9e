"""A batch's record: its status from its counters, its output files' ids, and its OpenAI object."""

import time

import fakeredis
import pytest

from api.batches.store import BatchRecord, BatchStore
from api.ids import ERRORS, OUTPUT, batch_of_file, output_file_id
from shared import keys
from shared.chunks import ChunkStore
from tests.fakes import fake_redis_factory

NOW = 1_800_000_000


def record(**overrides) -> BatchRecord:
    fields = dict(
        batch_id="batch_" + "a" * 44,
        owner="o",
        model="m",
        input_file_id="file-x",
        created_at=NOW - 10,
        expires_at=NOW + 100,
        kept_until=NOW + 1000,
        total=4,
        chunks=2,
        metadata=None,
        errors=[],
    )
    return BatchRecord(**{**fields, **overrides})


@pytest.mark.parametrize(
    ("overrides", "now", "status"),
    [
        ({}, NOW, "in_progress"),
        ({"completed": 3, "failed": 1, "completed_at": NOW}, NOW, "completed"),
        ({"completed": 1}, NOW + 100, "expired"),
        ({"cancelling_at": NOW, "chunks_done": 1}, NOW, "cancelling"),
        ({"cancelling_at": NOW, "chunks_done": 2, "finished_at": NOW}, NOW, "cancelled"),
        ({"cancelling_at": NOW, "chunks_done": 1}, NOW + 500, "cancelling"),  # a cancel outlives the window
        ({"failed_at": NOW, "errors": [{"code": "x"}]}, NOW, "failed"),
    ],
)
def test_status(overrides, now, status):
    assert record(**overrides).status(now) == status


def test_output_files_appear_when_the_batch_has_ended_and_has_lines_for_them():
    running = record(completed=2)
    assert running.file_id(OUTPUT) is None and running.file_id(ERRORS) is None
    done = record(completed=4, completed_at=NOW)
    assert done.file_id(OUTPUT) == output_file_id(done.batch_id, OUTPUT) and done.file_id(ERRORS) is None
    expired = record(completed=1, expires_at=int(time.time()) - 1)
    assert expired.file_id(OUTPUT) and expired.file_id(ERRORS)  # the requests that never ran are errors
    assert record(completed=4, completed_at=NOW, deleted=frozenset({OUTPUT})).file_id(OUTPUT) is None


def test_an_output_files_id_names_its_batch():
    batch_id = "batch_" + "b" * 44
    for which in (OUTPUT, ERRORS):
        assert batch_of_file(output_file_id(batch_id, which)) == (batch_id, which)
    assert batch_of_file("file-" + "c" * 44) is None
    assert batch_of_file("file--output") is None


async def test_a_batch_is_stored_listed_for_its_owner_and_read_back():
    redis = fake_redis_factory(fakeredis.FakeServer())(None)
    store = BatchStore(redis, ChunkStore(redis))
    made = record(metadata={"k": "v"})
    await store.create(made)
    assert await store.get(made.batch_id) == made
    assert await redis.zrange(keys.owner_batches("o"), 0, -1) == [made.batch_id.encode()]
    assert len(await redis.zrange(keys.owner_files("o"), 0, -1)) == 2  # its output and error files, once ready
    await store.cancel(made, withdrawn_chunks=2)
    cancelled = await store.get(made.batch_id)
    assert cancelled.status() == "cancelled" and cancelled.finished_at is not None
    body = cancelled.as_object()
    assert body["cancelled_at"] == cancelled.finished_at and body["request_counts"] == {
        "total": 4,
        "completed": 0,
        "failed": 0,
    }
    await redis.hset(keys.job("embjob_1"), mapping={"owner": "o"})
    assert await store.get("embjob_1") is None  # a job's record is not a batch
    await redis.aclose()
