"""``worker.sparse_pipeline``: which prompt and task a sparse request gets (as ``SparseEncoder`` picks them), the
options a sparse model refuses, and sparse tasks through a real fixture model's batcher, with no Redis."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sentence_transformers import SparseEncoder

from shared.errors import ServiceError
from shared.protocol import SparseEmbedTask
from tests.fakes import make_embed_task
from tests.model_fixtures import SPLADE, SPLADE_TOPK, build_sparse
from worker.models.registry import ModelRegistry
from worker.models.sparse_encoder import SparseEncoderModel
from worker.sparse_pipeline import SparsePipeline, sparse_prompt

PROMPTS = {"query": "q: ", "passage": "p: ", "corpus": "c: ", "other": "o: "}


@pytest.mark.parametrize(
    ("prompts", "default", "prompt_name", "input_type", "expected"),
    [
        (PROMPTS, None, None, None, ""),
        (PROMPTS, "other", None, None, "o: "),  # encode: the default prompt
        (PROMPTS, "other", None, "query", "q: "),  # encode_query: its query prompt
        ({"other": "o: "}, "other", None, "query", "o: "),  # no query prompt: encode_query falls back to the default
        ({"query": "", "other": "o: "}, "other", None, "query", ""),  # an empty query prompt is no prompt
        (PROMPTS, None, None, "document", "p: "),  # encode_document: document, passage, corpus, in that order
        ({"corpus": "c: "}, None, None, "document", "c: "),
        (PROMPTS, None, "corpus", "query", "c: "),  # a named prompt wins
    ],
)
def test_prompts_are_picked_as_sparse_encoder_picks_them(prompts, default, prompt_name, input_type, expected):
    assert sparse_prompt(prompts, default, prompt_name, input_type) == expected


def test_the_librarys_own_choice_agrees(tmp_path):
    """On a real model: ``encode_query`` / ``encode_document`` / ``encode`` with the prompt ``sparse_prompt`` picks,
    given explicitly, give the same rows as the library choosing it."""
    model = SparseEncoder(str(build_sparse(tmp_path)[SPLADE_TOPK]), device="cpu")
    model.default_prompt_name = "document"
    for input_type, encode in [
        (None, model.encode),
        ("query", model.encode_query),
        ("document", model.encode_document),
    ]:
        prompt = sparse_prompt(model.prompts, model.default_prompt_name, None, input_type)
        chosen = encode(["a text"], convert_to_tensor=True, convert_to_sparse_tensor=False)
        given = encode(["a text"], prompt=prompt, convert_to_tensor=True, convert_to_sparse_tensor=False)
        assert np.array_equal(chosen.numpy(), given.numpy()), input_type


def test_an_unknown_prompt_is_a_400_listing_the_models():
    with pytest.raises(ServiceError, match="no prompt named 'x'; its prompts: 'query', 'passage'") as refused:
        sparse_prompt(PROMPTS, None, "x", None)
    assert refused.value.param == "prompt_name"


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return build_sparse(tmp_path_factory.mktemp("sparse"))


@pytest.fixture
async def pipeline(paths):
    def load(name: str) -> SparseEncoderModel:
        return SparseEncoderModel(SparseEncoder(str(paths[name]), device="cpu"))

    registry = ModelRegistry(load, max_loaded=4, failure_ttl_s=60, max_batch_size=8, max_batch_tokens=4096)
    yield SparsePipeline(registry, max_tokens=200)
    await registry.close()


async def test_a_task_gets_the_librarys_rows_and_its_usage(pipeline, paths):
    texts = ["hello world", "a second, longer text"]
    task = make_embed_task(model=SPLADE_TOPK, inputs=texts, input_type="query")
    assert await pipeline.serves(task)
    sparse = await pipeline.embed_sparse(task)
    library = SparseEncoder(str(paths[SPLADE_TOPK]), device="cpu")
    expected = library.encode_query(texts, convert_to_tensor=True, convert_to_sparse_tensor=False).numpy()
    for (indices, values), row in zip(sparse.rows, expected, strict=True):
        assert indices.tolist() == np.nonzero(row)[0].tolist()
        assert np.abs(values - row[indices]).max() <= 1e-5
    # usage: the prompt's tokens and the text's, no special ones
    read = library.tokenizer(["query: " + text for text in texts], add_special_tokens=False)["input_ids"]
    assert sparse.prompt_tokens == sum(map(len, read)) == 11


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"dimensions": 8}, "dimensions"),
        ({"normalize": False}, "normalize"),
        ({"output_dtype": "binary"}, "output_dtype"),
        ({"input_kind": "tokens", "inputs": [[1, 2]]}, "input"),
        ({"inputs": ["word " * 300]}, "input"),  # over the request's token limit
    ],
)
async def test_options_a_sparse_vector_has_no_meaning_for_are_refused(pipeline, change, param):
    with pytest.raises(ServiceError) as refused:
        await pipeline.embed_sparse(make_embed_task(model=SPLADE, **change))
    assert refused.value.param == param


async def test_a_base64_request_gets_sparse_rows_all_the_same(pipeline):
    """The OpenAI clients ask for base64 by default: sparse rows are answered whatever the format."""
    assert len((await pipeline.embed_sparse(make_embed_task(model=SPLADE, encoding_format="base64"))).rows) == 2


async def test_a_tei_task_is_served(pipeline):
    fields = {
        field.name: getattr(make_embed_task(model=SPLADE), field.name) for field in dataclasses.fields(SparseEmbedTask)
    }
    task = SparseEmbedTask(**fields)
    assert len((await pipeline.embed_sparse(task)).rows) == 2
