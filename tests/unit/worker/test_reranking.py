"""``worker.reranking``: a rerank job through the model's batcher, with no Redis and a stand-in reranker."""

import asyncio

import pytest

from shared.errors import ErrorKind, ServiceError
from tests.fakes import Loader, make_embed_task, make_registry, make_rerank_task
from worker.pipeline import EmbeddingPipeline
from worker.reranking import RerankPipeline


@pytest.fixture
async def registry():
    registry = make_registry(Loader(), max_loaded=4)
    yield registry
    await registry.close()


async def test_scores_come_in_document_order_activated_or_raw(registry):
    reranking = RerankPipeline(registry)
    ranked = await reranking.rerank(make_rerank_task(model="reranker", query="q", inputs=["abc", "a", "ab"]))
    assert ranked.scores.tolist() == [30.0, 10.0, 20.0]
    assert ranked.tokens == 2 + 3 + 4
    raw = await reranking.rerank(make_rerank_task(model="reranker", inputs=["abc", "a"], raw_scores=True))
    assert raw.scores.tolist() == [3.0, 1.0]
    cut = await reranking.rerank(make_rerank_task(model="reranker", inputs=["abcdef"], max_tokens_per_doc=2))
    assert cut.scores.tolist() == [20.0]


async def test_concurrent_requests_share_a_forward_pass(registry):
    reranking = RerankPipeline(registry)
    await reranking.rerank(make_rerank_task(model="reranker"))  # loaded: both of the next submit before a batch forms
    first, second = await asyncio.gather(
        reranking.rerank(make_rerank_task(model="reranker", inputs=["a"])),
        reranking.rerank(make_rerank_task(model="reranker", inputs=["bb"])),
    )
    assert (first.stats.batch_requests, second.stats.batch_requests) == (2, 2)
    assert (first.scores.tolist(), second.scores.tolist()) == ([10.0], [20.0])


async def test_models_of_the_wrong_kind_are_refused(registry):
    reranking = RerankPipeline(registry, max_tokens=5)
    with pytest.raises(ServiceError, match="is an embedding model, not a reranker") as embedding:
        await reranking.rerank(make_rerank_task(model="m"))
    assert embedding.value.kind is ErrorKind.INVALID_REQUEST and embedding.value.param == "model"
    with pytest.raises(ServiceError, match="2 scores per pair"):
        await reranking.rerank(make_rerank_task(model="reranker-2"))
    with pytest.raises(ServiceError, match="is a reranker, not an embedding model"):
        await EmbeddingPipeline(registry).embed(make_embed_task(model="reranker"))
    with pytest.raises(ServiceError, match="at most 5 are allowed") as too_many:
        await reranking.rerank(make_rerank_task(model="reranker", query="q", inputs=["abcdefgh"]))
    assert too_many.value.param == "documents"
