"""``worker.models.multivector_encoder``: the fixture ``MultiVectorEncoder`` (MiniLM, a seeded 384->128 projection,
queries expanded to 32 tokens, punctuation left out of documents) served in batches of mixed texts, every token
vector against the library's own ``encode`` / ``encode_query`` / ``encode_document``."""

from __future__ import annotations

import numpy as np
import pytest
from sentence_transformers import MultiVectorEncoder

from shared.errors import ErrorKind, ServiceError
from tests.model_fixtures import MULTIVECTOR_MODEL, save_multivector
from worker.models.device_budget import longest_input
from worker.models.multivector_encoder import MultiVectorTokenEncoder, resolve_prompt, task_group

TEXTS = [
    "What is the capital of France?",
    "a",
    "Berlin, is! in Germany... (really?)",
    "Ünïcödé, emoji 🙂 and numbers 3.14159.",
    "long " * 300,  # past the document length and the query length
]


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> MultiVectorEncoder:
    path = save_multivector(tmp_path_factory.mktemp("multivector"))[MULTIVECTOR_MODEL]
    return MultiVectorEncoder(str(path), device="cpu")


@pytest.fixture(scope="module")
def encoder(library) -> MultiVectorTokenEncoder:
    return MultiVectorTokenEncoder(library)


def reference(library: MultiVectorEncoder, task: str | None, texts: list[str]) -> list[np.ndarray]:
    encode = {None: library.encode, "query": library.encode_query, "document": library.encode_document}[task]
    return list(encode(texts, convert_to_numpy=True))


@pytest.mark.parametrize("task", [None, "query", "document"])
def test_token_vectors_are_the_librarys_in_any_batch(library, encoder, task):
    prompt = resolve_prompt(encoder.prompts, encoder.default_prompt_name, None, task)
    sequences = encoder.texts(TEXTS, prompt=prompt, task=task, truncate=True)
    # batched otherwise than the library batches them: the longest with the shortest, the others together
    first = encoder.encode([sequences[4], sequences[1]], task_group(task))
    second = encoder.encode([sequences[0], sequences[2], sequences[3]], task_group(task))
    served = [second[0], first[1], second[1], second[2], first[0]]
    for expected, got in zip(reference(library, task, TEXTS), served, strict=True):
        assert got.dtype == np.float32
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_queries_are_expanded_to_the_query_length_and_documents_skip_punctuation(encoder):
    query = encoder.texts(["hi"], prompt="[unused0] ", task="query", truncate=True)[0]
    assert len(query) == 32 and query.real_tokens == 4  # [CLS] [unused0] hi [SEP], then 28 [MASK]s
    assert encoder.encode([query], task_group("query"))[0].shape == (32, 128)
    document = encoder.texts(["hi, there!"], prompt="[unused1] ", task="document", truncate=True)[0]
    assert encoder.encode([document], task_group("document"))[0].shape == (5, 128)  # "," and "!" left out


def test_truncate_false_refuses_a_text_longer_than_its_task_reads(encoder):
    with pytest.raises(ServiceError) as raised:
        encoder.texts(["word " * 40], prompt="[unused0] ", task="query", truncate=False)
    assert raised.value.kind is ErrorKind.INPUT_TOO_LONG and "at most 32" in raised.value.message
    assert len(encoder.texts(["word " * 40], prompt="[unused1] ", task="document", truncate=False)[0]) == 43
    with pytest.raises(ServiceError):
        encoder.texts(["word " * 200], prompt="[unused1] ", task="document", truncate=False)


def test_prompts_are_chosen_as_encode_query_and_encode_document_choose_them():
    prompts = {"query": "Q: ", "passage": "P: ", "other": "O: "}
    assert resolve_prompt(prompts, "other", None, "query") == "Q: "
    assert resolve_prompt(prompts, "other", None, "document") == "P: "
    assert resolve_prompt(prompts, "other", None, None) == "O: "
    assert resolve_prompt(prompts, None, "other", "query") == "O: "
    assert resolve_prompt({}, None, None, "query") == ""
    with pytest.raises(ServiceError) as raised:
        resolve_prompt(prompts, None, "missing", None)
    assert raised.value.param == "prompt_name" and "'query'" in raised.value.message


def test_similarity_is_the_models_maxsim(library, encoder):
    query = encoder.encode(encoder.texts(["capital of France"], prompt="[unused0] ", task="query", truncate=True), 1)
    documents = encoder.encode(encoder.texts(TEXTS, prompt="[unused1] ", task="document", truncate=True), 2)
    scores = encoder.similarity(query[0], list(documents))
    expected = library.similarity(library.encode_query(["capital of France"]), library.encode_document(TEXTS))[0]
    np.testing.assert_allclose(scores, expected.numpy(), atol=1e-5, rtol=0)
    # MaxSim: for each query token, the largest dot product with a document token, summed
    by_hand = (query[0] @ documents[0].T).max(axis=1).sum()
    assert abs(scores[0] - by_hand) < 1e-4
    assert encoder.describe()["kind"] == "multivector" and encoder.describe()["query_tokens"] == 32


def test_the_gpu_memory_probe_input_is_a_text_at_the_models_length(encoder):
    probe = longest_input(encoder)
    assert len(probe) == encoder.max_seq_length
    assert encoder.encode([probe], 0)[0].shape[1] == 128
