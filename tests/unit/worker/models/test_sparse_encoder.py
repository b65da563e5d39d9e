"""``worker.models.sparse_encoder``: a ``SparseEncoder`` behind the batcher's interface gives the library's own rows
for every task (``encode``, ``encode_query``, ``encode_document``), on SPLADE, SPLADE with ``max_active_dims`` and an
inference-free SPLADE, whatever it is batched with; its tokens are the library's."""

from __future__ import annotations

import numpy as np
import pytest
from sentence_transformers import SparseEncoder

from shared.errors import ErrorKind, ServiceError
from shared.settings import Settings
from tests.model_fixtures import SPLADE, SPLADE_INFERENCE_FREE, SPLADE_TOPK, build_sparse
from worker.models.device_budget import longest_input
from worker.models.sparse_encoder import SparseEncoderModel, place_sparse

TEXTS = ["The quick brown fox jumps over the lazy dog.", "short", "Micro-batching groups requests. " * 8]


@pytest.fixture(scope="module")
def libraries(tmp_path_factory) -> dict[str, SparseEncoder]:
    paths = build_sparse(tmp_path_factory.mktemp("sparse"))
    return {name: SparseEncoder(str(path), device="cpu") for name, path in paths.items()}


def library(model: SparseEncoder, texts: list[str], task: str | None) -> np.ndarray:
    encode = {None: model.encode, "query": model.encode_query, "document": model.encode_document}[task]
    rows: np.ndarray = encode(texts, convert_to_tensor=True, convert_to_sparse_tensor=False).numpy()
    return rows


@pytest.mark.parametrize("task", [None, "query", "document"])
@pytest.mark.parametrize("name", [SPLADE, SPLADE_TOPK, SPLADE_INFERENCE_FREE])
def test_rows_are_the_librarys(libraries, name, task):
    model = SparseEncoderModel(libraries[name])
    prompt = model.prompts.get(task or "", "") if name == SPLADE_TOPK else ""
    sequences = model.sequences(TEXTS, prompt=prompt, task=task, truncate=True)
    rows = model.encode(sequences, model.group(task))
    expected = library(libraries[name], TEXTS, task)
    assert rows.shape == expected.shape == (3, 30522)
    assert np.abs(rows - expected).max() <= 1e-5
    # one text at a time, padded differently: the same rows
    for row, sequence in zip(rows, sequences, strict=True):
        assert np.abs(model.encode([sequence], model.group(task))[0] - row).max() <= 1e-5
    if name == SPLADE_TOPK:
        assert ((rows != 0).sum(1) <= 64).all()


def test_tasks_share_batches_only_where_the_model_routes_by_them(libraries):
    plain, routed = SparseEncoderModel(libraries[SPLADE]), SparseEncoderModel(libraries[SPLADE_INFERENCE_FREE])
    assert not plain.routed and {plain.group(task) for task in (None, "query", "document")} == {0}
    assert routed.routed and len({routed.group(task) for task in (None, "query", "document")}) == 3
    # the query route of an inference-free model adds no special tokens; the document route adds [CLS] and [SEP]
    assert (routed.special_tokens("query"), routed.special_tokens("document"), routed.special_tokens(None)) == (0, 2, 2)
    assert len(routed.sequences(["hello world"], prompt="", task="query", truncate=True)[0]) == 2


def test_collate_then_run_is_encode(libraries):
    model = SparseEncoderModel(libraries[SPLADE_INFERENCE_FREE])
    sequences = model.sequences(TEXTS, prompt="", task="query", truncate=True)
    group = model.group("query")
    assert np.array_equal(model.run(model.collate(sequences, group)), model.encode(sequences, group))


def test_a_long_text_is_cut_or_refused(libraries):
    model = SparseEncoderModel(libraries[SPLADE])
    long = "word " * 600
    assert len(model.sequences([long], prompt="", task=None, truncate=True)[0]) == 512
    with pytest.raises(ServiceError) as refused:
        model.sequences(["short", long], prompt="", task=None, truncate=False)
    assert refused.value.kind is ErrorKind.INPUT_TOO_LONG and "input 1 has 602 tokens" in refused.value.message
    assert len(model.sequences(["word " * 510], prompt="", task=None, truncate=False)[0]) == 512


def test_its_card_and_its_room_in_a_job(libraries):
    topk = place_sparse(libraries[SPLADE_TOPK], Settings(_env_file=None))
    card = topk.describe()
    assert card["kind"] == "sparse" and card["dimensions"] == 30522 and card["max_active_dims"] == 64
    assert (card["backend"], card["dtype"], card["prompt_names"]) == ("torch", "float32", ["query", "document"])
    assert card["stored_values"] == 1 + 2 * 64
    assert SparseEncoderModel(libraries[SPLADE]).stored_values == 1 + 2 * 512


def test_the_gpu_memory_probe_input_is_a_text_at_the_models_length(libraries):
    model = SparseEncoderModel(libraries[SPLADE])
    probe = longest_input(model)
    assert len(probe) == model.max_seq_length
    assert model.encode([probe]).shape == (1, model.dimension)
