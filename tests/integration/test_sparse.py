"""Sparse models over the real stack (redis-server, a worker, the API): fixture SPLADEs (a plain one, one with prompts
and ``max_active_dims``, an inference-free one with a query ``Router`` route) served from folders, every value
against ``SparseEncoder.encode`` / ``encode_query`` / ``encode_document`` on the same model within 1e-5, through
TEI's ``/embed_sparse`` (raw HTTP in TEI's shape: ``huggingface_hub``'s ``InferenceClient`` has no sparse call) and
``/v1/embeddings``' ``sparse_embedding`` items; requests batched with embedding traffic; models of the wrong kind
refused; a job with a sparse model; ``/v1/models`` and the worker's per-kind metrics."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from pathlib import Path

import httpx
import numpy as np
import pytest
from sentence_transformers import SparseEncoder

from tests.integration.conftest import MODEL, TEXTS, assert_same_vectors, vectors_of
from tests.model_fixtures import SPLADE, SPLADE_INFERENCE_FREE, SPLADE_TOPK, build_sparse, model_paths_setting
from tests.stack import free_port, running_stack

SPARSE_MODELS = [SPLADE, SPLADE_TOPK, SPLADE_INFERENCE_FREE]
INPUT_TYPES = [None, "query", "document"]
LONG = "Sparse retrieval expands a passage into the words it implies. " * 60  # more than the model reads


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return build_sparse(tmp_path_factory.mktemp("sparse-models"))


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def stack(tmp_path_factory, models, metrics_port):
    with running_stack(
        tmp_path_factory.mktemp("sparse-stack"),
        MODEL_PATHS=model_paths_setting(models),
        WORKER_METRICS_PORT=str(metrics_port),
    ) as stack:
        yield stack


@pytest.fixture
def client(stack):
    with httpx.Client(base_url=stack.base_url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def encoders(models) -> dict[str, SparseEncoder]:
    return {name: SparseEncoder(str(models[name]), device="cpu") for name in SPARSE_MODELS}


def library(model: SparseEncoder, texts: list[str], input_type: str | None, **kwargs) -> np.ndarray:
    """What the library answers for ``texts`` as ``input_type`` asks: ``encode``, ``encode_query`` or
    ``encode_document``; dense rows."""
    encode = {None: model.encode, "query": model.encode_query, "document": model.encode_document}[input_type]
    rows = encode(texts, convert_to_tensor=True, convert_to_sparse_tensor=False, **kwargs)
    return rows.numpy().astype(np.float64)


def from_tei(body: list[list[dict]], width: int) -> np.ndarray:
    rows = np.zeros((len(body), width))
    for row, values in zip(rows, body, strict=True):
        indices = [value["index"] for value in values]
        assert indices == sorted(indices) and len(set(indices)) == len(indices)  # by ascending index, as TEI
        row[indices] = [value["value"] for value in values]
    return rows


def from_items(body: dict, width: int) -> np.ndarray:
    data = body["data"]
    assert [item["index"] for item in data] == list(range(len(data)))
    rows = np.zeros((len(data), width))
    for row, item in zip(rows, data, strict=True):
        assert item["object"] == "sparse_embedding"
        assert item["indices"] == sorted(item["indices"]) and len(item["indices"]) == len(item["values"])
        row[item["indices"]] = item["values"]
    return rows


def assert_same_sparse(actual: np.ndarray, expected: np.ndarray) -> None:
    """Every value within 1e-5 of the library's, zeros included: the same nonzeros, to float32 noise."""
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= 1e-5
    assert ((actual != 0) == (expected != 0)).mean() > 0.9999


@pytest.mark.parametrize("input_type", INPUT_TYPES)
@pytest.mark.parametrize("model", SPARSE_MODELS)
def test_embed_sparse_is_the_librarys(client, encoders, model, input_type):
    texts = [*TEXTS, LONG]
    body = {"model": model, "inputs": texts, **({"input_type": input_type} if input_type else {})}
    response = client.post("/embed_sparse", json=body)
    assert response.status_code == 200, response.text
    expected = library(encoders[model], texts, input_type)
    served = from_tei(response.json(), expected.shape[1])
    assert_same_sparse(served, expected)
    if model == SPLADE_TOPK:
        assert max((row != 0).sum() for row in served) <= 64
    elif model == SPLADE_INFERENCE_FREE and input_type == "query":  # the static route: a weight per token
        assert 1 <= (served != 0).sum(1).min() <= len(LONG.split())
    else:
        assert 20 <= (served != 0).sum(1).mean() <= 2000


@pytest.mark.parametrize("input_type", INPUT_TYPES)
@pytest.mark.parametrize("model", SPARSE_MODELS)
def test_v1_embeddings_sparse_items_are_the_librarys(client, encoders, model, input_type):
    body = {"model": model, "input": TEXTS, **({"input_type": input_type} if input_type else {})}
    response = client.post("/v1/embeddings", json=body)
    assert response.status_code == 200, response.text
    expected = library(encoders[model], TEXTS, input_type)
    assert_same_sparse(from_items(response.json(), expected.shape[1]), expected)
    assert response.json()["model"] == model
    assert response.json()["usage"]["prompt_tokens"] > 0


def test_the_openai_client_gets_sparse_items(stack, encoders):
    """The official client asks for base64 unless told otherwise; sparse items come as JSON all the same, and the
    client passes them through (its base64 decoding only touches string embeddings)."""
    from openai import OpenAI

    client = OpenAI(base_url=stack.base_url + "/v1", api_key="unused")
    response = client.embeddings.create(model=SPLADE, input=TEXTS[:3])
    expected = library(encoders[SPLADE], TEXTS[:3], None)
    body = {"data": [item.model_dump() for item in response.data]}
    assert_same_sparse(from_items(body, expected.shape[1]), expected)


def test_prompts_and_single_inputs(client, encoders):
    model = encoders[SPLADE_TOPK]
    named = client.post("/embed_sparse", json={"model": SPLADE_TOPK, "inputs": TEXTS[0], "prompt_name": "document"})
    assert named.status_code == 200, named.text
    assert len(named.json()) == 1
    expected = library(model, [TEXTS[0]], None, prompt_name="document")
    assert_same_sparse(from_tei(named.json(), expected.shape[1]), expected)
    # a prompt changes the vector: the query prompt is not the document one
    query = client.post("/embed_sparse", json={"model": SPLADE_TOPK, "inputs": TEXTS[0], "input_type": "query"})
    assert not np.array_equal(from_tei(query.json(), expected.shape[1]), expected)
    unknown = client.post("/embed_sparse", json={"model": SPLADE_TOPK, "inputs": "a", "prompt_name": "nope"})
    assert unknown.status_code == 400, unknown.text
    assert "'query', 'document'" in unknown.json()["error"]["message"]
    # usage counts the prompt's tokens and leaves out the special ones, as for embeddings
    usage = client.post("/v1/embeddings", json={"model": SPLADE, "input": "hello world"}).json()["usage"]
    assert usage["prompt_tokens"] == 2


def test_truncation(client, encoders):
    refused = client.post("/embed_sparse", json={"model": SPLADE, "inputs": ["short", LONG], "truncate": False})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "context_length_exceeded"
    cut = client.post("/embed_sparse", json={"model": SPLADE, "inputs": [LONG], "truncate": True})
    expected = library(encoders[SPLADE], [LONG], None)
    assert_same_sparse(from_tei(cut.json(), expected.shape[1]), expected)


def test_concurrent_sparse_and_embedding_requests(stack, encoders, reference):
    """Many small requests of every kind at once: each answered with its own vectors, batched with the others."""
    texts = [f"{text} ({i})" for i in range(6) for text in TEXTS[:4]]
    requests = []
    for i, text in enumerate(texts):
        model = SPARSE_MODELS[i % 3]
        input_type = INPUT_TYPES[i % 3]
        requests.append(("/embed_sparse", {"model": model, "inputs": [text], "input_type": input_type or "document"}))
        requests.append(("/v1/embeddings", {"model": MODEL, "input": text}))

    async def send():
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=120) as client:
            return await asyncio.gather(*(client.post(path, json=body) for path, body in requests))

    responses = asyncio.run(send())
    for (path, body), response in zip(requests, responses, strict=True):
        assert response.status_code == 200, response.text
        if path == "/embed_sparse":
            expected = library(encoders[body["model"]], body["inputs"], body["input_type"])
            assert_same_sparse(from_tei(response.json(), expected.shape[1]), expected)
        else:
            assert_same_vectors(vectors_of(response.json()), reference([body["input"]]))


def test_wrong_kinds_and_options_are_refused(client):
    as_sparse = client.post("/embed_sparse", json={"model": MODEL, "inputs": "a text"})
    assert as_sparse.status_code == 400, as_sparse.text
    assert as_sparse.json()["error"]["message"] == (
        f"model {MODEL!r} is an embedding model, not a sparse model; use it with /v1/embeddings"
    )
    as_reranker = client.post("/v1/rerank", json={"model": SPLADE, "query": "q", "documents": ["d"]})
    assert as_reranker.status_code == 400, as_reranker.text
    assert "is a sparse model, not a reranker; use it with /embed_sparse" in as_reranker.json()["error"]["message"]
    as_cohere = client.post("/v2/embed", json={"model": SPLADE, "texts": ["a"], "input_type": "search_query"})
    assert as_cohere.status_code == 400, as_cohere.text
    assert as_cohere.json()["error"]["message"] == (
        f"model {SPLADE!r} is a sparse model, not an embedding model; use it with /embed_sparse or /v1/embeddings"
    )
    for option in ({"dimensions": 8}, {"output_dtype": "binary"}, {"normalize": True}):
        refused = client.post("/v1/embeddings", json={"model": SPLADE, "input": "a", **option})
        assert refused.status_code == 400, (option, refused.text)
        assert refused.json()["error"]["param"] == next(iter(option))
    token_ids = client.post("/v1/embeddings", json={"model": SPLADE, "input": [1, 2, 3]})
    assert token_ids.status_code == 400, token_ids.text
    no_model = client.post("/embed_sparse", json={"inputs": "a"})
    assert no_model.status_code == 400, no_model.text
    assert "model is required" in no_model.json()["error"]["message"]
    unknown = client.post("/embed_sparse", json={"model": SPLADE, "inputs": "a", "normalize": True})
    assert unknown.status_code == 400, unknown.text


def test_a_job_with_a_sparse_model(client, encoders):
    texts = [f"{text} [{i}]" for i in range(3) for text in TEXTS]
    created = client.post(
        "/v1/embeddings/jobs", json={"model": SPLADE_INFERENCE_FREE, "input": texts, "input_type": "query"}
    )
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    deadline = time.monotonic() + 120
    while (status := client.get(f"/v1/embeddings/jobs/{job_id}").json())["status"] != "completed":
        assert status["status"] in ("queued", "in_progress"), status
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    result = client.get(f"/v1/embeddings/jobs/{job_id}/result")
    assert result.status_code == 200, result.text
    expected = library(encoders[SPLADE_INFERENCE_FREE], texts, "query")
    assert_same_sparse(from_items(result.json(), expected.shape[1]), expected)
    page = client.get(f"/v1/embeddings/jobs/{job_id}/result", params={"offset": 5, "limit": 7}).json()["data"]
    assert [item["index"] for item in page] == list(range(5, 12))
    for item in page:
        row = np.zeros(expected.shape[1])
        row[item["indices"]] = item["values"]
        assert_same_sparse(row[None], expected[item["index"]][None])


def test_models_say_each_kind_and_its_routes(client, metrics_port):
    client.post("/embed_sparse", json={"model": SPLADE_TOPK, "inputs": "load it"})
    client.post("/v1/embeddings", json={"model": MODEL, "input": "and this one"})
    deadline = time.monotonic() + 30
    while True:
        cards = {card["id"]: card for card in client.get("/v1/models").json()["data"]}
        if cards[SPLADE_TOPK].get("kind") and cards[MODEL].get("kind"):
            break
        assert time.monotonic() < deadline, cards
        time.sleep(0.2)
    sparse = cards[SPLADE_TOPK]
    assert sparse["kind"] == "sparse"
    assert sparse["routes"] == ["/embed_sparse", "/v1/embeddings", "/v1/embeddings/jobs"]
    assert (sparse["dimensions"], sparse["max_active_dims"], sparse["stored_values"]) == (30522, 64, 129)
    assert (sparse["backend"], sparse["dtype"]) == ("torch", "float32")
    assert sparse["prompt_names"] == ["query", "document"]
    assert cards[MODEL]["kind"] == "embedding" and cards[MODEL]["routes"][0] == "/v1/embeddings"
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        exposed = response.read().decode()
    assert 'embeddings_worker_model_tasks_total{kind="sparse"}' in exposed
    for kind in ("sparse", "embedding"):
        tasks = re.search(rf'embeddings_worker_model_tasks_total{{kind="{kind}"}} (\S+)', exposed)
        assert tasks is not None and float(tasks.group(1)) >= 1, kind
    assert 'embeddings_worker_model_inputs_total{kind="multivector"} 0.0' in exposed


def test_tei_clients_name_no_model_where_one_is_served(tmp_path, models, encoders):
    """TEI's client shape, as TEI's clients send it: no model, where the deployment serves that one model."""
    with running_stack(
        tmp_path / "stack", EMBED_MODELS=SPLADE, MODEL_PATHS=model_paths_setting({SPLADE: models[SPLADE]})
    ) as stack:
        response = httpx.post(
            stack.base_url + "/embed_sparse", json={"inputs": "What is Deep Learning?", "truncate": True}, timeout=60
        )
        assert response.status_code == 200, response.text
        expected = library(encoders[SPLADE], ["What is Deep Learning?"], None)
        assert_same_sparse(from_tei(response.json(), expected.shape[1]), expected)
