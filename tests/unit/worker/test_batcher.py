import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from prometheus_client import REGISTRY

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


async def test_a_request_may_give_each_sequence_its_group_and_gets_its_rows_in_order(model, executor):
    """Texts and images of one request: their batches differ, their rows come back in the request's order."""
    batcher = make_batcher(model, executor)
    blocker = await hold_model_busy(model, batcher)
    waiter = asyncio.create_task(batcher.submit([[10], [11, 1], [12], [13, 1, 1]], group=[0, -1, 0, -1]))
    await asyncio.sleep(0.05)
    model.gate.set()
    encoded = await asyncio.wait_for(waiter, 5)
    await blocker
    assert encoded.vectors[:, 0].tolist() == [10, 11, 12, 13]
    assert sorted(zip(model.groups[1:], (sorted(s[0] for s in b) for b in model.batches[1:]), strict=True)) == [
        (-1, [11, 13]),
        (0, [10, 12]),
    ]
    with pytest.raises(ValueError, match="zip"):
        await batcher.submit([[1], [2]], group=[0])
    assert batcher.pending == 0
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


class BlockingStages:
    """``Stages`` that log what they do; ``run`` holds until ``gate`` is set. Encodes as ``FakeModel`` does."""

    def __init__(self) -> None:
        self.log: list[tuple[str, int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.running = threading.Event()
        self.collated = threading.Event()
        self.fitting_tokens = 1_000_000

    def collate(self, batch: Sequence[list[int]], group: int) -> list[list[int]]:
        self.log.append(("collate", batch[0][0]))
        self.collated.set()
        return [list(s) for s in batch]

    def run(self, collated: list[list[int]]) -> np.ndarray:
        self.log.append(("run", collated[0][0]))
        self.running.set()
        self.gate.wait(5)
        if len(collated) * max(map(len, collated)) > self.fitting_tokens:
            raise MemoryError("out of memory")
        self.log.append(("ran", collated[0][0]))
        return np.array([[s[0], len(s)] for s in collated], dtype=np.float32)


@pytest.fixture
def two_threads():
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield pool


async def start_blocked(stages: BlockingStages, batcher: MicroBatcher, first: list[int]) -> asyncio.Task:
    stages.gate.clear()
    stages.running.clear()
    task = asyncio.create_task(batcher.submit([first]))
    await asyncio.to_thread(stages.running.wait, 5)
    stages.collated.clear()
    return task


async def test_with_overlap_the_next_batch_is_collated_while_one_runs(two_threads):
    stages = BlockingStages()
    batcher = MicroBatcher(stages, executor=two_threads, max_batch_size=8, max_batch_tokens=1000, overlap=True)
    first = await start_blocked(stages, batcher, [1])
    second = asyncio.create_task(batcher.submit([[2], [2, 2]]))
    await asyncio.to_thread(stages.collated.wait, 5)
    assert stages.log == [("collate", 1), ("run", 1), ("collate", 2)]  # batch 2 collated, batch 1 still running
    assert batcher.pending == 2  # taken, not yet encoded: the registry must not unload the model
    stages.gate.set()
    assert (await asyncio.wait_for(first, 5)).vectors.tolist() == [[1, 1]]
    assert (await asyncio.wait_for(second, 5)).vectors.tolist() == [[2, 1], [2, 2]]
    assert stages.log[3:] == [("ran", 1), ("run", 2), ("ran", 2)]  # its run did not collate it again
    await batcher.close()


async def test_without_overlap_a_batch_is_collated_only_when_the_model_is_free(executor):
    stages = BlockingStages()
    batcher = MicroBatcher(stages, executor=executor, max_batch_size=8, max_batch_tokens=1000)
    first = await start_blocked(stages, batcher, [1])
    second = asyncio.create_task(batcher.submit([[2]]))
    third = asyncio.create_task(batcher.submit([[3]]))
    await asyncio.sleep(0.05)
    assert stages.log == [("collate", 1), ("run", 1)]
    stages.gate.set()
    await asyncio.wait_for(asyncio.gather(first, second, third), 5)
    # what arrived meanwhile shares one batch, taken when the model was free, as the CPU always has
    assert stages.log[2:] == [("ran", 1), ("collate", 2), ("run", 2), ("ran", 2)]
    await batcher.close()


async def test_closing_fails_the_batch_collated_ahead(two_threads):
    stages = BlockingStages()
    batcher = MicroBatcher(stages, executor=two_threads, max_batch_size=8, max_batch_tokens=1000, overlap=True)
    first = await start_blocked(stages, batcher, [1])
    second = asyncio.create_task(batcher.submit([[2]]))
    await asyncio.to_thread(stages.collated.wait, 5)
    await batcher.close()
    stages.gate.set()
    with pytest.raises(ServiceError) as info:
        await asyncio.wait_for(second, 5)
    assert info.value.kind is ErrorKind.SERVICE_UNAVAILABLE
    first.cancel()


def budget_gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value("embeddings_batch_token_budget", {"model": name})


def out_of_memory_count(name: str) -> float:
    return REGISTRY.get_sample_value("embeddings_batch_out_of_memory_total", {"model": name}) or 0.0


async def test_out_of_memory_lowers_the_token_budget_to_half_of_what_failed(executor):
    stages = BlockingStages()
    stages.fitting_tokens = 2
    batcher = MicroBatcher(stages, executor=executor, max_batch_size=8, max_batch_tokens=1000, name="oom-test")
    assert budget_gauge("oom-test") == 1000
    oom_before = out_of_memory_count("oom-test")
    encoded = await asyncio.wait_for(batcher.submit([[i] for i in range(8)]), 5)
    assert encoded.vectors[:, 0].tolist() == list(range(8))
    # 8 tokens failed (budget 4), then both halves of 4 did (budget 2); the quarters of 2 fit
    assert batcher.max_batch_tokens == 2
    assert budget_gauge("oom-test") == 2
    assert out_of_memory_count("oom-test") - oom_before == 3
    stages.log.clear()
    await asyncio.wait_for(batcher.submit([[i] for i in range(6)]), 5)
    assert [entry for entry in stages.log if entry[0] == "run"] == [("run", 0), ("run", 2), ("run", 4)]  # no retries
    await batcher.close()
    assert budget_gauge("oom-test") is None  # a closed batcher's gauge goes with it


async def test_a_poisonous_input_does_not_lower_the_budget(model, executor):
    batcher = make_batcher(model, executor, tokens=1000)
    model.poison = 666
    with pytest.raises(ServiceError):
        await asyncio.wait_for(batcher.submit([[1], [666], [2], [3]]), 5)
    assert batcher.max_batch_tokens == 1000
    await batcher.close()


async def test_a_multi_vector_models_rows_of_their_own_length_come_back_as_objects(executor):
    """A multi-vector model answers a (tokens, dimensions) array per sequence, as many tokens as its own: each
    request gets its own arrays, whatever it was batched with."""

    def encode(batch: Sequence[list[int]], group: int) -> np.ndarray:
        rows = np.empty(len(batch), dtype=object)
        for index, sequence in enumerate(batch):
            rows[index] = np.full((len(sequence), 2), sequence[0], dtype=np.float32)
        return rows

    batcher = MicroBatcher(encode, executor=executor, max_batch_size=8, max_batch_tokens=1000)
    try:
        first, second = await asyncio.gather(batcher.submit([[1, 1, 1], [2]]), batcher.submit([[3, 3]]))
    finally:
        await batcher.close()
    assert [row.shape for row in first.vectors] == [(3, 2), (1, 2)] and first.vectors[1][0, 0] == 2
    assert second.vectors[0].tolist() == [[3.0, 3.0], [3.0, 3.0]]
