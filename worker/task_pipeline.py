"""The one skeleton of every task a worker runs on a model (embed and rerank; sparse, multi-vector and tokenize to
come), pure of Redis: the task's model, of the kind the task needs, loaded within its deadline; its inputs
tokenized on the event loop when small, else in a thread; the token limit; the model's micro-batcher.

A task's pipeline (``worker.pipeline``, ``worker.reranking``) subclasses ``TaskPipeline`` and says only what
differs: ``prepare`` checks the task against its model, ``sequences`` turns the task into the model's inputs and
``result`` turns the model's output into the task's result. ``run`` is the skeleton; its steps (``timeout_s``,
``off_loop``, ``within_limit``, ``batch_seen``) are there for a task that runs them another way (a batch chunk's
requests, tokenized each alone).
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable, Sequence, Sized
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, NamedTuple, ParamSpec, Protocol, TypeVar, overload

from shared import tracing
from shared.clock import now_ms
from shared.errors import ErrorKind, ServiceError
from shared.kinds import wrong_kind_message
from worker import metrics
from worker.batcher import BatchStats, Encoded
from worker.models.encoder_protocol import Encoder, Model, MultiVector, Reranker, SparseModel
from worker.models.registry import LoadedModel, ModelRegistry

if TYPE_CHECKING:
    from shared.kinds import ModelKind

#: tasks with fewer characters than this are tokenized on the event loop; a thread hop costs more than that
INLINE_TOKENIZE_CHARS = 4096


class Task(Protocol):
    """What the skeleton reads of a task: the model it names and its inputs (texts, token ids, documents)."""

    @property
    def model(self) -> str: ...

    @property
    def inputs(self) -> Sequence[Any]: ...


TaskT = TypeVar("TaskT", bound=Task)
#: what ``prepare`` found: the model as its kind, and whatever else the task needs of it (a prompt)
PlanT = TypeVar("PlanT")
#: one model input: token ids, or a tokenized (query, document) pair
ItemT = TypeVar("ItemT", bound=Sized)
ResultT = TypeVar("ResultT")
P = ParamSpec("P")
R = TypeVar("R")


class Tokenized(NamedTuple, Generic[ItemT]):
    """A task's model inputs, special tokens included, and how many tokens they hold."""

    sequences: list[ItemT]
    tokens: int


def timeout_s(deadline_ms: int | None) -> float | None:
    """Seconds left until ``deadline_ms`` (epoch ms); None for no deadline."""
    return None if deadline_ms is None else (deadline_ms - now_ms()) / 1000


async def off_loop(chars: int, work: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """``work``, tokenizing ``chars`` characters: on the event loop when they are few (a thread hop would cost
    more), else in a thread."""
    if chars < INLINE_TOKENIZE_CHARS:
        return work(*args, **kwargs)
    return await asyncio.to_thread(work, *args, **kwargs)


@overload
def model_of_kind(loaded: LoadedModel, kind: Literal["embedding"]) -> Encoder: ...
@overload
def model_of_kind(loaded: LoadedModel, kind: Literal["reranker"]) -> Reranker: ...
@overload
def model_of_kind(loaded: LoadedModel, kind: Literal["multivector"]) -> MultiVector: ...
@overload
def model_of_kind(loaded: LoadedModel, kind: Literal["sparse"]) -> SparseModel: ...
def model_of_kind(loaded: LoadedModel, kind: ModelKind) -> Model:
    """The loaded model, if it is of ``kind``; else a 400 that names its kind and the route it serves (a reranker
    is not an embedding model, nor the reverse): the one place a task meets a model of another kind
    (``shared.kinds``)."""
    model = loaded.model
    if model.kind != kind:
        raise ServiceError(ErrorKind.INVALID_REQUEST, wrong_kind_message(loaded.name, model.kind, (kind,)), "model")
    return model


class TaskPipeline(abc.ABC, Generic[TaskT, PlanT, ItemT, ResultT]):
    #: the request field a task over the token limit is refused on
    tokens_param: ClassVar[str] = "input"

    def __init__(self, registry: ModelRegistry, *, max_tokens: int = 1 << 62) -> None:
        """``max_tokens``: the most a task (or each request of a batch chunk) may hold."""
        self.registry = registry
        self._max_tokens = max_tokens
        #: sequences and requests of the largest batch seen
        self.largest_batch = (0, 0)

    # what each task supplies

    @abc.abstractmethod
    def prepare(self, loaded: LoadedModel, task: TaskT) -> PlanT:
        """The model as the kind the task needs (``model_of_kind``), and what the task needs of it; ServiceError
        if the task does not fit the model."""

    @abc.abstractmethod
    def sequences(self, plan: PlanT, task: TaskT) -> list[ItemT]:
        """The task's model inputs, special tokens included. CPU work: a large task runs it in a thread."""

    @abc.abstractmethod
    def result(self, plan: PlanT, task: TaskT, tokenized: Tokenized[ItemT], encoded: Encoded) -> ResultT:
        """The task's result from the model's output (one row per sequence, in order)."""

    def chars(self, task: TaskT) -> int:
        """Characters to tokenize: they decide whether tokenizing leaves the event loop."""
        return sum(map(len, task.inputs))

    def group(self, plan: PlanT) -> int:
        """The task's batch group: only sequences of one group share a forward pass."""
        return 0

    def groups(self, plan: PlanT, sequences: Sequence[ItemT]) -> int | list[int]:
        """Each sequence's batch group: ``group``'s for all of them, unless a task's inputs are of several kinds
        (texts and images) that never share a forward pass."""
        return self.group(plan)

    # the skeleton

    async def run(self, task: TaskT, *, urgent: bool = True, deadline_ms: int | None = None) -> ResultT:
        """The task's model, loaded if need be; its sequences, tokenized and checked; their rows, from the model's
        micro-batcher; the task's result. ``deadline_ms``: past it, a task still waiting for its model to load or
        for a batch fails with a timeout; one already in a running batch finishes with it."""
        loaded = await self.registry.get(task.model, timeout_s(deadline_ms))
        plan = self.prepare(loaded, task)
        metrics.count_task(loaded.model.kind, len(task.inputs))
        with tracing.span("tokenize", {"embeddings.inputs": len(task.inputs)}):
            tokenized = await off_loop(self.chars(task), self._tokenize, plan, task)
        encoded: Encoded = await loaded.batcher.submit(
            tokenized.sequences, group=self.groups(plan, tokenized.sequences), urgent=urgent, deadline_ms=deadline_ms
        )
        self.batch_seen(encoded.stats)
        return self.result(plan, task, tokenized, encoded)

    # its steps

    def within_limit(self, sequences: Sequence[ItemT]) -> int:
        """The tokens ``sequences`` hold; a 400 if more than a task may."""
        tokens = sum(map(len, sequences))
        if tokens > self._max_tokens:
            message = f"this request has {tokens} tokens; at most {self._max_tokens} are allowed in one request"
            raise ServiceError(ErrorKind.INVALID_REQUEST, message, self.tokens_param)
        return tokens

    def batch_seen(self, stats: BatchStats) -> None:
        """Keep the largest batch that served a task."""
        if stats.batch_size > self.largest_batch[0]:
            self.largest_batch = (stats.batch_size, stats.batch_requests)

    def _tokenize(self, plan: PlanT, task: TaskT) -> Tokenized[ItemT]:
        sequences = self.sequences(plan, task)
        return Tokenized(sequences, self.within_limit(sequences))
