"""Continuous micro-batching of sequences from many concurrent requests for one model.

While the model encodes a batch, new sequences queue up; the moment it is free, the next batch takes what
is waiting, bounded by ``max_batch_size`` sequences and ``max_batch_tokens`` padded tokens. Nothing sleeps:
a lone request at low load is encoded at once, and under load batches grow by themselves.

**Sizing** (``worker.models.device_budget``). A batch is bounded by padded tokens (longest sequence x sequences),
what a forward pass costs in time and memory. On the CPU the limits are measured defaults (32 sequences, 4,096
tokens: long texts run slower in bigger batches there). On a GPU the token budget is what fits in the memory the
model leaves free, measured by one probe forward at load, at most 65,536 tokens (past that a GPU is compute bound and
bigger batches only answer later), and the sequence cap follows it (one per 32 tokens, 32 to 512): the tokens are
the bound, the cap only limits the host work of very short texts. ``MAX_BATCH_TOKENS`` / ``MAX_BATCH_SIZE`` override.

**Out of memory.** A batch that fails is retried in halves down to single sequences, so a poisonous input (or a
batch too big for the GPU's memory) fails only the request it belongs to; a failure that persists reaches every
request in the batch. A batch that ran out of memory also lowers the token budget to half its padded tokens
(logged, ``embeddings_batch_token_budget``), so the estimate that let it through is not trusted again; the budget
never grows back while the model stays loaded.

**Overlap** (``overlap=True``, on a GPU). A model may be given as two halves, ``collate`` (host work: padding, and on
a GPU pinning and a ``non_blocking`` copy to the device, see ``worker.models.transfers``) and ``run`` (forward pass
and copy back, one synchronize). While batch N runs, the loop takes batch N+1 from what is waiting (or from the
first sequence to arrive) and collates it on a second thread, so the GPU does not wait for the host between
batches. The price is that batch N+1 is formed a forward pass earlier, from fewer waiting sequences; on the CPU,
where ``collate`` is only padding and the cores are the forward pass's, there is nothing to win, so the loop
collates and runs each batch together, as it always has. The vectors are the same either way: ``run(collate(b))``
is ``encode(b)``. A plain ``encode`` function works too, as one stage.

Requests whose caller has gone (their future cancelled) or whose deadline has passed are dropped when the next
batch is formed (one clock read a batch, not a timer a request). The loop restarts itself if it ever dies.

A sequence is whatever the encoder takes, sized by its tokens: an embedding model's token ids, a reranker's (query,
document) pair (``worker.models.reranker.PairTokens``). Sequences carry a ``group``: only sequences of one group
share a batch, and the encoder is told the group. Models whose pooling leaves a prompt's tokens out group sequences
by the prompt's length, which their pooling needs for a whole batch; for every other model all sequences are in
group 0.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Sequence, Sized
from concurrent.futures import Executor
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from shared import tracing
from shared.clock import now_ms
from shared.errors import ErrorKind, ServiceError
from worker import metrics

log = logging.getLogger(__name__)

#: one sequence of model input, as the encoder takes it; ``len()`` is its tokens
Item = TypeVar("Item", bound=Sized)
ItemIn = TypeVar("ItemIn", bound=Sized, contravariant=True)
#: encodes a batch of sequences of one group: (sequences, group) -> one row per sequence
EncodeFn = Callable[[Sequence[Item], int], np.ndarray]


class Stages(Protocol[ItemIn]):
    """A model as two halves: ``run(collate(batch, group))`` is its encoding of ``batch``."""

    def collate(self, batch: Sequence[ItemIn], group: int, /) -> Any: ...

    def run(self, collated: Any, /) -> np.ndarray: ...


class _OneStage(Generic[Item]):
    """An ``EncodeFn`` as ``Stages``: collating only remembers the batch."""

    def __init__(self, encode: EncodeFn[Item]) -> None:
        self._encode = encode

    def collate(self, batch: Sequence[Item], group: int, /) -> tuple[Sequence[Item], int]:
        return batch, group

    def run(self, collated: tuple[Sequence[Item], int], /) -> np.ndarray:
        return self._encode(*collated)


#: how far past the oldest waiting sequence a batch may look for sequences of similar length
_LOOKAHEAD_BATCHES = 4


@dataclasses.dataclass(slots=True)
class BatchStats:
    """The largest batch (by sequences) that served a request, and the model time it waited on."""

    batch_size: int = 0
    batch_requests: int = 0
    inference_ms: float = 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class Encoded:
    vectors: np.ndarray
    stats: BatchStats


class _Request:
    __slots__ = ("deadline_ms", "future", "remaining", "stats", "trace", "vectors")

    def __init__(self, size: int, deadline_ms: int | None) -> None:
        self.future: asyncio.Future[Encoded] = asyncio.get_running_loop().create_future()
        self.vectors: np.ndarray | None = None
        self.remaining = size
        self.stats = BatchStats()
        self.deadline_ms = deadline_ms
        #: the submitter's span, which the batches serving it link to (None: not traced)
        self.trace = tracing.current_span_context()

    def still_wanted(self, now_ms: int) -> bool:
        """False once its caller has gone or its deadline has passed (the caller then learns of it)."""
        if self.future.done():
            return False
        if self.deadline_ms is not None and now_ms > self.deadline_ms:
            self.fail(ServiceError(ErrorKind.TIMEOUT, "the request's deadline passed before it was encoded"))
            return False
        return True

    def deliver(self, index: int, vector: np.ndarray) -> None:
        if self.future.done():
            return
        if self.vectors is None:
            # a multi-vector model's row is a (tokens, dimensions) array, its length its own: kept as objects
            multi = vector.ndim != 1
            self.vectors = np.empty(
                self.remaining if multi else (self.remaining, vector.shape[0]), dtype=object if multi else np.float32
            )
        self.vectors[index] = vector
        self.remaining -= 1
        if self.remaining == 0:
            self.future.set_result(Encoded(self.vectors, self.stats))

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


@dataclasses.dataclass(slots=True)
class _Sequence(Generic[Item]):
    tokens: Item
    request: _Request
    index: int
    group: int


@dataclasses.dataclass(slots=True)
class _Next(Generic[Item]):
    """A batch taken while the one before it ran, collated (``collated``) unless collating it failed (None)."""

    batch: list[_Sequence[Item]]
    collated: Any = None


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"  # torch's, without torch


class MicroBatcher(Generic[Item]):
    def __init__(
        self,
        model: EncodeFn[Item] | Stages[Item],
        *,
        executor: Executor | None,
        max_batch_size: int,
        max_batch_tokens: int,
        name: str = "model",
        overlap: bool = False,
    ) -> None:
        """``model``: an encode function, or ``Stages``. ``overlap``: collate the next batch while one runs (the
        executor needs two threads)."""
        self._stages: Stages[Item] = _OneStage(model) if callable(model) else model
        self._executor = executor
        self._overlap = overlap
        self._max_batch_size = max_batch_size
        self._max_batch_tokens = max_batch_tokens
        self._name = name
        metrics.BATCH_TOKEN_BUDGET.labels(name).set(max_batch_tokens)
        #: the batch taken and collated while the previous one ran
        self._next: _Next[Item] | None = None
        #: sequences of synchronous requests, served first; then those of asynchronous jobs' chunks
        self._urgent: collections.deque[_Sequence[Item]] = collections.deque()
        self._background: collections.deque[_Sequence[Item]] = collections.deque()
        self._work = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._closed = False
        self.busy = False

    @property
    def pending(self) -> int:
        return len(self._urgent) + len(self._background) + (len(self._next.batch) if self._next else 0)

    @property
    def max_batch_tokens(self) -> int:
        return self._max_batch_tokens

    async def submit(
        self,
        sequences: Sequence[Item],
        *,
        group: int | Sequence[int] = 0,
        urgent: bool = True,
        deadline_ms: int | None = None,
    ) -> Encoded:
        """Vectors for ``sequences`` (model inputs, special tokens included), in order; a TIMEOUT ServiceError
        if no batch took them by ``deadline_ms`` (epoch milliseconds). ``group``: of every sequence, or of each
        (a request of texts and images: their batches differ)."""
        if self._closed:
            raise ServiceError(ErrorKind.SERVICE_UNAVAILABLE, "the worker is shutting down")
        if not sequences:
            raise ValueError("no sequences to encode")
        self._ensure_loop()
        request = _Request(len(sequences), deadline_ms)
        waiting = self._urgent if urgent else self._background
        groups = [group] * len(sequences) if isinstance(group, int) else group
        waiting.extend(  # a list first: a wrong number of groups fails before any sequence waits
            [_Sequence(tokens, request, i, g) for i, (tokens, g) in enumerate(zip(sequences, groups, strict=True))]
        )
        self._work.set()
        try:
            return await request.future
        except asyncio.CancelledError:
            request.future.cancel()  # its sequences not yet batched are dropped
            raise

    async def close(self) -> None:
        self._closed = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.gather(self._loop_task, return_exceptions=True)
        gone = ServiceError(ErrorKind.SERVICE_UNAVAILABLE, "the worker is shutting down")
        taken = self._next.batch if self._next else []
        self._next = None
        for waiting in (taken, self._urgent, self._background):
            for sequence in waiting:
                sequence.request.fail(gone)
            waiting.clear()
        metrics.BATCH_TOKEN_BUDGET.remove(self._name)

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher:{self._name}")
            self._loop_task.add_done_callback(self._on_loop_exit)

    def _on_loop_exit(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._closed:
            return
        log.error("batch loop for %s stopped: %r; restarting", self._name, task.exception())
        if self.pending:
            self._ensure_loop()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            current, self._next = self._next, None
            if current is None:
                batch = self._take_batch()
                if not batch:
                    self._work.clear()
                    await self._work.wait()
                    continue
                current = _Next(batch)  # collated with its run, in one executor call
            batch = current.batch
            requests = {id(s.request): s.request for s in batch}.values()
            self.busy = True
            started = time.perf_counter()
            started_ns = time.time_ns()
            running = loop.run_in_executor(
                self._executor, self._run_timed, [s.tokens for s in batch], batch[0].group, current.collated
            )
            try:
                if self._overlap:
                    self._next = await self._collate_next(running)
                outcomes, forward_ns = await running
            except Exception:  # not the model: the executor itself failed
                log.exception("running a batch of %d for %s failed", len(batch), self._name)
                error = ServiceError(ErrorKind.INTERNAL, "the worker failed to encode this batch")
                for request in requests:
                    request.fail(error)
                continue
            finally:
                self.busy = False
            elapsed_ms = (time.perf_counter() - started) * 1000
            padded_tokens = len(batch) * max(len(s.tokens) for s in batch)
            metrics.BATCH_SIZE.labels(self._name).observe(len(batch))
            metrics.BATCH_TOKENS.labels(self._name).observe(padded_tokens)
            metrics.BATCH_REQUESTS.labels(self._name).observe(len(requests))
            metrics.INFERENCE_SECONDS.labels(self._name).observe(elapsed_ms / 1000)
            for request in requests:
                stats = request.stats
                stats.inference_ms += elapsed_ms
                if len(batch) > stats.batch_size:
                    stats.batch_size, stats.batch_requests = len(batch), len(requests)
            for sequence, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    sequence.request.fail(
                        ServiceError(ErrorKind.INTERNAL, f"the model failed to encode input {sequence.index}")
                    )
                else:
                    sequence.request.deliver(sequence.index, outcome)
            self._trace(batch, requests, started_ns, forward_ns, padded_tokens)

    async def _collate_next(self, running: asyncio.Future[Any]) -> _Next[Item] | None:
        """While ``running`` runs: the next batch, from what waits or the first sequence to arrive, collated on
        another thread; None if nothing came before ``running`` ended."""
        loop = asyncio.get_running_loop()
        while not running.done():
            batch = self._take_batch()
            if batch:
                taken = self._next = _Next(batch)  # counted as pending, and failed by close, from now on
                tokens = [s.tokens for s in batch]
                try:
                    taken.collated = await loop.run_in_executor(
                        self._executor, self._stages.collate, tokens, batch[0].group
                    )
                except Exception:  # collated again with its run, where a failure is isolated to its input
                    log.debug("collating a batch of %d for %s failed", len(batch), self._name, exc_info=True)
                return taken
            self._work.clear()
            arrival = asyncio.ensure_future(self._work.wait())
            try:
                await asyncio.wait((arrival, running), return_when=asyncio.FIRST_COMPLETED)
            finally:
                arrival.cancel()
        return None

    def _trace(
        self,
        batch: list[_Sequence[Item]],
        requests: Iterable[_Request],
        started_ns: int,
        forward_ns: tuple[int, int],
        padded_tokens: int,
    ) -> None:
        links = [request.trace for request in requests if request.trace is not None]
        if not links:
            return
        attributes = {
            "embeddings.model": self._name,
            "embeddings.batch.size": len(batch),
            "embeddings.batch.requests": len(links),
            "embeddings.batch.padded_tokens": padded_tokens,
        }
        tracing.record_batch(
            links, started_ns=started_ns, forward=forward_ns, ended_ns=time.time_ns(), attributes=attributes
        )

    def _run_timed(
        self, batch: Sequence[Item], group: int, collated: Any
    ) -> tuple[Sequence[np.ndarray | Exception], tuple[int, int]]:
        """``_run_isolating``, with when it ran (epoch ns). Runs in the executor."""
        started_ns = time.time_ns()
        outcomes = self._run_isolating(batch, group, collated)
        return outcomes, (started_ns, time.time_ns())

    def _run_isolating(
        self, batch: Sequence[Item], group: int, collated: Any = None
    ) -> Sequence[np.ndarray | Exception]:
        """Encode ``batch`` (``collated`` already, unless None); if that fails, encode its halves, down to single
        sequences.

        So a poisonous input fails alone, and an out-of-memory batch is retried smaller (and lowers the budget).
        Runs in the executor.
        """
        try:
            if collated is None:
                collated = self._stages.collate(batch, group)
            return list(self._stages.run(collated))
        except Exception as exc:
            del collated  # an out-of-memory batch's device tensors go before its halves run
            if _out_of_memory(exc):
                self._lower_budget(len(batch) * max(map(len, batch)))
            if len(batch) == 1:
                log.warning("%s failed to encode a sequence of %d tokens: %r", self._name, len(batch[0]), exc)
                return [exc]
            log.warning("%s failed a batch of %d (%r); retrying it in halves", self._name, len(batch), exc)
            middle = len(batch) // 2
            return [*self._run_isolating(batch[:middle], group), *self._run_isolating(batch[middle:], group)]

    def _lower_budget(self, padded_tokens: int) -> None:
        """A batch of ``padded_tokens`` ran out of memory: no later batch gets more than half of it."""
        metrics.BATCH_OUT_OF_MEMORY.labels(self._name).inc()
        lowered = max(1, padded_tokens // 2)
        if lowered >= self._max_batch_tokens:
            return
        log.warning(
            "%s ran out of memory at %d padded tokens; batches now hold at most %d (was %d)",
            *(self._name, padded_tokens, lowered, self._max_batch_tokens),
        )
        self._max_batch_tokens = lowered  # one int, read by the loop's thread: atomic
        metrics.BATCH_TOKEN_BUDGET.labels(self._name).set(lowered)

    def _take_batch(self) -> list[_Sequence[Item]]:
        """The oldest waiting sequence, plus the waiting ones of its group nearest it in length that fit the bounds.

        Synchronous sequences go first, in batches of their own: a request someone waits on is never slowed by
        background work beyond the batch already running.
        """
        now = now_ms()
        for waiting in (self._urgent, self._background):
            while waiting and not waiting[0].request.still_wanted(now):
                waiting.popleft()
        waiting = self._urgent or self._background
        if not waiting:
            return []
        head = waiting.popleft()
        lookahead = min(len(waiting), _LOOKAHEAD_BATCHES * self._max_batch_size)
        window = [s for s in (waiting.popleft() for _ in range(lookahead)) if s.request.still_wanted(now)]
        batch = [head]
        width = len(head.tokens)
        for sequence in sorted(window, key=lambda s: abs(len(s.tokens) - len(head.tokens))):
            if sequence.group != head.group:
                continue
            if len(batch) >= self._max_batch_size:
                break
            new_width = max(width, len(sequence.tokens))
            if new_width * (len(batch) + 1) <= self._max_batch_tokens:
                batch.append(sequence)
                width = new_width
        taken = {id(s) for s in batch}
        waiting.extendleft(reversed([s for s in window if id(s) not in taken]))
        return batch
