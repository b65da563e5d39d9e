"""Rerankers over the real stack (redis-server, a worker, the API): fixture cross-encoders served from folders, every
score against ``CrossEncoder.predict`` on the same model, through the Cohere/Jina routes, TEI's, and the ``cohere``
client; requests batched together; models of the wrong kind refused; quantized embeddings against
``quantize_embeddings``, on ``/v1/embeddings``, jobs, the Batch API and Cohere's ``/v2/embed``."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import re
import time
import urllib.request
from pathlib import Path

import cohere
import httpx
import numpy as np
import pytest
import torch
from sentence_transformers import CrossEncoder, SentenceTransformer
from sentence_transformers.util import quantize_embeddings

from tests.integration.conftest import MODEL, TEXTS, assert_same_vectors, vectors_of
from tests.model_fixtures import build_all, build_rerankers, model_paths_setting
from tests.stack import free_port, running_stack

QUERY = "what is the capital of france"
DOCUMENTS = [
    "Paris is the capital and most populous city of France.",
    "Berlin is the capital of Germany.",
    "The Eiffel Tower was completed in 1889.",
    "apples and oranges are fruit",
    "France " + "is a country in western europe with a long history " * 60,  # more than the model reads
    "Ünïcödé, emoji 🙂 and numbers 3.14159.",
]
RERANKERS = ["test/reranker-identity", "test/reranker-sigmoid", "test/reranker-hf"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("rerank-models")
    return {**build_rerankers(folder), **build_all(folder)}


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, models, metrics_port):
    with running_stack(
        tmp_path_factory.mktemp("rerank-stack"),
        MODEL_PATHS=model_paths_setting(models),
        DEFAULT_RERANK_MODEL="test/reranker-sigmoid",
        WORKER_METRICS_PORT=str(metrics_port),
    ) as stack:
        yield stack


@pytest.fixture
def client(stack):
    with httpx.Client(base_url=stack.base_url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def cross_encoders(models) -> dict[str, CrossEncoder]:
    return {name: CrossEncoder(str(models[name]), device="cpu") for name in RERANKERS}


def rerank(client: httpx.Client, path: str = "/v1/rerank", **body) -> httpx.Response:
    return client.post(path, json={"query": QUERY, "documents": DOCUMENTS, **body})


@pytest.mark.parametrize("model", RERANKERS)
def test_scores_are_cross_encoder_predicts(client, cross_encoders, model):
    response = rerank(client, model=model, return_documents=True)
    assert response.status_code == 200, response.text
    body = response.json()
    expected = cross_encoders[model].predict([(QUERY, document) for document in DOCUMENTS])
    assert body["model"] == model
    assert sorted(result["index"] for result in body["results"]) == list(range(len(DOCUMENTS)))
    for result in body["results"]:
        assert result["relevance_score"] == pytest.approx(float(expected[result["index"]]), abs=1e-5)
        assert result["document"] == {"text": DOCUMENTS[result["index"]]}
    scores = [result["relevance_score"] for result in body["results"]]
    assert scores == sorted(scores, reverse=True)
    assert [r["index"] for r in body["results"]] == [
        r["corpus_id"] for r in cross_encoders[model].rank(QUERY, DOCUMENTS)
    ]
    assert body["usage"]["total_tokens"] > 0


def test_activation_is_the_models_own(client, cross_encoders):
    """Identity gives raw logits, Sigmoid squashes them into (0, 1); raw_scores gives the logits of either."""
    identity = rerank(client, model="test/reranker-identity").json()["results"]
    sigmoid = rerank(client, model="test/reranker-sigmoid").json()["results"]
    assert all(0 < r["relevance_score"] < 1 for r in sigmoid)
    logits = cross_encoders["test/reranker-sigmoid"].predict(
        [(QUERY, document) for document in DOCUMENTS], activation_fn=torch.nn.Identity()
    )
    raw = rerank(client, model="test/reranker-sigmoid", raw_scores=True).json()["results"]
    for result in raw:
        assert result["relevance_score"] == pytest.approx(float(logits[result["index"]]), abs=1e-5)
    # the two fixtures share their weights: the Identity one answers the logits the Sigmoid one squashes
    by_index = {r["index"]: r["relevance_score"] for r in identity}
    for result in raw:
        assert by_index[result["index"]] == pytest.approx(result["relevance_score"], abs=1e-5)


def test_top_n_v2_and_document_objects(client, cross_encoders):
    documents = [{"text": document} for document in DOCUMENTS]
    response = client.post(
        "/v2/rerank", json={"model": "test/reranker-identity", "query": QUERY, "documents": documents, "top_n": 2}
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    best = cross_encoders["test/reranker-identity"].rank(QUERY, DOCUMENTS, top_k=2)
    assert [r["index"] for r in results] == [b["corpus_id"] for b in best]
    assert "document" not in results[0]
    assert len(rerank(client, model="test/reranker-identity", top_n=50).json()["results"]) == len(DOCUMENTS)


def test_max_tokens_per_doc_cuts_documents_first(client, cross_encoders):
    documents = ["paris is the capital of france and its largest city", "berlin is a city in germany"]
    tokenizer = cross_encoders["test/reranker-identity"].tokenizer
    cut = [tokenizer.decode(tokenizer(d, add_special_tokens=False)["input_ids"][:4]) for d in documents]
    response = client.post(
        "/v1/rerank",
        json={"model": "test/reranker-identity", "query": QUERY, "documents": documents, "max_tokens_per_doc": 4},
    )
    assert response.status_code == 200, response.text
    expected = cross_encoders["test/reranker-identity"].predict([(QUERY, d) for d in cut])
    for result in response.json()["results"]:
        assert result["relevance_score"] == pytest.approx(float(expected[result["index"]]), abs=1e-5)


def test_tei_shape(client, cross_encoders):
    response = client.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS[:4], "return_text": True})
    assert response.status_code == 200, response.text
    ranks = response.json()
    assert isinstance(ranks, list)
    expected = cross_encoders["test/reranker-sigmoid"].predict([(QUERY, d) for d in DOCUMENTS[:4]])  # the default
    for rank in ranks:
        assert rank["score"] == pytest.approx(float(expected[rank["index"]]), abs=1e-5)
        assert rank["text"] == DOCUMENTS[rank["index"]]
    assert [r["score"] for r in ranks] == sorted((r["score"] for r in ranks), reverse=True)
    raw = client.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS[:4], "raw_scores": True}).json()
    logits = cross_encoders["test/reranker-sigmoid"].predict(
        [(QUERY, d) for d in DOCUMENTS[:4]], activation_fn=torch.nn.Identity()
    )
    for rank in raw:
        assert rank["score"] == pytest.approx(float(logits[rank["index"]]), abs=1e-5)
        assert "text" not in rank
    too_long = client.post(
        "/rerank", json={"model": "test/reranker-identity", "query": QUERY, "texts": DOCUMENTS, "truncate": False}
    )
    assert too_long.status_code == 400, too_long.text
    assert too_long.json()["error"]["code"] == "context_length_exceeded"
    assert "document 4" in too_long.json()["error"]["message"]


def test_wrong_kinds_are_refused(client, stack):
    as_embedding = client.post("/v1/embeddings", json={"model": "test/reranker-sigmoid", "input": "a text"})
    assert as_embedding.status_code == 400, as_embedding.text
    assert "is a reranker" in as_embedding.json()["error"]["message"]
    assert as_embedding.json()["error"]["param"] == "model"
    as_reranker = rerank(client, model=MODEL)
    assert as_reranker.status_code == 400, as_reranker.text
    assert "is an embedding model, not a reranker" in as_reranker.json()["error"]["message"]
    two_labels = rerank(client, model="test/reranker-two-labels")
    assert two_labels.status_code == 400, two_labels.text
    assert "2 scores per pair" in two_labels.json()["error"]["message"]
    job = client.post("/v1/embeddings/jobs", json={"model": "test/reranker-sigmoid", "input": ["a", "b"]}).json()
    deadline = time.monotonic() + 60
    while (status := client.get(f"/v1/embeddings/jobs/{job['id']}").json())["status"] not in ("completed", "failed"):
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    assert status["status"] == "failed"
    assert "is a reranker" in json.dumps(status["errors"])
    cards = {card["id"]: card for card in client.get("/v1/models").json()["data"]}
    assert cards["test/reranker-sigmoid"]["kind"] == "reranker"
    assert cards["test/reranker-sigmoid"]["activation"] == "torch.nn.modules.activation.Sigmoid"
    assert cards[MODEL]["kind"] == "embedding"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"documents": []}, "documents must not be empty"),
        ({"query": ""}, "query"),
        ({"top_n": 0}, "top_n"),
        ({"documents": [1, 2]}, "documents"),
        ({"return_document": True}, "unrecognized request argument supplied: return_document"),
        ({"model": "test/not-served"}, "is not served here"),
    ],
)
def test_bad_rerank_requests(client, body, message):
    response = client.post(
        "/v1/rerank", json={"model": "test/reranker-sigmoid", "query": QUERY, "documents": ["a"]} | body
    )
    assert response.status_code in (400, 404), response.text
    error = response.json()["error"]
    assert message in error["message"]


def test_many_rerank_requests_share_forward_passes(stack, metrics_port, cross_encoders):
    queries = [f"question number {i} about france" for i in range(24)]

    def one(query: str) -> tuple[dict, int]:
        with httpx.Client(base_url=stack.base_url, timeout=120) as client:
            response = client.post(
                "/v1/rerank", json={"model": "test/reranker-identity", "query": query, "documents": DOCUMENTS[:4]}
            )
            assert response.status_code == 200, response.text
            return response.json(), int(response.headers["x-batch-requests"])

    before = _batch_requests_sum(metrics_port, "test/reranker-identity")
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(one, queries))
    assert max(shared for _, shared in answers) > 1, "no forward pass held more than one rerank request"
    for query, (body, _) in zip(queries, answers, strict=True):
        expected = cross_encoders["test/reranker-identity"].predict([(query, d) for d in DOCUMENTS[:4]])
        for result in body["results"]:
            assert result["relevance_score"] == pytest.approx(float(expected[result["index"]]), abs=1e-5)
    passes, requests = _batch_requests_sum(metrics_port, "test/reranker-identity")
    # every request was in some pass (one split across two counts in both), and fewer passes than requests ran
    assert requests - before[1] >= len(queries)
    assert passes - before[0] < len(queries)


def _batch_requests_sum(port: int, model: str) -> tuple[int, int]:
    """The worker's ``embeddings_batch_requests`` histogram for ``model``: passes, and requests summed over them."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    label = re.escape(f'model="{model}"')
    count = re.search(rf"embeddings_batch_requests_count{{{label}}} (\S+)", text)
    total = re.search(rf"embeddings_batch_requests_sum{{{label}}} (\S+)", text)
    return (int(float(count.group(1))), int(float(total.group(1)))) if count and total else (0, 0)


def test_cohere_client_rerank_and_embed(stack, client, cross_encoders, reference_model):
    co = cohere.ClientV2(base_url=stack.base_url, api_key="unused", httpx_client=client)
    ranked = co.rerank(model="test/reranker-identity", query=QUERY, documents=DOCUMENTS, top_n=3)
    best = cross_encoders["test/reranker-identity"].rank(QUERY, DOCUMENTS, top_k=3)
    assert [r.index for r in ranked.results] == [b["corpus_id"] for b in best]
    for result, expected in zip(ranked.results, best, strict=True):
        assert result.relevance_score == pytest.approx(expected["score"], abs=1e-5)
    embedded = co.embed(
        model=MODEL, texts=TEXTS, input_type="search_document", embedding_types=["float", "ubinary", "base64"]
    )
    expected = reference_model.encode(TEXTS)
    assert_same_vectors(np.array(embedded.embeddings.float_), expected)
    assert np.array_equal(np.array(embedded.embeddings.ubinary), quantize_embeddings(expected, "ubinary"))
    decoded = np.stack([np.frombuffer(base64.b64decode(b), dtype="<f4") for b in embedded.embeddings.base64])
    assert_same_vectors(decoded, expected)
    assert embedded.meta.billed_units.input_tokens > 0


def test_cohere_embed_input_type_picks_the_prompt(client, models):
    prompted = SentenceTransformer(str(models["test/minilm-prompts"]), device="cpu")
    for input_type, expected in (
        ("search_query", prompted.encode_query(TEXTS)),
        ("search_document", prompted.encode_document(TEXTS)),
    ):
        response = client.post(
            "/v2/embed",
            json={"model": "test/minilm-prompts", "texts": TEXTS, "input_type": input_type, "output_dimension": 64},
        )
        assert response.status_code == 200, response.text
        vectors = np.array(response.json()["embeddings"]["float"])
        cut = expected[:, :64] / np.linalg.norm(expected[:, :64], axis=1, keepdims=True)
        assert_same_vectors(vectors, cut)
    for body, message in (
        ({"embedding_types": ["int8"]}, "int8 is not offered"),
        ({"truncate": "START"}, "truncate START"),
        ({"images": ["x"]}, "send exactly one of texts, images and inputs"),
        ({"image": ["x"]}, "unrecognized request argument supplied: image"),
        ({"texts": [""]}, "empty strings"),
    ):
        response = client.post("/v2/embed", json={"model": MODEL, "texts": ["a"], **body})
        assert response.status_code == 400, response.text
        assert message in response.json()["error"]["message"]


@pytest.mark.parametrize("output_dtype", ["binary", "ubinary"])
def test_binary_embeddings_equal_quantize_embeddings(client, reference_model, output_dtype):
    expected = quantize_embeddings(reference_model.encode(TEXTS), output_dtype)
    as_ints = client.post("/v1/embeddings", json={"model": MODEL, "input": TEXTS, "output_dtype": output_dtype})
    assert as_ints.status_code == 200, as_ints.text
    assert np.array_equal(vectors_of(as_ints.json()).astype(expected.dtype), expected)
    as_base64 = client.post(
        "/v1/embeddings",
        json={"model": MODEL, "input": TEXTS, "output_dtype": output_dtype, "encoding_format": "base64"},
    )
    rows = [base64.b64decode(item["embedding"]) for item in sorted(as_base64.json()["data"], key=lambda d: d["index"])]
    assert np.array_equal(np.stack([np.frombuffer(row, dtype=expected.dtype) for row in rows]), expected)
    job = client.post("/v1/embeddings/jobs", json={"model": MODEL, "input": TEXTS, "output_dtype": output_dtype})
    job_id = job.json()["id"]
    deadline = time.monotonic() + 60
    while client.get(f"/v1/embeddings/jobs/{job_id}").json()["status"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    result = client.get(f"/v1/embeddings/jobs/{job_id}/result").json()
    assert np.array_equal(vectors_of(result).astype(expected.dtype), expected)


def test_binary_embeddings_in_a_batch(client, reference_model):
    expected = quantize_embeddings(reference_model.encode(TEXTS), "binary")
    lines = [
        {
            "custom_id": "bits",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": MODEL, "input": TEXTS, "output_dtype": "binary"},
        },
        {"custom_id": "floats", "method": "POST", "url": "/v1/embeddings", "body": {"model": MODEL, "input": TEXTS}},
        {
            "custom_id": "bad",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": MODEL, "input": TEXTS, "output_dtype": "int8"},
        },
    ]
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = client.post("/v1/files", data={"purpose": "batch"}, files={"file": ("in.jsonl", content)}).json()
    batch = client.post(
        "/v1/batches",
        json={"input_file_id": uploaded["id"], "endpoint": "/v1/embeddings", "completion_window": "24h"},
    ).json()
    deadline = time.monotonic() + 60
    while (batch := client.get(f"/v1/batches/{batch['id']}").json())["status"] != "completed":
        assert time.monotonic() < deadline, batch
        time.sleep(0.2)
    output = client.get(f"/v1/files/{batch['output_file_id']}/content")
    assert int(client.get(f"/v1/files/{batch['output_file_id']}").json()["bytes"]) == len(output.content)
    by_id = {line["custom_id"]: line for line in map(json.loads, output.text.splitlines())}
    bits = vectors_of(by_id["bits"]["response"]["body"]).astype(np.int8)
    assert np.array_equal(bits, expected)
    assert_same_vectors(vectors_of(by_id["floats"]["response"]["body"]), reference_model.encode(TEXTS))
    errors = client.get(f"/v1/files/{batch['error_file_id']}/content").text
    assert "int8 is not offered" in errors


def test_int8_is_refused_with_a_reason(client):
    response = client.post("/v1/embeddings", json={"model": MODEL, "input": "a", "output_dtype": "int8"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "output_dtype"
    assert "would depend on the other texts quantized with it" in response.json()["error"]["message"]
