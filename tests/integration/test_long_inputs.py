"""``truncate: "chunk"`` over the real stack (redis-server, one worker, the API; ``CHUNK_LONG_INPUTS=true``,
``CHUNK_OVERLAP_TOKENS=32``): texts of hundreds of tokens split into chunks, each vector held within 1e-5 to a
reference built here with the library on the same token chunks (the tokenizer's ids, the prompt's ids at the start
of each chunk, [CLS] ... [SEP]; the model's modules but its Normalize on each chunk; the chunks' vectors averaged
weighted by the tokens their pooling read; normalized with numpy), through ``/v1/embeddings`` (float, and cut by
``dimensions``), a job and a Batch API line; usage is the reference's token count; a text that fits is
``SentenceTransformer.encode``'s vector; a sparse model refuses ``"chunk"``."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import torch
from sentence_transformers import SentenceTransformer, SparseEncoder
from sentence_transformers.sentence_transformer.modules import Normalize

from tests.integration.conftest import MODEL, TEXTS, assert_same_vectors, unit_rows, vectors_of
from tests.integration.test_batches import embeddings_of, jsonl, lines_of, run_batch
from tests.model_fixtures import SPLADE, _splade_modules, model_paths_setting, prompts_left_out_of_pooling
from tests.stack import running_stack

OVERLAP = 32
#: e5-style prompts, "document" ("passage: ") by default, which the pooling leaves out
PROMPTED = "test/minilm-prompts-excluded"
#: about 900 and 330 tokens: four chunks and two
LONG = " ".join(f"{TEXTS[i % len(TEXTS)]} (sentence {i})" for i in range(60))
MEDIUM = " ".join(f"Chunk boundaries fall between tokens, number {i} of them." for i in range(30))
SHORT = TEXTS[2]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("long-input-models")
    paths = {PROMPTED: folder / "prompted", SPLADE: folder / "splade"}
    prompts_left_out_of_pooling().save(str(paths[PROMPTED]))
    SparseEncoder(modules=_splade_modules(), device="cpu").save(str(paths[SPLADE]))
    return paths


@pytest.fixture(scope="module")
def stack(tmp_path_factory, models):
    with running_stack(
        tmp_path_factory.mktemp("long-inputs"),
        MODEL_PATHS=model_paths_setting(models),
        CHUNK_LONG_INPUTS="true",
        CHUNK_OVERLAP_TOKENS=str(OVERLAP),
    ) as stack:
        yield stack


@pytest.fixture
def client(stack):
    with httpx.Client(base_url=stack.base_url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def prompted_model(models) -> SentenceTransformer:
    return SentenceTransformer(str(models[PROMPTED]), device="cpu")


def chunks_of(model: SentenceTransformer, text: str, prompt: str = "") -> list[list[int]]:
    """The token chunks of ``text``, built here: the prompt's ids and a window of the text's, [CLS] ... [SEP];
    windows of what is left of the model's length, ``OVERLAP`` tokens shared by consecutive ones."""
    tokenizer = model.tokenizer
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    text_ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    room = model.max_seq_length - 2 - len(prompt_ids)
    windows = [text_ids[start : start + room] for start in range(0, max(len(text_ids) - OVERLAP, 1), room - OVERLAP)]
    assert sum(len(window) for window in windows) - OVERLAP * (len(windows) - 1) == len(text_ids)
    return [[tokenizer.cls_token_id, *prompt_ids, *window, tokenizer.sep_token_id] for window in windows]


def reference(model: SentenceTransformer, text: str, prompt: str = "") -> tuple[np.ndarray, int]:
    """``text``'s vector from its chunks, and the tokens the chunks hold less their special tokens (its usage)."""
    modules = [module for module in model if not isinstance(module, Normalize)]
    # the tokens a pooling that leaves the prompt out skips, measured as sentence-transformers measures them
    skipped = len(model.tokenizer(prompt)["input_ids"]) - 1 if prompt and not model[1].include_prompt else 0
    vectors, weights = [], []
    for ids in chunks_of(model, text, prompt):
        features = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.int64)}
        if skipped:
            features["prompt_length"] = skipped
        with torch.inference_mode():
            for module in modules:
                features = module(features)
        vectors.append(features["sentence_embedding"][0].numpy().astype(np.float64))
        weights.append(len(ids) - skipped)
    pooled = np.average(np.array(vectors), axis=0, weights=weights)
    tokens = sum(len(ids) - 2 for ids in chunks_of(model, text, prompt))
    return pooled, tokens


def expected(model: SentenceTransformer, texts: list[str], prompt: str = "", dimensions: int | None = None):
    pooled, tokens = zip(*(reference(model, text, prompt) for text in texts), strict=True)
    vectors = np.array(pooled)[:, :dimensions]
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True), sum(tokens)


def test_the_texts_are_long_enough_to_chunk(reference_model):
    assert [len(chunks_of(reference_model, text)) for text in (LONG, MEDIUM, SHORT)] == [4, 2, 1]
    assert len(reference_model.tokenizer(LONG, verbose=False)["input_ids"]) > 700


@pytest.mark.parametrize("dimensions", [None, 128])
def test_long_texts_are_the_weighted_mean_of_their_chunks(client, reference_model, dimensions):
    body = {"model": MODEL, "input": [LONG, MEDIUM, SHORT], "truncate": "chunk"}
    if dimensions:
        body["dimensions"] = dimensions
    response = client.post("/v1/embeddings", json=body)
    assert response.status_code == 200, response.text
    vectors, tokens = expected(reference_model, [LONG, MEDIUM, SHORT], dimensions=dimensions)
    got = vectors_of(response.json())
    assert_same_vectors(got, vectors)
    report("sync" if dimensions is None else f"sync, dimensions {dimensions}", got, vectors)
    assert response.json()["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    # a text that fits is the library's own vector (cut to dimensions and made unit again)
    encoded = reference_model.encode([SHORT], convert_to_numpy=True, normalize_embeddings=True)
    assert_same_vectors(got[2:], encoded if dimensions is None else unit_rows(encoded[:, :dimensions]))


def test_a_text_that_fits_is_exactly_what_truncate_gives_it(client, reference_model):
    vectors = {}
    for truncate in ("chunk", True):
        response = client.post("/v1/embeddings", json={"model": MODEL, "input": SHORT, "truncate": truncate})
        vectors[truncate] = response.json()["data"][0]["embedding"]
    assert vectors["chunk"] == vectors[True]
    encoded = reference_model.encode([SHORT], convert_to_numpy=True, normalize_embeddings=True)
    assert_same_vectors(np.array([vectors["chunk"]]), encoded)


def test_chunk_long_inputs_makes_chunking_the_default(client, reference_model):
    chunked = client.post("/v1/embeddings", json={"model": MODEL, "input": [MEDIUM]})
    assert_same_vectors(vectors_of(chunked.json()), expected(reference_model, [MEDIUM])[0])
    cut = client.post("/v1/embeddings", json={"model": MODEL, "input": [MEDIUM], "truncate": True})
    encoded = reference_model.encode([MEDIUM], convert_to_numpy=True, normalize_embeddings=True)  # cut at 256
    assert_same_vectors(vectors_of(cut.json()), encoded)
    assert np.abs(vectors_of(chunked.json()) - vectors_of(cut.json())).max() > 1e-3  # not the same vector
    refused = client.post("/v1/embeddings", json={"model": MODEL, "input": [MEDIUM], "truncate": False})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "context_length_exceeded"


def test_the_prompt_starts_every_chunk_and_its_pooling_leaves_it_out(client, prompted_model):
    body = {"model": PROMPTED, "input": [LONG, SHORT], "truncate": "chunk"}  # the default prompt: "passage: "
    response = client.post("/v1/embeddings", json=body)
    assert response.status_code == 200, response.text
    vectors, tokens = expected(prompted_model, [LONG, SHORT], prompt="passage: ")
    got = vectors_of(response.json())
    assert_same_vectors(got, vectors)
    report("prompt left out of pooling", got, vectors)
    assert response.json()["usage"]["prompt_tokens"] == tokens
    encoded = prompted_model.encode([SHORT], convert_to_numpy=True, normalize_embeddings=True)
    assert_same_vectors(got[1:], encoded)


def test_a_job_chunks_its_long_inputs(client, reference_model):
    body = {"model": MODEL, "input": [MEDIUM, SHORT, LONG], "truncate": "chunk"}
    job = client.post("/v1/embeddings/jobs", json=body)
    assert job.status_code == 202, job.text
    deadline = time.monotonic() + 120
    while (status := client.get(f"/v1/embeddings/jobs/{job.json()['id']}").json())["status"] not in (
        "completed",
        "failed",
    ):
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    assert status["status"] == "completed", status
    result = client.get(f"/v1/embeddings/jobs/{job.json()['id']}/result")
    assert result.status_code == 200, result.text
    vectors, tokens = expected(reference_model, [MEDIUM, SHORT, LONG])
    got = vectors_of(result.json())
    assert_same_vectors(got, vectors)
    report("job", got, vectors)
    assert result.json()["usage"]["prompt_tokens"] == tokens


def test_a_batch_line_chunks_its_long_inputs_and_others_end_alone(stack, reference_model):
    bodies = [
        {"model": MODEL, "input": [LONG, SHORT], "truncate": "chunk"},
        {"model": MODEL, "input": LONG, "truncate": False},  # refused alone
        {"model": MODEL, "input": MEDIUM, "truncate": "chunk", "dimensions": 64},
    ]
    with openai.OpenAI(base_url=stack.base_url + "/v1", api_key="unused", max_retries=0, timeout=120) as client:
        batch = run_batch(client, jsonl(bodies))
        assert batch.status == "completed" and (batch.request_counts.completed, batch.request_counts.failed) == (2, 1)
        output = {line["custom_id"]: line["response"]["body"] for line in lines_of(client, batch.output_file_id)}
        failed = lines_of(client, batch.error_file_id)
    assert [line["custom_id"] for line in failed] == ["request-1"]
    for custom_id, texts, dimensions in (("request-0", [LONG, SHORT], None), ("request-2", [MEDIUM], 64)):
        vectors, tokens = expected(reference_model, texts, dimensions=dimensions)
        got = embeddings_of(output[custom_id])
        assert_same_vectors(got, vectors)
        report(f"batch line {custom_id}", got, vectors)
        assert output[custom_id]["usage"]["prompt_tokens"] == tokens


def test_a_sparse_model_cuts_where_chunking_is_the_deployments_default_and_refuses_an_asked_chunk(client):
    """A sparse model does not chunk: with CHUNK_LONG_INPUTS on, a request that says no truncate is cut as
    TRUNCATE_INPUTS says (true here), not refused; one that asks for "chunk" is a 400 naming truncate, and a
    dense model's request sent at the same moment is served."""
    response = client.post("/v1/embeddings", json={"model": SPLADE, "input": [LONG]})
    assert response.status_code == 200, response.text
    assert response.json()["data"][0]["object"] == "sparse_embedding"
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        asked = pool.submit(client.post, "/v1/embeddings", json={"model": SPLADE, "input": [LONG], "truncate": "chunk"})
        dense = pool.submit(client.post, "/v1/embeddings", json={"model": MODEL, "input": [LONG]})
        refused, served = asked.result(), dense.result()
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["param"] == "truncate"
    assert "chunking is for dense embedding models" in refused.json()["error"]["message"]
    assert served.status_code == 200, served.text


def report(what: str, got: np.ndarray, vectors: np.ndarray) -> None:
    """The largest difference from the reference, for the log (``-s``)."""
    print(f"{what}: max |difference| {np.abs(got - vectors).max():.3g}")
