"""``worker.pipeline``: tokenize, batch and encode a job, with no Redis anywhere (a stub model)."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from shared.errors import ErrorKind, ServiceError
from shared.openai_json import float_text_bytes
from tests.fakes import Loader, fake_vector, make_embed_chunk, make_embed_task, make_registry
from tests.unit.worker.test_long_inputs import WordEncoder, mean_pooled, words
from worker.models.encoder import IMAGE_GROUP, ImageInput
from worker.models.registry import ModelRegistry
from worker.pipeline import EmbeddingPipeline


@pytest.fixture
async def pipeline():
    registry = make_registry(Loader(failing={"missing"}))
    yield EmbeddingPipeline(registry, max_tokens=6)
    await registry.close()


async def test_a_job_is_embedded_in_input_order_with_its_tokens_counted(pipeline):
    embedded = await pipeline.embed(make_embed_task(inputs=["abc", "de"], dimensions=2))
    assert embedded.vectors.tolist() == [fake_vector("abc")[:2], fake_vector("de")[:2]]
    assert embedded.prompt_tokens == 2 and pipeline.largest_batch[0] >= 2


async def test_the_job_limits_are_the_pipelines(pipeline):
    with pytest.raises(ServiceError) as too_many:
        await pipeline.embed(make_embed_task(input_kind="tokens", inputs=[[1] * 7]))
    assert too_many.value.kind is ErrorKind.INVALID_REQUEST
    with pytest.raises(ServiceError) as too_wide:
        await pipeline.embed(make_embed_task(dimensions=5))
    assert too_wide.value.param == "dimensions"
    with pytest.raises(ServiceError) as unknown:
        await pipeline.embed(make_embed_task(model="missing"))
    assert unknown.value.kind is ErrorKind.MODEL_NOT_FOUND


async def test_a_batch_chunks_requests_each_end_alone_and_are_measured_for_their_file(pipeline):
    job = make_embed_chunk(parent_job="batch_1", input_kind="tokens", inputs=[[1, 2], [150], [3], [4]], parts=[1, 1, 2])
    vectors, parts = await pipeline.embed_parts(job, job.parts)
    assert vectors is not None and vectors.shape == (3, 4)  # the refused request has no rows
    assert parts[1].error is not None and parts[1].error.param == "input"
    assert [part.float_text_bytes for part in parts] == [
        float_text_bytes(vectors[:1]),
        None,
        float_text_bytes(vectors[1:]),
    ]
    assert np.all(np.isfinite(vectors))


# truncate "chunk" (worker.long_inputs), on WordEncoder: tokens are numbers, 8 tokens a sequence, mean pooling


def word_registry():
    """WordEncoder as "words", and the same with a pooling that leaves the prompt out as "words-excluded"; batches
    of at most four sequences, so one input's chunks are encoded in several batches."""
    return ModelRegistry(
        lambda name: WordEncoder(include_prompt=not name.endswith("excluded")),
        max_loaded=2,
        failure_ttl_s=60,
        max_batch_size=4,
        max_batch_tokens=100,
    )


@pytest.fixture
async def chunking():
    registry = word_registry()
    yield EmbeddingPipeline(registry, max_tokens=40, chunk_overlap_tokens=1)
    await registry.close()


def read_by_pooling(chunked_sequences: list[list[int]], pooled_out: int) -> list[int]:
    return [token for sequence in chunked_sequences for token in sequence[pooled_out:]]


async def test_a_chunked_input_is_the_mean_over_every_token_its_chunks_read(chunking):
    long, short = words(1, 13), words(5, 7)
    embedded = await chunking.embed(make_embed_task(model="words", inputs=[long, short], truncate="chunk"))
    # room 6, overlap 1: windows 1-6, 6-11, 11-13; each with [0] ... [99]
    chunks = [[0, *range(1, 7), 99], [0, *range(6, 12), 99], [0, 11, 12, 13, 99]]
    np.testing.assert_allclose(embedded.vectors[0], mean_pooled(read_by_pooling(chunks, 0)), rtol=1e-6)
    assert embedded.vectors.dtype == np.float32 and embedded.vectors.shape == (2, 3)
    cut = await chunking.embed(make_embed_task(model="words", inputs=[short], truncate=True))
    assert embedded.vectors[1].tobytes() == cut.vectors[0].tobytes()  # an input that fits: unchanged
    # every chunk's tokens less its special tokens: 6 + 6 + 3 for the long one, 3 for the short one
    assert embedded.prompt_tokens == 18


async def test_a_chunked_vector_is_cut_and_normalized_as_any_other(chunking):
    task = make_embed_task(model="words", inputs=[words(1, 13)], truncate="chunk")
    raw = (await chunking.embed(task)).vectors[0].astype(np.float64)
    asked = make_embed_task(model="words", inputs=[words(1, 13)], truncate="chunk", dimensions=2, normalize=True)
    vectors = (await chunking.embed(asked)).vectors
    np.testing.assert_allclose(vectors[0], raw[:2] / np.linalg.norm(raw[:2]), rtol=1e-6)


async def test_the_prompt_is_in_every_chunk_and_the_pooling_that_leaves_it_out_keeps_its_group(chunking):
    task = make_embed_task(model="words-excluded", inputs=[words(1, 9)], truncate="chunk", prompt_name="p")
    embedded = await chunking.embed(task)
    encoder = (await chunking.registry.get("words-excluded")).model
    chunks = [sequence for batch, _ in encoder.batches for sequence in batch]
    assert chunks == [[0, 90, 1, 2, 3, 4, 5, 99], [0, 90, 5, 6, 7, 8, 9, 99]]
    assert {prompt_length for _, prompt_length in encoder.batches} == {2}  # [0] and the prompt, in every chunk
    np.testing.assert_allclose(embedded.vectors[0], mean_pooled(read_by_pooling(chunks, 2)), rtol=1e-6)
    assert embedded.prompt_tokens == 12  # the prompt is read twice: it counts twice


async def test_token_ids_are_chunked_after_their_prompt(chunking):
    task = make_embed_task(model="words", input_kind="tokens", inputs=[list(range(1, 10))], truncate="chunk")
    by_text = make_embed_task(model="words", inputs=[words(1, 9)], truncate="chunk")
    assert (await chunking.embed(task)).vectors.tobytes() == (await chunking.embed(by_text)).vectors.tobytes()


async def test_the_token_limit_holds_every_chunks_tokens(chunking):
    # 26 tokens make 5 chunks (room 6, step 5) of 8 tokens each with their special tokens: 40, at the limit
    fine = await chunking.embed(make_embed_task(model="words", inputs=[words(1, 26)], truncate="chunk"))
    assert fine.prompt_tokens == 40 - 5 * 2
    encoder = (await chunking.registry.get("words")).model
    assert [len(batch) for batch, _ in encoder.batches] == [4, 1]  # one input's chunks, in two batches
    with pytest.raises(ServiceError) as refused:  # one more: a sixth chunk, over it
        await chunking.embed(make_embed_task(model="words", inputs=[words(1, 27)], truncate="chunk"))
    assert refused.value.kind is ErrorKind.INVALID_REQUEST and "at most 40" in refused.value.message


@pytest.mark.parametrize(
    ("input_kind", "inputs", "why"),
    [
        # the second request is over the token limit once chunked
        ("text", [words(1, 13), words(1, 40), words(3, 4), words(2, 20)], "at most 40"),
        # the second request has a token id outside the vocabulary
        ("tokens", [list(range(1, 10)), [5000], [3], list(range(4, 12))], "out of range"),
    ],
)
async def test_a_chunked_batch_chunks_requests_each_end_alone(chunking, input_kind, inputs, why):
    job = make_embed_chunk(model="words", input_kind=input_kind, inputs=inputs, parts=[1, 1, 2], truncate="chunk")
    vectors, parts = await chunking.embed_parts(job, job.parts)
    assert vectors is not None and vectors.shape == (3, 3)  # one row per input of the requests that succeeded
    assert parts[1].error is not None and why in parts[1].error.message and parts[1].float_text_bytes is None
    alone = [
        await chunking.embed(
            make_embed_task(model="words", input_kind=input_kind, inputs=inputs[a:b], truncate="chunk")
        )
        for a, b in ((0, 1), (2, 4))
    ]
    assert [parts[0].prompt_tokens, parts[2].prompt_tokens] == [embedded.prompt_tokens for embedded in alone]
    assert parts[0].float_text_bytes == float_text_bytes(vectors[:1]) == float_text_bytes(alone[0].vectors)
    assert parts[2].float_text_bytes == float_text_bytes(vectors[1:]) == float_text_bytes(alone[1].vectors)


# texts and images in one job (``mixed``), on WordEncoder with pictures: an image is one gray pixel, its row
# (gray, 2, gray²), its cost 3 tokens


class PictureWordEncoder(WordEncoder):
    modalities = ("text", "image")
    image_tokens = 3

    def image_inputs(self, images, *, model=None):
        return [
            ImageInput({"gray": np.array([image.convert("L").getpixel((0, 0))], dtype=np.float32)}, 3)
            for image in images
        ]

    def encode(self, batch, prompt_length=0):
        if prompt_length != IMAGE_GROUP:
            return super().encode(batch, prompt_length)
        self.batches.append(([["image"] for _ in batch], prompt_length))
        grays = np.array([image.features["gray"][0] for image in batch], dtype=np.float64)
        return np.stack([grays, np.full_like(grays, 2.0), grays**2], axis=1).astype(np.float32)


def gray_png(gray: int) -> dict[str, str]:
    buffer = io.BytesIO()
    Image.new("L", (1, 1), gray).save(buffer, format="PNG")
    return {"image": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()}


@pytest.fixture
async def pictures():
    registry = ModelRegistry(
        lambda name: PictureWordEncoder() if name == "pictures" else WordEncoder(),
        max_loaded=2,
        failure_ttl_s=60,
        max_batch_size=4,
        max_batch_tokens=100,
    )
    yield EmbeddingPipeline(registry, max_tokens=60)
    await registry.close()


@pytest.mark.parametrize("truncate", [True, "chunk"])
async def test_texts_and_images_come_back_in_order_each_batched_with_its_kind(pictures, truncate):
    long, short = words(1, 13), words(5, 7)
    inputs = [gray_png(7), long, gray_png(200), short]
    embedded = await pictures.embed(
        make_embed_task(model="pictures", input_kind="mixed", inputs=inputs, truncate=truncate)
    )
    assert embedded.vectors[0].tolist() == [7, 2, 49] and embedded.vectors[2].tolist() == [200, 2, 40000]
    assert embedded.vectors[3].tolist() == pytest.approx(mean_pooled([0, 5, 6, 7, 99]))
    long_tokens = list(range(1, 14)) if truncate == "chunk" else list(range(1, 7))
    if truncate == "chunk":  # room 6: windows 1-6, 7-12, 13
        expected = mean_pooled([0, *range(1, 7), 99, 0, *range(7, 13), 99, 0, 13, 99])
    else:
        expected = mean_pooled([0, *range(1, 7), 99])
    np.testing.assert_allclose(embedded.vectors[1], expected, rtol=1e-6)
    assert embedded.prompt_tokens == len(long_tokens) + 3 + 2 * 3  # text tokens, and each image's vision tokens
    encoder = (await pictures.registry.get("pictures")).model
    for sequences, group in encoder.batches:
        assert (group == IMAGE_GROUP) == all(sequence == ["image"] for sequence in sequences)


async def test_an_image_for_a_text_model_is_refused_before_it_is_decoded(pictures, monkeypatch):
    monkeypatch.setattr("worker.pipeline.load_image", lambda *args: pytest.fail("decoded"))
    with pytest.raises(ServiceError) as refused:
        await pictures.embed(make_embed_task(model="words", input_kind="mixed", inputs=["1 2", gray_png(3)]))
    assert refused.value.param == "input" and "takes text only" in refused.value.message


async def test_a_bad_image_fails_its_own_request_of_a_batch_chunk_only(pictures):
    job = make_embed_chunk(
        parent_job="batch_1",
        model="pictures",
        input_kind="mixed",
        inputs=[gray_png(9), {"image": "data:image/png;base64,bm90IGEgcG5n"}, "1 2"],
        parts=[1, 1, 1],
    )
    vectors, parts = await pictures.embed_parts(job, job.parts)
    assert parts[1].error is not None and parts[1].error.param == "input"
    assert vectors is not None and vectors[0].tolist() == [9, 2, 81]
    assert parts[0].prompt_tokens == 3 and parts[2].prompt_tokens == 2
