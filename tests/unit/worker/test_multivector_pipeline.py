"""``worker.multivector_pipeline``: token-vector tasks and late-interaction rerank through a real registry and
micro-batcher, on the fixture ``MultiVectorEncoder``; concurrent requests of different lengths share batches and
still get the library's vectors; the answers' two layouts."""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import pytest
from sentence_transformers import MultiVectorEncoder

from shared.clock import now_ms
from shared.errors import ServiceError
from shared.protocol import TokenEmbedTask
from tests.fakes import FakeEncoder, make_rerank_task
from tests.model_fixtures import MULTIVECTOR_MODEL, save_multivector
from worker.models.multivector_encoder import MultiVectorTokenEncoder
from worker.models.registry import ModelRegistry
from worker.multivector_pipeline import MultiVectorPipeline, render

TEXTS = ["capital of France", "Paris is the capital of France.", "Berlin, in Germany!", "x " * 250]


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> MultiVectorEncoder:
    path = save_multivector(tmp_path_factory.mktemp("multivector"))[MULTIVECTOR_MODEL]
    return MultiVectorEncoder(str(path), device="cpu")


@pytest.fixture
async def registry(library):
    served = MultiVectorTokenEncoder(library)
    registry = ModelRegistry(
        lambda name: served if name == "mv" else FakeEncoder(),
        max_loaded=4,
        failure_ttl_s=60,
        max_batch_size=8,
        max_batch_tokens=4096,
    )
    yield registry
    await registry.close()


def task(inputs: list[str], input_type: str | None = None, **overrides: object) -> TokenEmbedTask:
    fields: dict[str, object] = dict(
        request_id="r1",
        model="mv",
        inputs=inputs,
        truncate=True,
        prompt_name=None,
        input_type=input_type,
        encoding_format="float",
        layout="pooling",
        enqueued_ms=now_ms(),
        deadline_ms=now_ms() + 30_000,
        reply_to="reply",
    )
    return TokenEmbedTask(**{**fields, **overrides})  # type: ignore[arg-type]


async def test_concurrent_requests_share_batches_and_get_the_librarys_vectors(registry, library):
    pipeline = MultiVectorPipeline(registry)
    await pipeline.token_embed(task(["warm"]))
    requests = [task([text], "document") for text in TEXTS] + [task(TEXTS[:2], "query"), task(TEXTS[2:])]
    results = await asyncio.gather(*(pipeline.token_embed(each) for each in requests))
    assert max(result.stats.batch_requests for result in results[:4]) > 1
    expected = [*library.encode_document(TEXTS), *library.encode_query(TEXTS[:2]), *library.encode(TEXTS[2:])]
    served = [vector for result in results for vector in result.vectors]
    for want, got in zip(expected, served, strict=True):
        assert got.shape == tuple(want.shape)
        np.testing.assert_allclose(got, want.numpy(), atol=1e-5, rtol=0)
    assert results[4].tokens == (3 + 3) + (7 + 3)  # each: [CLS] [unused0] ... [SEP]; the [MASK]s not counted


async def test_late_interaction_rerank_is_the_models_similarity(registry, library):
    pipeline = MultiVectorPipeline(registry)
    assert await pipeline.serves("mv", None) and not await pipeline.serves("embedder", None)
    ranked = await pipeline.rerank(make_rerank_task(model="mv", query=TEXTS[0], inputs=TEXTS[1:]))
    expected = library.similarity(library.encode_query([TEXTS[0]]), library.encode_document(TEXTS[1:]))[0]
    np.testing.assert_allclose(ranked.scores, expected.numpy(), atol=1e-5, rtol=0)
    assert list(np.argsort(-ranked.scores, kind="stable")) == list(np.argsort(-expected.numpy(), kind="stable"))


async def test_another_kind_is_refused_naming_its_route(registry):
    with pytest.raises(ServiceError) as raised:
        await MultiVectorPipeline(registry).token_embed(task(["a"], model="embedder"))
    assert "embedding model" in raised.value.message and "/v1/embeddings" in raised.value.message


def test_the_two_layouts():
    vectors = [np.arange(6, dtype=np.float32).reshape(3, 2), np.ones((1, 2), dtype=np.float32)]
    pooling = json.loads(render(vectors, "float", "pooling"))
    assert pooling[0] == {"index": 0, "object": "pooling", "data": [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]}
    packed = json.loads(render(vectors, "base64", "pooling"))[0]["data"]
    assert np.frombuffer(base64.b64decode(packed), dtype="<f4").reshape(3, 2).tolist() == vectors[0].tolist()
    assert json.loads(render(vectors, "float", "tei")) == [vectors[0].tolist(), vectors[1].tolist()]


async def test_rerank_cuts_documents_and_keeps_to_the_token_limit(registry, library):
    cut = await MultiVectorPipeline(registry).rerank(
        make_rerank_task(model="mv", query=TEXTS[0], inputs=[TEXTS[1]], max_tokens_per_doc=2)
    )
    expected = library.similarity(library.encode_query([TEXTS[0]]), library.encode_document(["Paris is"]))[0]
    np.testing.assert_allclose(cut.scores, expected.numpy(), atol=1e-5, rtol=0)
    with pytest.raises(ServiceError) as raised:
        await MultiVectorPipeline(registry, max_tokens=40).rerank(
            make_rerank_task(model="mv", query=TEXTS[0], inputs=TEXTS[1:3])
        )
    assert raised.value.param == "documents" and "at most 40" in raised.value.message
