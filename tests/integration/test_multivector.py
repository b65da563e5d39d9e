"""A multi-vector (ColBERT-style) model over the real stack (redis-server, a worker, the API): the fixture
``MultiVectorEncoder`` served from a folder next to the bundled MiniLM and a reranker; every token vector from
vLLM's ``/pooling`` (float and base64) and TEI's ``/embed_all`` against the library's ``encode`` /
``encode_query`` / ``encode_document`` within 1e-5; late-interaction rerank against the model's ``similarity``;
requests mixed with embedding traffic; models of the wrong kind refused, naming their kind and route."""

from __future__ import annotations

import base64
import concurrent.futures
from pathlib import Path

import httpx
import numpy as np
import pytest
from sentence_transformers import CrossEncoder, MultiVectorEncoder

from tests.integration.conftest import MODEL
from tests.model_fixtures import MULTIVECTOR_MODEL, build_rerankers, model_paths_setting, save_multivector
from tests.stack import running_stack

TEXTS = [
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "Berlin, is! in Germany... (really?)",
    "Ünïcödé, emoji 🙂 and numbers 3.14159.",
    "France " + "is a country in western europe with a long history " * 40,  # more than a document reads
]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("multivector-models")
    rerankers = build_rerankers(folder)
    return {**save_multivector(folder), "test/reranker-identity": rerankers["test/reranker-identity"]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, models):
    with running_stack(tmp_path_factory.mktemp("multivector-stack"), MODEL_PATHS=model_paths_setting(models)) as stack:
        yield stack


@pytest.fixture
def client(stack):
    with httpx.Client(base_url=stack.base_url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def library(models) -> MultiVectorEncoder:
    return MultiVectorEncoder(str(models[MULTIVECTOR_MODEL]), device="cpu")


def expected(library: MultiVectorEncoder, mode: str | None, texts: list[str]) -> list[np.ndarray]:
    encode = {None: library.encode, "query": library.encode_query, "document": library.encode_document}[mode]
    return list(encode(texts, convert_to_numpy=True))


def assert_same(served: list[np.ndarray], reference: list[np.ndarray]) -> None:
    assert len(served) == len(reference)
    for got, want in zip(served, reference, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", [None, "query", "document"])
@pytest.mark.parametrize("encoding_format", ["float", "base64"])
def test_pooling_token_embed_is_the_librarys(client, library, mode, encoding_format):
    body = {"model": MULTIVECTOR_MODEL, "input": TEXTS, "task": "token_embed", "encoding_format": encoding_format}
    if mode is not None:
        body["embedding_mode"] = mode
    response = client.post("/pooling", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["object"] == "list" and answer["model"] == MULTIVECTOR_MODEL and answer["id"].startswith("pool-")
    assert answer["usage"]["prompt_tokens"] == answer["usage"]["total_tokens"] > 0
    assert [item["index"] for item in answer["data"]] == list(range(len(TEXTS)))
    assert {item["object"] for item in answer["data"]} == {"pooling"}
    if encoding_format == "base64":
        served = [
            np.frombuffer(base64.b64decode(item["data"]), dtype="<f4").reshape(-1, 128) for item in answer["data"]
        ]
    else:
        served = [np.asarray(item["data"], dtype=np.float32) for item in answer["data"]]
    assert_same(served, expected(library, mode, TEXTS))


@pytest.mark.parametrize("mode", [None, "query", "document"])
def test_embed_all_is_the_librarys(client, library, mode):
    body: dict[str, object] = {"model": MULTIVECTOR_MODEL, "inputs": TEXTS[:3]}
    if mode is not None:
        body["input_type"] = mode
    response = client.post("/embed_all", json=body)
    assert response.status_code == 200, response.text
    assert_same([np.asarray(rows, dtype=np.float32) for rows in response.json()], expected(library, mode, TEXTS[:3]))


def test_truncate_false_refuses_a_long_text(client):
    body = {"model": MULTIVECTOR_MODEL, "inputs": TEXTS[4], "truncate": False, "input_type": "document"}
    response = client.post("/embed_all", json=body)
    assert response.status_code == 400 and response.json()["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank", "/rerank"])
def test_late_interaction_rerank_is_the_models_maxsim(client, library, path):
    query, documents = TEXTS[0], TEXTS[1:]
    if path == "/rerank":
        response = client.post(path, json={"model": MULTIVECTOR_MODEL, "query": query, "texts": documents})
        assert response.status_code == 200, response.text
        scores = {rank["index"]: rank["score"] for rank in response.json()}
        order = [rank["index"] for rank in response.json()]
    else:
        response = client.post(path, json={"model": MULTIVECTOR_MODEL, "query": query, "documents": documents})
        assert response.status_code == 200, response.text
        scores = {result["index"]: result["relevance_score"] for result in response.json()["results"]}
        order = [result["index"] for result in response.json()["results"]]
    reference = library.similarity(library.encode_query([query]), library.encode_document(documents))[0].numpy()
    np.testing.assert_allclose([scores[index] for index in range(len(documents))], reference, atol=1e-5, rtol=0)
    # what a client computes from encode: MaxSim by hand, and its order
    query_vectors = library.encode_query(query, convert_to_numpy=True)
    by_hand = [float((query_vectors @ doc.T).max(axis=1).sum()) for doc in expected(library, "document", documents)]
    assert order == sorted(range(len(documents)), key=lambda index: -by_hand[index])


def test_concurrent_requests_mixed_with_embedding_and_rerank_traffic(client, library, models, stack):
    """48 requests from 16 threads: MiniLM embeddings, cross-encoder reranks, late-interaction reranks and token
    vectors of every mode, each answer checked against its own library."""
    references = {mode: expected(library, mode, TEXTS) for mode in (None, "query", "document")}
    minilm = client.post("/v1/embeddings", json={"model": MODEL, "input": TEXTS}).json()["data"]
    cross_encoder = CrossEncoder(str(models["test/reranker-identity"]), device="cpu")
    query, documents = TEXTS[0], TEXTS[1:]
    cross_scores = cross_encoder.predict([(query, document) for document in documents])
    late_scores = library.similarity(library.encode_query([query]), library.encode_document(documents))[0].numpy()

    def one(index: int) -> None:
        text = TEXTS[index % 5]
        with httpx.Client(base_url=stack.base_url, timeout=120) as each:
            if index % 4 == 0:
                response = each.post("/v1/embeddings", json={"model": MODEL, "input": text})
                assert response.status_code == 200, response.text
                got = response.json()["data"][0]["embedding"]
                np.testing.assert_allclose(got, minilm[index % 5]["embedding"], atol=1e-5)
            elif index % 4 == 1:
                model = "test/reranker-identity" if index % 8 == 1 else MULTIVECTOR_MODEL
                response = each.post("/v1/rerank", json={"model": model, "query": query, "documents": documents})
                assert response.status_code == 200, response.text
                scores = {result["index"]: result["relevance_score"] for result in response.json()["results"]}
                want = cross_scores if model == "test/reranker-identity" else late_scores
                np.testing.assert_allclose([scores[i] for i in range(len(documents))], want, atol=1e-5, rtol=0)
            else:
                mode = (None, "query", "document")[index % 3]
                body = {"model": MULTIVECTOR_MODEL, "input": [text], "embedding_mode": mode}
                response = each.post("/pooling", json={key: value for key, value in body.items() if value is not None})
                assert response.status_code == 200, response.text
                served = np.asarray(response.json()["data"][0]["data"], dtype=np.float32)
                assert_same([served], [references[mode][index % 5]])

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(48)))


def test_models_of_another_kind_are_refused_naming_their_kind_and_route(client):
    response = client.post("/pooling", json={"model": MODEL, "input": "hello"})
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert "embedding model" in message and "/v1/embeddings" in message
    response = client.post("/v1/embeddings", json={"model": MULTIVECTOR_MODEL, "input": "hello"})
    assert response.status_code == 400, response.text
    message = response.json()["error"]["message"]
    assert "multi-vector model" in message and "/pooling" in message
    response = client.post("/embed_all", json={"model": "test/reranker-identity", "inputs": "hello"})
    assert response.status_code == 400 and "reranker" in response.json()["error"]["message"]


def test_pooling_refuses_other_tasks_and_token_ids(client):
    for body in (
        {"model": MULTIVECTOR_MODEL, "input": "hello", "task": "embed"},
        {"model": MULTIVECTOR_MODEL, "input": [1, 2, 3]},
        {"model": MULTIVECTOR_MODEL, "input": "hello", "embedding_mode": "query", "input_type": "document"},
    ):
        response = client.post("/pooling", json=body)
        assert response.status_code == 400, (body, response.text)
