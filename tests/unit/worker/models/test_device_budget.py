"""worker.models.device_budget: measured CPU defaults; on a GPU a token budget from the memory one probe forward
shows, with the CUDA memory calls faked; the sequence cap and the prefetch follow the device."""

from __future__ import annotations

import pytest

from worker.models import device_budget
from worker.models.device_budget import (
    CPU_LIMITS,
    CUDA_FALLBACK_TOKENS,
    CUDA_MAX_TOKENS,
    MEMORY_SHARE,
    BatchLimits,
    batch_limits,
    prefetch_texts,
    sequences_for,
)

GIB = 2**30


class FakeMemory:
    """A device with ``free`` bytes free on which a forward allocates ``per_token`` bytes a padded token."""

    def __init__(self, free: int, per_token: int) -> None:
        self.free, self.per_token = free, per_token
        self.allocated = 5 * GIB  # the weights
        self.peak = self.allocated
        self.read = False

    def free_bytes(self) -> int:
        self.read = True
        return self.free

    def start_peak(self) -> int:
        self.read = True
        self.peak = self.allocated
        return self.allocated

    def peak_bytes(self) -> int:
        return self.peak


class FakeCudaEncoder:
    kind = "embedding"
    device = "cuda:0"
    max_seq_length = 128

    def __init__(self, memory: FakeMemory, fail: BaseException | None = None) -> None:
        self.memory, self.fail = memory, fail
        self.batches: list[list[list[int]]] = []

    def tokenize(self, texts):
        return [[7] for _ in texts]

    def prepare(self, ids, *, truncate, param):
        return [0, *ids[: self.max_seq_length - 2], 1]

    def encode(self, batch, prompt_length=0):
        self.batches.append(batch)
        if self.fail is not None:
            raise self.fail
        self.memory.peak += len(batch) * max(map(len, batch)) * self.memory.per_token


class OutOfMemoryError(RuntimeError):
    """Named as torch's is, which is what the probe goes by."""


def test_cpu_keeps_its_measured_limits_and_never_probes():
    memory = FakeMemory(free=10 * GIB, per_token=1)

    class OnCpu(FakeCudaEncoder):
        device = "cpu"

    model = OnCpu(memory)
    assert batch_limits(model, None, None, memory) == CPU_LIMITS == BatchLimits(32, 4096)
    assert not memory.read and not model.batches


def test_on_a_gpu_the_budget_is_what_fits_in_the_free_memory_at_the_probes_rate():
    memory = FakeMemory(free=10 * GIB, per_token=1 << 20)  # 1 MiB a padded token
    model = FakeCudaEncoder(memory)
    limits = batch_limits(model, None, None, memory)
    assert limits.max_batch_tokens == int(10 * GIB * MEMORY_SHARE / (1 << 20))  # 7168
    assert limits.max_batch_size == sequences_for(limits.max_batch_tokens) == 7168 // 32
    # one forward, of sequences at the model's maximum length: the most memory a padded token ever needs
    assert len(model.batches) == 1
    assert {len(s) for s in model.batches[0]} == {128} and len(model.batches[0]) == 4096 // 128


def test_a_large_free_memory_is_capped_where_the_gpu_is_compute_bound():
    memory = FakeMemory(free=120 * GIB, per_token=10_000)
    limits = batch_limits(FakeCudaEncoder(memory), None, None, memory)
    assert limits == BatchLimits(512, CUDA_MAX_TOKENS)


def test_the_settings_override_and_max_batch_tokens_skips_the_probe():
    memory = FakeMemory(free=10 * GIB, per_token=1 << 20)
    model = FakeCudaEncoder(memory)
    assert batch_limits(model, None, 2048, memory) == BatchLimits(sequences_for(2048), 2048)
    assert not model.batches and not memory.read
    assert batch_limits(model, 64, None, memory).max_batch_size == 64


def test_a_failed_probe_falls_back_and_an_out_of_memory_one_halves_its_size():
    memory = FakeMemory(free=10 * GIB, per_token=1)
    broken = FakeCudaEncoder(memory, fail=RuntimeError("boom"))
    assert batch_limits(broken, None, None, memory).max_batch_tokens == CUDA_FALLBACK_TOKENS
    too_big = FakeCudaEncoder(memory, fail=OutOfMemoryError("CUDA out of memory"))
    assert batch_limits(too_big, None, None, memory).max_batch_tokens == 4096 // 2


def test_stand_ins_that_are_not_cpu_get_the_gpu_fallback_without_a_probe():
    class Stub:
        device = "stub"

    assert batch_limits(Stub(), None, None) == BatchLimits(512, CUDA_FALLBACK_TOKENS)


def test_the_sequence_cap_follows_the_token_budget_within_bounds():
    assert [sequences_for(t) for t in (512, 4096, 8192, 16_384, CUDA_MAX_TOKENS)] == [32, 128, 256, 512, 512]


@pytest.fixture
def fresh_prefetch():
    device_budget._device_prefetch.cache_clear()
    yield
    device_budget._device_prefetch.cache_clear()


def test_prefetch_is_the_setting_or_a_few_of_the_devices_largest_batches(fresh_prefetch, monkeypatch):
    assert prefetch_texts(7, "cuda") == 7
    assert prefetch_texts(None, "cpu") == 128  # what the setting's default was
    from worker.models import encoder

    monkeypatch.setattr(encoder, "pick_device", lambda preference: "cuda")
    assert prefetch_texts(None, "auto") == 4 * 512
