"""How big a model's batches may be on its device: the sequences and padded tokens of one forward pass, and how
many texts a worker claims ahead of its models.

- **CPU**: measured defaults (``CPU_LIMITS``): long texts run slower in bigger batches there, so a small budget
  costs nothing and keeps latency down.
- **CUDA**: the token budget comes from the memory the model leaves free, measured by one probe forward at load
  (``measure_token_budget``): a batch of sequences at the model's maximum length, whose peak memory per padded
  token is the most any batch of that model needs (attention grows with the length). The budget is what fits in
  ``MEMORY_SHARE`` of the free memory at that rate, at most ``CUDA_MAX_TOKENS``, where a GPU is compute bound for
  encoder-sized models and bigger batches only answer later. A memory probe, not a timing one: it is one forward,
  independent of clocks and of other work on the GPU, and right for any architecture, attention implementation
  and precision; the batcher lowers the budget further if a batch ever runs out of memory anyway.
- The sequence cap follows the token budget (``sequences_for``): it only bounds the host work of very short texts.

TEI bounds its batches by tokens only (``--max-batch-tokens``, 16,384 by default because, in its words, the
memory overhead depends on the model and it "cannot infer this number automatically"; its 32 is
``--max-client-batch-size``, inputs per client request), and runs one forward at that budget at start-up.
``MAX_BATCH_TOKENS`` and ``MAX_BATCH_SIZE`` override all of this.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class BatchLimits:
    max_batch_size: int
    max_batch_tokens: int


#: CPU: torch's long-text rate falls in bigger batches (44 texts/s at 8 x 200 words, 38 at 32) and OpenVINO's stays
#: flat (19-22 from 4 to 64)
CPU_LIMITS = BatchLimits(32, 4096)
#: a GPU whose memory could not be measured (or a stand-in encoder): TEI's default budget
CUDA_FALLBACK_TOKENS = 16_384
#: the most padded tokens a GPU batch gets, however much memory is free
CUDA_MAX_TOKENS = 65_536
#: the share of the free memory batches may use: the rest absorbs allocator fragmentation and library workspaces
MEMORY_SHARE = 0.7
#: padded tokens of the probe forward (at least one sequence of the model's maximum length)
PROBE_TOKENS = 4096
#: bounds of the sequence cap on a GPU; between them it is one sequence per ``_TOKENS_PER_SEQUENCE`` tokens
_MIN_SEQUENCES, _MAX_SEQUENCES, _TOKENS_PER_SEQUENCE = 32, 512, 32
#: batches' worth of texts a worker claims ahead of its models when ``WORKER_PREFETCH_TEXTS`` is unset
PREFETCH_BATCHES = 4


def sequences_for(tokens: int) -> int:
    """The sequence cap that goes with a GPU token budget: texts shorter than ``_TOKENS_PER_SEQUENCE`` tokens are
    bounded by it, longer ones by the tokens."""
    return min(_MAX_SEQUENCES, max(_MIN_SEQUENCES, tokens // _TOKENS_PER_SEQUENCE))


def default_limits(device: str) -> BatchLimits:
    """The limits before any measurement: CPU's, or a GPU's fallback."""
    if device == "cpu":
        return CPU_LIMITS
    return BatchLimits(sequences_for(CUDA_FALLBACK_TOKENS), CUDA_FALLBACK_TOKENS)


def prefetch_texts(configured: int | None, device_preference: str) -> int:
    """``WORKER_PREFETCH_TEXTS``, or a few of the device's largest batches (CPU: 128, GPU: 2048)."""
    if configured is not None:
        return configured
    return _device_prefetch(device_preference)


@functools.cache
def _device_prefetch(device_preference: str) -> int:
    from worker.models.encoder import pick_device  # torch: only once, and only in a worker

    device = pick_device(device_preference)
    size = CPU_LIMITS.max_batch_size if device == "cpu" else _MAX_SEQUENCES
    return PREFETCH_BATCHES * size


class DeviceMemory(Protocol):
    """What the probe reads of a CUDA device (``TorchCudaMemory``; faked in tests)."""

    def free_bytes(self) -> int: ...

    def start_peak(self) -> int:
        """Reset the peak and answer the bytes allocated now."""
        ...

    def peak_bytes(self) -> int: ...


class TorchCudaMemory:
    def __init__(self, device: str) -> None:
        import torch

        self._cuda = torch.cuda
        self._device = torch.device(device)

    def free_bytes(self) -> int:
        free, _total = self._cuda.mem_get_info(self._device)
        # blocks torch's caching allocator holds but does not use are free to batches too
        cached = self._cuda.memory_reserved(self._device) - self._cuda.memory_allocated(self._device)
        return int(free + cached)

    def start_peak(self) -> int:
        self._cuda.synchronize(self._device)
        self._cuda.reset_peak_memory_stats(self._device)
        return int(self._cuda.memory_allocated(self._device))

    def peak_bytes(self) -> int:
        self._cuda.synchronize(self._device)
        return int(self._cuda.max_memory_allocated(self._device))


def measure_token_budget(
    run: Callable[[Sequence[Any]], object],
    longest: Callable[[], Any],
    memory: DeviceMemory,
    *,
    probe_tokens: int = PROBE_TOKENS,
) -> int:
    """Padded tokens a batch may hold: ``run`` (one forward) on copies of ``longest()`` (a sequence at the model's
    maximum length) tells the peak bytes per token; the budget is what fits in ``MEMORY_SHARE`` of the free memory.

    Falls back to ``CUDA_FALLBACK_TOKENS`` if the probe fails."""
    batch: list[Any] = []
    length = 1
    try:
        sequence = longest()
        length = max(1, len(sequence))
        batch = [sequence] * max(1, probe_tokens // length)
        before = memory.start_peak()
        run(batch)
        per_token = max(1, memory.peak_bytes() - before) / (len(batch) * length)
        free = memory.free_bytes()
    except Exception as exc:
        fallback = CUDA_FALLBACK_TOKENS
        if batch and type(exc).__name__ == "OutOfMemoryError":  # the probe itself did not fit
            fallback = max(1, len(batch) * length // 2)
        log.warning("the batch memory probe failed (%r); batches of up to %d tokens", exc, fallback)
        return fallback
    chosen = max(1, min(CUDA_MAX_TOKENS, int(free * MEMORY_SHARE / per_token)))
    log.info(
        "batch memory probe: %.0f bytes a padded token at %d tokens a sequence, %.1f GiB free: %d tokens a batch",
        *(per_token, length, free / 2**30, chosen),
    )
    return chosen


def longest_input(model: Any) -> Any:
    """A sequence at the model's maximum length, in the model's own input form (token ids, or a reranker's pair)."""
    length = int(getattr(model, "max_seq_length", 512))
    if model.kind == "embedding":
        ids = model.tokenize(["probe"])[0] or [0]
        return model.prepare(ids * length, truncate=True, param="input")
    if model.kind == "sparse":
        return model.longest_input()
    if model.kind == "multivector":
        return model.texts(["probe " * length], prompt="", task=None, truncate=True)[0]
    return model.pairs("probe", ["probe " * length], truncate=True)[0]


def batch_limits(
    model: Any, max_batch_size: int | None, max_batch_tokens: int | None, memory: DeviceMemory | None = None
) -> BatchLimits:
    """The limits for a loaded model: the settings where given, else the device's, measured on a GPU (``memory``:
    how to read it; by default torch's, for a model on CUDA). Runs a forward on a GPU: call it off the event loop."""
    device = str(model.device)
    tokens = max_batch_tokens
    if tokens is None:
        if device.startswith("cuda"):
            memory = memory or TorchCudaMemory(device)
            tokens = measure_token_budget(model.encode, lambda: longest_input(model), memory)
        else:
            tokens = default_limits(device).max_batch_tokens
    if max_batch_size is not None:
        size = max_batch_size
    else:
        size = CPU_LIMITS.max_batch_size if device == "cpu" else sequences_for(tokens)
    return BatchLimits(size, tokens)
