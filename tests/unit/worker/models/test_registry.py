import asyncio

import pytest

from shared.errors import ErrorKind, ServiceError
from tests.fakes import FAKE_DIM, FakeEncoder, Loader, make_registry
from worker.models import device_budget
from worker.models.registry import ModelRegistry


async def test_concurrent_requests_share_one_load():
    loader = Loader()
    loader.release.clear()
    registry = make_registry(loader)
    waiters = [asyncio.create_task(registry.get("a")) for _ in range(5)]
    await asyncio.sleep(0.02)
    loader.release.set()
    models = await asyncio.wait_for(asyncio.gather(*waiters), 5)
    assert loader.calls == ["a"]
    assert len({id(m) for m in models}) == 1
    assert registry.loaded_names() == ["a"]
    await registry.close()


async def test_failed_load_fails_fast_afterwards_and_other_models_still_load():
    loader = Loader(failing={"bad"})
    registry = make_registry(loader)
    for _ in range(3):
        with pytest.raises(ServiceError) as info:
            await registry.get("bad")
        assert info.value.kind is ErrorKind.MODEL_NOT_FOUND
    assert loader.calls == ["bad"]
    assert (await registry.get("good")).name == "good"
    await registry.close()


async def test_unexpected_load_failure_does_not_leak_details():
    registry = make_registry(Loader())
    with pytest.raises(ServiceError) as info:
        await registry.get("crash")
    assert info.value.kind is ErrorKind.MODEL_UNAVAILABLE
    assert "secret" not in info.value.message


async def test_least_recently_used_idle_model_is_unloaded():
    registry = make_registry(Loader(), max_loaded=2)
    await registry.get("a")
    await registry.get("b")
    await registry.get("a")
    await registry.get("c")
    assert sorted(registry.loaded_names()) == ["a", "c"]
    await registry.close()


async def test_loaded_model_encodes_through_its_batcher():
    registry = make_registry(Loader())
    model = await registry.get("a")
    encoded = await asyncio.wait_for(model.batcher.submit([[1], [2]]), 5)
    assert encoded.vectors.shape == (2, FAKE_DIM)
    await registry.close()


class StagedCudaEncoder(FakeEncoder):
    """A ``FakeEncoder`` on a (pretend) GPU, split into ``collate`` and ``run``."""

    device = "cuda:0"
    max_seq_length = 64

    def __init__(self) -> None:
        super().__init__()
        self.collated = 0

    def collate(self, batch, group=0):
        self.collated += 1
        return batch, group

    def run(self, collated):
        return self.encode(*collated)


class ForwardingWrapper:
    """Forwards every attribute to the model it wraps, as ``worker.models.faults`` does, with its own ``encode``."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.encoded = 0

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def encode(self, batch, prompt_length=0):
        self.encoded += 1
        return self._inner.encode(batch, prompt_length)


class FakeMemory:
    def __init__(self) -> None:
        self.peak = 0

    def free_bytes(self):
        return 8 * 2**30

    def start_peak(self):
        self.peak = 0
        return 0

    def peak_bytes(self):
        return 4096 * 2**20  # about 1 MiB a token of the probe's 4,096


async def test_a_gpu_model_is_sized_by_its_probe_and_collated_ahead_on_a_second_thread(monkeypatch):
    monkeypatch.setattr(device_budget, "TorchCudaMemory", lambda device: FakeMemory())
    encoder = StagedCudaEncoder()
    registry = ModelRegistry(lambda name: encoder, max_loaded=2, failure_ttl_s=60)
    model = await registry.get("gpu")
    expected = 8 * 2**30 * device_budget.MEMORY_SHARE / 2**20  # about: the probe's sequences are 65 tokens here
    assert model.batcher.max_batch_tokens == pytest.approx(expected, rel=1e-3)
    assert model.batcher._max_batch_size == device_budget.sequences_for(model.batcher.max_batch_tokens)
    assert model.batcher._overlap and model.executor._max_workers == 2
    collated_before = encoder.collated
    encoded = await asyncio.wait_for(model.batcher.submit([[1], [2]]), 5)
    assert encoded.vectors.shape == (2, FAKE_DIM) and encoder.collated == collated_before + 1
    await registry.close()


async def test_a_cpu_model_keeps_the_cpu_limits_and_one_thread():
    registry = ModelRegistry(Loader(), max_loaded=2, failure_ttl_s=60)
    model = await registry.get("cpu")
    assert (model.batcher._max_batch_size, model.batcher.max_batch_tokens) == (32, 4096)
    assert not model.batcher._overlap and model.executor._max_workers == 1
    await registry.close()


async def test_a_wrapper_that_forwards_attributes_is_encoded_through_its_own_encode(monkeypatch):
    monkeypatch.setattr(device_budget, "TorchCudaMemory", lambda device: FakeMemory())
    wrapper = ForwardingWrapper(StagedCudaEncoder())
    registry = ModelRegistry(lambda name: wrapper, max_loaded=2, failure_ttl_s=60, max_batch_tokens=1000)
    model = await registry.get("wrapped")
    assert not model.batcher._overlap
    await asyncio.wait_for(model.batcher.submit([[1]]), 5)
    assert wrapper.encoded == 1  # its faults would fire
    await registry.close()
