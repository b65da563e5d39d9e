"""``worker.long_inputs``: over-long inputs split into chunks on token boundaries (the prompt at the start of each,
consecutive chunks overlapping), weighted by the tokens their pooling reads, and pooled back per input; sparse and
multi-vector models refuse ``truncate: "chunk"``. On ``WordEncoder``, whose tokens are numbers one can read."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np
import pytest

from shared.errors import ErrorKind, ServiceError
from tests.fakes import make_embed_task
from worker.long_inputs import (
    NOT_CHUNKED,
    Chunked,
    Chunking,
    join,
    max_length,
    pool,
    refuse_chunking,
    split,
    truncation,
    unchunked,
)
from worker.multivector_pipeline import MultiVectorPipeline
from worker.sparse_pipeline import SparsePipeline

PREFIX, SUFFIX = 0, 99
#: tokens ids from here up are outside the vocabulary
VOCABULARY = 1000


class WordEncoder:
    """Each word of a text is one token, its number ("7" is 7): so "90 " + "1 2" is [90, 1, 2], and "9" + "1 2" is
    [91, 2]. Sequences are [0] + ids + [99], at most ``max_seq_length`` (8) long. Its vectors are mean pooling with
    each token's "embedding" (id, 1, id²): row = (mean id, 1, mean id²) over the tokens read, which are all of them,
    or, when the pooling leaves prompts out (``include_prompt=False``), all but the first ``prompt_length`` (the
    special token and the prompt's words, as sentence-transformers measures it). Raw vectors (no Normalize)."""

    kind: Literal["embedding"] = "embedding"
    device = "cpu"
    dimension = 3
    special_token_count = 2
    normalizes = False
    default_prompt_name: str | None = None
    modalities: tuple[str, ...] = ("text",)
    image_tokens = 0

    def __init__(self, *, include_prompt: bool = True, max_seq_length: int = 8) -> None:
        self.include_prompt = include_prompt
        self.max_seq_length = max_seq_length
        self.prompts = {"p": "90 ", "pp": "90 91 ", "glued": "9", "query": "", "document": ""}
        #: every batch's sequences and the prompt length it was encoded with
        self.batches: list[tuple[list[list[int]], int]] = []

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "dimensions": self.dimension, "max_tokens": self.max_seq_length}

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return [[int(word) for word in text.split()] for text in texts]

    def prompt_length(self, prompt: str) -> int:
        return 0 if self.include_prompt or not prompt else 1 + len(self.tokenize([prompt])[0])

    def prepare(self, ids: list[int], *, truncate: bool, param: str) -> list[int]:
        room = self.max_seq_length - self.special_token_count
        if len(ids) > room:
            if not truncate:
                raise ServiceError(ErrorKind.INPUT_TOO_LONG, "too long", param)
            ids = ids[:room]
        return [PREFIX, *ids, SUFFIX]

    def image_inputs(self, images: Sequence[Any], *, model: str | None = None) -> list[Any]:
        raise ServiceError(ErrorKind.INVALID_REQUEST, f"model {model!r} takes text only", "input")

    def check_token_ids(self, sequences: Sequence[Sequence[int]]) -> None:
        if any(token >= VOCABULARY for sequence in sequences for token in sequence):
            raise ServiceError(ErrorKind.INVALID_REQUEST, "token id out of range", "input")

    def encode(self, batch: Sequence[list[int]], prompt_length: int = 0) -> np.ndarray:
        self.batches.append(([list(ids) for ids in batch], prompt_length))
        return np.array([mean_pooled(ids[prompt_length:]) for ids in batch], dtype=np.float32)


def mean_pooled(tokens: Sequence[int]) -> list[float]:
    """``WordEncoder``'s row for the tokens its pooling reads."""
    values = np.asarray(tokens, dtype=np.float64)
    return [values.mean(), 1.0, (values**2).mean()]


def words(first: int, last: int) -> str:
    """The text whose tokens are first..last."""
    return " ".join(str(token) for token in range(first, last + 1))


def chunk(
    texts: list[str], *, prompt: str = "", overlap: int = 0, include_prompt: bool = True
) -> tuple[Chunked, Chunking]:
    encoder = WordEncoder(include_prompt=include_prompt)
    chunking = Chunking.of(encoder, prompt, overlap)
    prompted = encoder.tokenize([prompt + text for text in texts])
    return split(encoder, chunking, prompted, lambda index: encoder.tokenize([texts[index]])[0]), chunking


def test_an_input_that_fits_exactly_is_one_chunk_the_sequence_truncate_gives():
    chunked, chunking = chunk([words(1, 6), words(1, 3)])
    assert chunking.room == 6 and chunking.max_length == 8
    assert list(chunked) == [[0, 1, 2, 3, 4, 5, 6, 99], [0, 1, 2, 3, 99]]
    assert chunked.counts == [1, 1] and chunked.weights == [8, 5]
    encoder = WordEncoder()
    assert list(chunked) == [
        encoder.prepare(ids, truncate=True, param="input") for ids in encoder.tokenize([words(1, 6), words(1, 3)])
    ]


def test_one_token_over_is_two_chunks_split_on_the_boundary():
    chunked, _ = chunk([words(1, 7)])
    assert list(chunked) == [[0, 1, 2, 3, 4, 5, 6, 99], [0, 7, 99]]
    assert chunked.counts == [2] and chunked.weights == [8, 3]


def test_chunks_follow_each_other_without_overlap_by_default():
    chunked, _ = chunk([words(1, 14), words(1, 2)])
    assert list(chunked) == [[0, *range(1, 7), 99], [0, *range(7, 13), 99], [0, 13, 14, 99], [0, 1, 2, 99]]
    assert chunked.counts == [3, 1]


@pytest.mark.parametrize(
    ("last", "windows"),
    [
        (10, [(1, 6), (5, 10)]),  # the second window reaches the end: no third
        (11, [(1, 6), (5, 10), (9, 11)]),  # one token left: a third window, overlapping by two
        (7, [(1, 6), (5, 7)]),
    ],
)
def test_consecutive_chunks_overlap_by_the_overlap_tokens(last, windows):
    chunked, _ = chunk([words(1, last)], overlap=2)
    assert list(chunked) == [[0, *range(first, end + 1), 99] for first, end in windows]


def test_the_prompt_starts_every_chunk_and_takes_its_room():
    chunked, chunking = chunk([words(1, 7)], prompt="90 ")
    assert chunking.prompt_ids == (90,) and chunking.room == 5
    assert list(chunked) == [[0, 90, 1, 2, 3, 4, 5, 99], [0, 90, 6, 7, 99]]
    assert chunked.weights == [8, 5]  # the pooling reads the prompt: every token counts
    fits, _ = chunk([words(1, 5)], prompt="90 ")
    assert list(fits) == [[0, 90, 1, 2, 3, 4, 5, 99]]


def test_a_pooling_that_leaves_the_prompt_out_weighs_only_what_it_reads():
    chunked, chunking = chunk([words(1, 7)], prompt="90 91 ", include_prompt=False)
    assert chunking.pooled_out == 3  # the special token and the two prompt tokens
    assert list(chunked) == [[0, 90, 91, 1, 2, 3, 4, 99], [0, 90, 91, 5, 6, 7, 99]]
    assert chunked.weights == [5, 4]


def test_a_text_glued_to_its_prompt_is_tokenized_alone_when_it_needs_chunks():
    # "9" + "1 2 ..." tokenizes as [91, 2, ...]: the ids do not start with the prompt's [9]
    fits, _ = chunk([words(1, 6)], prompt="9")
    assert list(fits) == [[0, 91, 2, 3, 4, 5, 6, 99]]  # as the one string tokenizes: unchanged
    chunked, _ = chunk([words(1, 7)], prompt="9")
    assert list(chunked) == [[0, 9, 1, 2, 3, 4, 5, 99], [0, 9, 6, 7, 99]]


def test_token_id_input_splits_after_the_prompts_ids():
    encoder = WordEncoder()
    chunking = Chunking.of(encoder, "90 ", 0)
    chunked = split(encoder, chunking, [[90, *range(1, 8)]], lambda index: pytest.fail("not a text"))
    assert list(chunked) == [[0, 90, 1, 2, 3, 4, 5, 99], [0, 90, 6, 7, 99]]


@pytest.mark.parametrize(("prompt", "overlap", "says"), [("", 6, "CHUNK_OVERLAP_TOKENS=6"), ("90 91 ", 4, "prompt")])
def test_an_overlap_that_leaves_no_progress_is_a_400_only_for_an_input_that_needs_chunks(prompt, overlap, says):
    fits, _ = chunk([words(1, 2)], prompt=prompt, overlap=overlap)
    assert fits.counts == [1]
    with pytest.raises(ServiceError) as refused:
        chunk([words(1, 9)], prompt=prompt, overlap=overlap)
    assert refused.value.kind is ErrorKind.INVALID_REQUEST and refused.value.param == "input"
    assert says in refused.value.message


def test_a_prompt_that_fills_the_model_leaves_no_room():
    with pytest.raises(ServiceError, match="leave no room"):
        chunk([words(1, 9)], prompt="90 91 92 93 94 95 ")


def test_the_maximum_length_is_the_models_else_its_cards():
    assert max_length(WordEncoder(max_seq_length=12)) == 12
    card_only = SimpleNamespace(describe=lambda: {"max_tokens": 256})
    assert max_length(card_only) == 256
    with pytest.raises(ServiceError):
        max_length(SimpleNamespace(describe=dict))


def test_rows_are_pooled_back_weighted_by_their_tokens():
    rows = np.array([[1, 2], [3, 4], [5, 6], [7, 8]], dtype=np.float32)
    chunked = Chunked([[0]] * 4, counts=[1, 2, 1], weights=[9, 3, 1, 4])
    pooled = pool(rows, chunked)
    assert pooled.dtype == np.float32
    np.testing.assert_array_equal(pooled[[0, 2]], rows[[0, 3]])  # one chunk: the row as it is
    np.testing.assert_allclose(pooled[1], (3 * rows[1] + 1 * rows[2]) / 4, rtol=1e-7)


def test_rows_of_inputs_that_all_fit_are_returned_untouched():
    rows = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert pool(rows, Chunked([[0]] * 3, counts=[1, 1, 1], weights=[1, 1, 1])) is rows


def test_mean_pooled_chunks_average_to_the_mean_over_every_token_read():
    for include_prompt in (True, False):
        encoder = WordEncoder(include_prompt=include_prompt)
        chunked, chunking = chunk([words(1, 17)], prompt="90 ", overlap=1, include_prompt=include_prompt)
        rows = encoder.encode(chunked, chunking.pooled_out)
        read = [token for sequence in chunked for token in sequence[chunking.pooled_out :]]
        np.testing.assert_allclose(pool(rows, chunked)[0], mean_pooled(read), rtol=1e-6)


def test_requests_are_joined_with_their_layouts():
    first, _ = chunk([words(1, 7)])
    second, _ = chunk([words(1, 2), words(1, 14)])
    joined = join([first, second])
    assert isinstance(joined, Chunked) and list(joined) == [*first, *second]
    assert joined.counts == [2, 1, 3] and joined.weights == [*first.weights, *second.weights]
    assert join([[[1]], [[2], [3]]]) == [[1], [2], [3]]


def test_chunking_is_refused_where_it_has_no_meaning():
    refuse_chunking(True)
    refuse_chunking(False)
    with pytest.raises(ServiceError) as refused:
        refuse_chunking("chunk")
    assert refused.value.param == "truncate" and refused.value.message == NOT_CHUNKED


@pytest.mark.parametrize(("pipeline", "kind"), [(SparsePipeline, "sparse"), (MultiVectorPipeline, "multivector")])
def test_sparse_and_multivector_models_refuse_chunking(pipeline, kind):
    loaded = SimpleNamespace(name="m", model=SimpleNamespace(kind=kind, prompts={}, default_prompt_name=None))
    task = make_embed_task(truncate="chunk")
    with pytest.raises(ServiceError) as refused:
        pipeline(registry=None).prepare(loaded, task)
    assert refused.value.kind is ErrorKind.INVALID_REQUEST and refused.value.param == "truncate"
    assert "chunking is for dense embedding models; send truncate true or false" in refused.value.message


@pytest.mark.parametrize("truncate_inputs", [True, False])
def test_a_model_that_does_not_chunk_takes_truncate_inputs_as_its_default_and_refuses_an_asked_chunk(
    monkeypatch, truncate_inputs
):
    """With CHUNK_LONG_INPUTS on, a request to a sparse model that says no truncate (None on the wire) is cut or
    refused as TRUNCATE_INPUTS says; one that asks for "chunk" is a 400 naming truncate, the setting or not."""
    from shared.settings import Settings

    settings = Settings(_env_file=None, chunk_long_inputs=True, truncate_inputs=truncate_inputs)
    monkeypatch.setattr("worker.long_inputs.get_settings", lambda: settings)
    assert unchunked(None) is truncate_inputs
    assert unchunked(True) is True and unchunked(False) is False
    with pytest.raises(ServiceError) as refused:
        unchunked("chunk")
    assert refused.value.param == "truncate"


@pytest.mark.parametrize(
    ("chunk_long_inputs", "truncate_inputs", "default"),
    [(True, False, "chunk"), (True, True, "chunk"), (False, True, True), (False, False, False)],
)
def test_a_dense_models_default_truncation_is_the_deployments(monkeypatch, chunk_long_inputs, truncate_inputs, default):
    """No truncate said: CHUNK_LONG_INPUTS's "chunk", else TRUNCATE_INPUTS; a truncate said is kept."""
    from shared.settings import Settings

    settings = Settings(_env_file=None, chunk_long_inputs=chunk_long_inputs, truncate_inputs=truncate_inputs)
    monkeypatch.setattr("worker.long_inputs.get_settings", lambda: settings)
    assert truncation(None) == default
    for asked in (True, False, "chunk"):
        assert truncation(asked) == asked
