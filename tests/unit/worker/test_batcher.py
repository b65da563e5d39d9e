import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from shared.clock import now_ms
from shared.errors import ErrorKind, ServiceError
from worker.batcher import MicroBatcher


class FakeModel:
    """Encodes a sequence as [first token, length]; can be held busy to let requests pile up."""

    def __init__(self) -> None:
        self.batches: list[list[list[int]]] = []
        self.groups: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.broken = False
        self.poison = -1
        self.max_fitting_batch = 1_000_000

    def encode(self, batch: Sequence[list[int]], group: int) -> np.ndarray:
        self.batches.append([list(s) for s in batch])
        self.groups.append(group)
        self.started.set()
        self.gate.wait(5)
        if self.broken or any(self.poison in s for s in batch):
            raise RuntimeError("secret internal detail")
        if len(batch) > self.max_fitting_batch:
            raise MemoryError("out of memory")
        return np.array([[s[0], len(s)] for s in batch], dtype=np.float32)


@pytest.fixture
def executor():
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool


@pytest.fixture
def model() -> FakeModel:
    return FakeModel()


def make_batcher(model: FakeModel, executor, *, size: int = 8, tokens: int = 1000) -> MicroBatcher:
    return MicroBatcher(model.encode, executor=executor, max_batch_size=size, max_batch_tokens=tokens)


async def hold_model_busy(model: FakeModel, batcher: MicroBatcher) -> asyncio.Task:
    """Start a request that occupies the model until ``model.gate`` is set."""
    model.gate.clear()
    model.started.clear()
    blocker = asyncio.create_task(batcher.submit([[999]]))
    await asyncio.to_thread(model.started.wait, 5)
    return blocker


async def test_lone_request_is_encoded_at_once_in_order(model, executor):
    batcher = make_batcher(model, executor)
    encoded = await asyncio.wait_for(batcher.submit([[1, 2, 3], [4], [5, 6]]), 5)
    assert encoded.vectors.tolist() == [[1, 3], [4, 1], [5, 2]]
    assert encoded.stats.batch_size == 3 and encoded.stats.batch_requests == 1
    await batcher.close()


async def test_requests_arriving_while_busy_share_the_next_batch(model, executor):
    batcher = make_batcher(model, executor)
    blocker = await hold_model_busy(model, batcher)
    waiters = [asyncio.create_task(batcher.submit([[i, i]])) for i in range(5)]
    await asyncio.sleep(0.05)
    assert len(model.batches) == 1  # nothing runs while the model is busy
    model.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*waiters), 5)
    await blocker
    assert len(model.batches) == 2 and len(model.batches[1]) == 5
    for i, encoded in enumerate(results):
        assert encoded.vectors.tolist() == [[i, 2]]
        assert encoded.stats.batch_requests == 5
    await batcher.close()


async def test_only_sequences_of_one_group_share_a_batch_and_the_encoder_learns_the_group(model, executor):
    batcher = make_batcher(model, executor)
    blocker = await hold_model_busy(model, batcher)
    waiters = [asyncio.create_task(batcher.submit([[i, i]], group=i % 2)) for i in range(6)]
    await asyncio.sleep(0.05)
    model.gate.set()
    await asyncio.wait_for(asyncio.gather(*waiters), 5)
    await blocker
    assert [sorted(s[0] for s in b) for b in model.batches[1:]] == [[0, 2, 4], [1, 3, 5]]
    assert model.groups[1:] == [0, 1]
    await batcher.close()


async def test_batch_size_bounds_each_batch(model, executor):
    batcher = make_batcher(model, executor, size=3)
    blocker = await hold_model_busy(model, batcher)
    waiter = asyncio.create_task(batcher.submit([[i] for i in range(7)]))
    await asyncio.sleep(0.01)
    model.gate.set()
    encoded = await asyncio.wait_for(waiter, 5)
    await blocker
    assert [len(b) for b in model.batches[1:]] == [3, 3, 1]
    assert encoded.vectors[:, 0].tolist() == list(range(7))
    await batcher.close()


async def test_token_budget_bounds_padded_tokens(model, executor):
    batcher = make_batcher(model, executor, size=100, tokens=40)
    blocker = await hold_model_busy(model, batcher)
    sequences = [[1] * 10] * 10
    waiter = asyncio.create_task(batcher.submit(sequences))
    await asyncio.sleep(0.01)
    model.gate.set()
    encoded = await asyncio.wait_for(waiter, 5)
    await blocker
    assert encoded.vectors.shape == (10, 2)
    assert [len(b) for b in model.batches[1:]] == [4, 4, 2]
    assert all(max(map(len, b)) * len(b) <= 40 for b in model.batches[1:])
    await batcher.close()


async def test_batch_groups_sequences_of_similar_length(model, executor):
    batcher = make_batcher(model, executor, size=2, tokens=10_000)
    blocker = await hold_model_busy(model, batcher)
    lengths = [50, 3, 48, 2]
    waiter = asyncio.create_task(batcher.submit([[n] * n for n in lengths]))
    await asyncio.sleep(0.01)
    model.gate.set()
    encoded = await asyncio.wait_for(waiter, 5)
    await blocker
    assert [sorted(map(len, b)) for b in model.batches[1:]] == [[48, 50], [2, 3]]
    assert encoded.vectors[:, 1].tolist() == lengths  # still in request order
    await batcher.close()


async def test_persistent_failure_reaches_every_waiter_and_the_loop_goes_on(model, executor):
    batcher = make_batcher(model, executor)
    blocker = await hold_model_busy(model, batcher)
    waiters = [asyncio.create_task(batcher.submit([[i]])) for i in range(3)]
    await asyncio.sleep(0.01)
    model.broken = True
    model.gate.set()
    outcomes = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 5)
    await asyncio.gather(blocker, return_exceptions=True)
    assert all(isinstance(o, ServiceError) for o in outcomes)
    for failure in outcomes:
        assert failure.kind is ErrorKind.INTERNAL
        assert "secret" not in failure.message
    model.broken = False
    encoded = await asyncio.wait_for(batcher.submit([[7]]), 5)
    assert encoded.vectors.tolist() == [[7, 1]]
    await batcher.close()


async def test_poisonous_input_fails_only_its_request(model, executor):
    batcher = make_batcher(model, executor)
    blocker = await hold_model_busy(model, batcher)
    model.poison = 666
    good = [asyncio.create_task(batcher.submit([[i], [i + 10]])) for i in range(3)]
    bad = asyncio.create_task(batcher.submit([[1], [666]]))
    await asyncio.sleep(0.01)
    model.gate.set()
    await blocker
    for i, waiter in enumerate(good):
        assert (await asyncio.wait_for(waiter, 5)).vectors[:, 0].tolist() == [i, i + 10]
    with pytest.raises(ServiceError) as info:
        await asyncio.wait_for(bad, 5)
    assert info.value.kind is ErrorKind.INTERNAL and "input 1" in info.value.message
    assert len(model.batches[1]) == 8  # they did share a batch before it was split


async def test_batch_too_big_for_memory_is_retried_smaller(model, executor):
    batcher = make_batcher(model, executor)
    model.max_fitting_batch = 2
    encoded = await asyncio.wait_for(batcher.submit([[i] for i in range(8)]), 5)
    assert encoded.vectors[:, 0].tolist() == list(range(8))
    assert [len(b) for b in model.batches] == [8, 4, 2, 2, 4, 2, 2]
    await batcher.close()


async def test_cancelled_waiter_is_dropped_before_encoding(model, executor):
    batcher = make_batcher(model, executor)
    blocker = await hold_model_busy(model, batcher)
    gone = asyncio.create_task(batcher.submit([[111], [112]]))
    kept = asyncio.create_task(batcher.submit([[222]]))
    await asyncio.sleep(0.01)
    gone.cancel()
    await asyncio.sleep(0)
    model.gate.set()
    encoded = await asyncio.wait_for(kept, 5)
    await blocker
    assert encoded.vectors.tolist() == [[222, 1]]
    encoded_tokens = {s[0] for batch in model.batches for s in batch}
    assert not encoded_tokens & {111, 112}
    await batcher.close()


async def test_request_past_its_deadline_is_dropped_with_a_timeout(model, executor):
    batcher = make_batcher(model, executor)
    blocker = await hold_model_busy(model, batcher)
    late = asyncio.create_task(batcher.submit([[333]], deadline_ms=now_ms() + 20))
    on_time = asyncio.create_task(batcher.submit([[444]], deadline_ms=now_ms() + 60_000))
    await asyncio.sleep(0.05)
    model.gate.set()
    with pytest.raises(ServiceError) as info:
        await asyncio.wait_for(late, 5)
    assert info.value.kind is ErrorKind.TIMEOUT
    assert (await asyncio.wait_for(on_time, 5)).vectors.tolist() == [[444, 1]]
    await blocker
    assert 333 not in {s[0] for batch in model.batches for s in batch}
    await batcher.close()


async def test_close_fails_waiting_requests(model, executor):
    batcher = make_batcher(model, executor)
    blocker = await hold_model_busy(model, batcher)
    waiter = asyncio.create_task(batcher.submit([[1]]))
    await asyncio.sleep(0.01)
    closing = asyncio.create_task(batcher.close())
    model.gate.set()
    await closing
    with pytest.raises(ServiceError) as info:
        await asyncio.wait_for(waiter, 5)
    assert info.value.kind is ErrorKind.SERVICE_UNAVAILABLE
    blocker.cancel()
    with pytest.raises(ServiceError):
        await batcher.submit([[1]])


async def test_synchronous_sequences_go_before_background_ones(model, executor):
    batcher = make_batcher(model, executor, size=4)
    blocker = await hold_model_busy(model, batcher)
    background = asyncio.create_task(batcher.submit([[100 + i] for i in range(6)], urgent=False))
    await asyncio.sleep(0)
    urgent = asyncio.create_task(batcher.submit([[1], [2]]))
    await asyncio.sleep(0.01)
    model.gate.set()
    await asyncio.wait_for(asyncio.gather(blocker, urgent, background), 5)
    # the later synchronous request gets the next batch to itself; background work follows
    assert [[s[0] for s in batch] for batch in model.batches[1:]] == [[1, 2], [100, 101, 102, 103], [104, 105]]
