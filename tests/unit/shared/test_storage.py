"""The job store's budget: reservations admitted atomically up to it, given back by release, by expiry and by
stored chunks; the budget from a setting or from maxmemory less its headroom."""

import time

import fakeredis
import pytest

from api.jobs.store import JobStore
from shared import keys
from shared.chunks import ChunkStore
from shared.errors import ErrorKind, ServiceError
from shared.storage import StorageBudget, budget_bytes, input_bytes, results_bytes
from tests.unit.api.jobs.test_store import record


@pytest.fixture
async def redis():
    client = fakeredis.FakeAsyncRedis()
    yield client
    await client.aclose()


def later(seconds: int = 3600) -> int:
    return int(time.time()) + seconds


async def test_reservations_fit_in_the_budget_and_refuse_past_it(redis):
    budget = StorageBudget(redis)
    await budget.reserve("a", 600, later(), budget=1000)
    await budget.reserve("b", 400, later(), budget=1000)
    with pytest.raises(ServiceError) as refused:
        await budget.reserve("c", 1, later(), budget=1000)
    assert refused.value.kind is ErrorKind.INSUFFICIENT_STORAGE
    assert "the result store is full" in refused.value.message
    assert (await budget.usage(1000)).reserved == 1000
    await budget.release("a")
    await budget.reserve("c", 500, later(), budget=1000)
    assert (await budget.usage(1000)).reserved == 900


async def test_no_budget_refuses_nothing(redis):
    await StorageBudget(redis).reserve("a", 10**15, later(), budget=0)


async def test_expired_reservations_are_given_back_by_the_next_one(redis):
    budget = StorageBudget(redis)
    await budget.reserve("old", 900, int(time.time()) - 1, budget=1000)
    await budget.reserve("new", 900, later(), budget=1000)
    assert (await budget.usage(1000)).reserved == 900
    assert await redis.hkeys(keys.STORE_RESERVATIONS) == [b"new"]


async def test_a_stored_chunk_gives_its_inputs_share_back(redis):
    budget, store = StorageBudget(redis), JobStore(redis, ChunkStore(redis))
    await store.create(record())
    await budget.reserve("embjob_1", 10_000, later(), budget=0)
    for _ in range(2):  # counted once, given back once
        await store.chunks.done_in(
            None,
            "embjob_1",
            0,
            vectors=b"\0" * 16,
            completed=4,
            failed=0,
            prompt_tokens=4,
            expires_at_s=later(),
            input_bytes=3_000,
        )
    assert (await budget.usage(0)).reserved == 7_000


def test_sizes():
    assert results_bytes(1000, 384, 4) == 1000 * 384 * 4 + 4 * 4096
    assert input_bytes(["héllo", [1, 2, 3]]) == (6 + 16) + (12 + 16)


@pytest.mark.parametrize(
    ("setting", "maxmemory", "budget"), [(0, 64 << 20, 48 << 20), (1000, 64 << 20, 1000), (0, 0, 0), (5, 0, 5)]
)
def test_the_budget_is_the_setting_or_maxmemory_less_its_headroom(setting, maxmemory, budget):
    assert budget_bytes(setting, 0.25, maxmemory) == budget
