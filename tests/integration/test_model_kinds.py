"""Every kind of model side by side in one worker (redis-server, one worker, the API): the bundled MiniLM
(embedding), a SPLADE (sparse), a ColBERT-style model (multivector) and a cross-encoder (reranker), driven at once
from many threads, each answer held to its own library's within 1e-5; ``/tokenize`` on the embedding model and
the reranker; the cards saying each kind, all served by the one worker."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from sentence_transformers import CrossEncoder, MultiVectorEncoder, SentenceTransformer, SparseEncoder

from tests.integration.conftest import MODEL, TEXTS
from tests.model_fixtures import (
    MULTIVECTOR_MODEL,
    SPLADE,
    build_rerankers,
    build_sparse,
    model_paths_setting,
    save_multivector,
)
from tests.stack import running_stack

RERANKER = "test/reranker-identity"
KINDS = {MODEL: "embedding", SPLADE: "sparse", MULTIVECTOR_MODEL: "multivector", RERANKER: "reranker"}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("kinds-models")
    return {
        SPLADE: build_sparse(folder)[SPLADE],
        MULTIVECTOR_MODEL: save_multivector(folder)[MULTIVECTOR_MODEL],
        RERANKER: build_rerankers(folder)[RERANKER],
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory, models):
    with running_stack(tmp_path_factory.mktemp("kinds-stack"), MODEL_PATHS=model_paths_setting(models)) as stack:
        assert len(stack.workers) == 1
        yield stack


@pytest.fixture(scope="module")
def expected(models, reference_model: SentenceTransformer) -> dict[str, object]:
    """Each kind's answer from its own library, as its users call it."""
    sparse = SparseEncoder(str(models[SPLADE]), device="cpu")
    multivector = MultiVectorEncoder(str(models[MULTIVECTOR_MODEL]), device="cpu")
    cross_encoder = CrossEncoder(str(models[RERANKER]), device="cpu")
    query, documents = TEXTS[0], TEXTS[1:4]
    return {
        MODEL: reference_model.encode(TEXTS, convert_to_numpy=True, normalize_embeddings=True),
        SPLADE: sparse.encode_query(TEXTS, convert_to_tensor=True, convert_to_sparse_tensor=False).numpy(),
        MULTIVECTOR_MODEL: list(multivector.encode_document(TEXTS, convert_to_numpy=True)),
        RERANKER: cross_encoder.predict([(query, document) for document in documents]),
        "late": multivector.similarity(multivector.encode_query([query]), multivector.encode_document(documents))[0]
        .numpy()
        .astype(np.float64),
    }


def test_every_kind_is_served_exactly_by_one_worker_at_once(stack, expected):
    query, documents = TEXTS[0], TEXTS[1:4]

    def one(index: int) -> None:
        at = index % len(TEXTS)
        text = TEXTS[at]
        with httpx.Client(base_url=stack.base_url, timeout=120) as client:
            match index % 5:
                case 0:
                    response = client.post("/v1/embeddings", json={"model": MODEL, "input": [text]})
                    assert response.status_code == 200, response.text
                    got = np.asarray(response.json()["data"][0]["embedding"])
                    np.testing.assert_allclose(got, expected[MODEL][at], atol=1e-5, rtol=0)
                case 1:
                    body = {"model": SPLADE, "inputs": [text], "input_type": "query"}
                    response = client.post("/embed_sparse", json=body)
                    assert response.status_code == 200, response.text
                    row = np.zeros(expected[SPLADE].shape[1])
                    for value in response.json()[0]:
                        row[value["index"]] = value["value"]
                    np.testing.assert_allclose(row, expected[SPLADE][at], atol=1e-5, rtol=0)
                case 2:
                    body = {"model": MULTIVECTOR_MODEL, "input": [text], "embedding_mode": "document"}
                    response = client.post("/pooling", json=body)
                    assert response.status_code == 200, response.text
                    got = np.asarray(response.json()["data"][0]["data"], dtype=np.float32)
                    want = expected[MULTIVECTOR_MODEL][at]
                    assert got.shape == want.shape
                    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
                case 3:
                    model = RERANKER if index % 2 else MULTIVECTOR_MODEL
                    body = {"model": model, "query": query, "documents": documents}
                    response = client.post("/v1/rerank", json=body)
                    assert response.status_code == 200, response.text
                    scores = {item["index"]: item["relevance_score"] for item in response.json()["results"]}
                    want = expected[RERANKER] if model == RERANKER else expected["late"]
                    np.testing.assert_allclose([scores[i] for i in range(len(documents))], want, atol=1e-5, rtol=0)
                case _:
                    model = RERANKER if index % 2 else MODEL
                    response = client.post("/tokenize", json={"model": model, "inputs": text})
                    assert response.status_code == 200, response.text
                    assert response.json()[0][0]["special"] is True  # [CLS], as every model here starts

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(60)))

    with httpx.Client(base_url=stack.base_url, timeout=30) as client:
        deadline = time.monotonic() + 30
        while True:
            cards = {card["id"]: card for card in client.get("/v1/models").json()["data"]}
            if all(cards.get(name, {}).get("kind") for name in KINDS):
                break
            assert time.monotonic() < deadline, cards
            time.sleep(0.2)
    assert {name: cards[name]["kind"] for name in KINDS} == KINDS
