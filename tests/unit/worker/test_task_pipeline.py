"""``worker.task_pipeline``: the skeleton every task runs on, shown with a task of its own over the stand-in
models: the model of the task's kind within the deadline, tokenizing inline or in a thread, the token limit, the
model's batcher."""

import dataclasses
import threading

import pytest

from shared.clock import now_ms
from shared.errors import ErrorKind, ServiceError
from tests.fakes import FakeEncoder, Loader, make_registry
from worker.batcher import Encoded
from worker.models.registry import LoadedModel
from worker.task_pipeline import INLINE_TOKENIZE_CHARS, TaskPipeline, Tokenized, model_of_kind, timeout_s


@dataclasses.dataclass(frozen=True)
class Lengths:
    """A task that asks for the first value of each text's vector."""

    model: str
    inputs: list[str]


class LengthPipeline(TaskPipeline[Lengths, FakeEncoder, list[int], list[float]]):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tokenized_in: list[int] = []

    def prepare(self, loaded: LoadedModel, task: Lengths) -> FakeEncoder:
        return model_of_kind(loaded, "embedding")

    def sequences(self, plan: FakeEncoder, task: Lengths) -> list[list[int]]:
        self.tokenized_in.append(threading.get_ident())
        return [plan.prepare(ids, truncate=True, param="input") for ids in plan.tokenize(task.inputs)]

    def result(
        self, plan: FakeEncoder, task: Lengths, tokenized: Tokenized[list[int]], encoded: Encoded
    ) -> list[float]:
        assert tokenized.tokens == 2 * len(task.inputs)  # each text is one token, after the special one
        return encoded.vectors[:, 0].tolist()


@pytest.fixture
async def registry():
    registry = make_registry(Loader(), max_loaded=4)
    yield registry
    await registry.close()


async def test_a_task_says_only_how_it_tokenizes_and_what_its_result_is(registry):
    pipeline = LengthPipeline(registry)
    assert await pipeline.run(Lengths("m", ["abc", "de"])) == [3.0, 2.0]
    assert pipeline.largest_batch[0] >= 2


async def test_small_tasks_are_tokenized_on_the_event_loop_and_large_ones_in_a_thread(registry):
    pipeline = LengthPipeline(registry)
    small, large = "x" * (INLINE_TOKENIZE_CHARS - 1), "x" * INLINE_TOKENIZE_CHARS
    assert await pipeline.run(Lengths("m", [small])) == [float(len(small))]
    assert await pipeline.run(Lengths("m", [large])) == [float(len(large))]
    assert pipeline.tokenized_in[0] == threading.get_ident()
    assert pipeline.tokenized_in[1] != threading.get_ident()


async def test_a_task_over_the_token_limit_is_refused_on_its_param(registry):
    class Documents(LengthPipeline):
        tokens_param = "documents"

    with pytest.raises(ServiceError, match="this request has 4 tokens; at most 3 are allowed") as refused:
        await Documents(registry, max_tokens=3).run(Lengths("m", ["a", "b"]))
    assert (refused.value.kind, refused.value.param) == (ErrorKind.INVALID_REQUEST, "documents")


async def test_a_model_of_another_kind_is_refused_with_the_route_that_serves_it(registry):
    with pytest.raises(ServiceError) as refused:
        await LengthPipeline(registry).run(Lengths("reranker", ["a"]))
    message = "model 'reranker' is a reranker, not an embedding model; use it with /v1/rerank"
    assert (refused.value.message, refused.value.param) == (message, "model")
    with pytest.raises(ServiceError, match="model 'm' is an embedding model, not a reranker; use it with /v1/emb"):
        model_of_kind(await registry.get("m"), "reranker")


async def test_the_model_loads_within_the_deadline():
    loader = Loader()
    loader.release.clear()
    registry = make_registry(loader)
    with pytest.raises(TimeoutError):
        await LengthPipeline(registry).run(Lengths("m", ["a"]), deadline_ms=now_ms() + 50)
    loader.release.set()
    await registry.close()
    assert timeout_s(None) is None
    assert 0.9 < timeout_s(now_ms() + 1000) <= 1
