"""A CLIP-style model over the real stack (redis-server, a worker, the API): texts and images in one space, every
vector against ``SentenceTransformer.encode`` of the same text or PIL image within 1e-5, through ``/v1/embeddings``
(content parts with the ``openai`` client, Infinity's ``modality: "image"``), ``/v2/embed`` with the ``cohere``
client, a job and a Batch API line; the attack list answered with clean 400s while a good request sent beside it is
served; URLs fetched only from allowed hosts and never from a loopback address."""

from __future__ import annotations

import asyncio
import base64
import http.server
import io
import threading
from collections.abc import Iterator
from pathlib import Path

import cohere
import httpx
import numpy as np
import openai
import pytest
from PIL import Image
from sentence_transformers import SentenceTransformer

from tests.integration.conftest import MODEL, assert_same_vectors, vectors_of
from tests.integration.test_batches import embeddings_of, jsonl, lines_of, run_batch
from tests.integration.test_jobs import result_vectors, wait_for
from tests.model_fixtures import CLIP_MODEL, model_paths_setting, save_clip
from tests.stack import running_stack

TEXTS = ["a photo of a red square", "a blue circle on white", "two cats"]


def picture(seed: int, size: tuple[int, int] = (40, 30)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def data_uri(image: Image.Image, image_format: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return f"data:image/{image_format.lower()};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def decoded(uri: str) -> Image.Image:
    """The image as the worker decodes it from the same bytes (a JPEG is lossy: its pixels are not the original's)."""
    image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    image.load()
    return image


IMAGES = [data_uri(picture(seed)) for seed in range(3)] + [data_uri(picture(7), "JPEG")]


def image_part(uri: str) -> dict:
    return {"type": "image_url", "image_url": {"url": uri}}


class _Counting(http.server.BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        body = base64.b64decode(IMAGES[0].split(",", 1)[1])
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def image_server() -> Iterator[http.server.ThreadingHTTPServer]:
    """An image on a loopback address: the worker must never fetch it, though its host is allowed."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return save_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def stack(tmp_path_factory, models, image_server):
    with running_stack(
        tmp_path_factory.mktemp("multimodal-stack"),
        MODEL_PATHS=model_paths_setting(models),
        EMBED_MODELS=f"{CLIP_MODEL},{MODEL}",
        IMAGE_URL_HOSTS="127.0.0.1,localhost",
        IMAGE_MAX_PIXELS="1000000",
    ) as stack:
        yield stack


@pytest.fixture
def client(stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def clip(models) -> SentenceTransformer:
    return SentenceTransformer(str(models[CLIP_MODEL]), device="cpu")


def library(model: SentenceTransformer, inputs: list[str | Image.Image]) -> np.ndarray:
    rows = [model.encode(item, convert_to_numpy=True) for item in inputs]  # each alone: texts and images apart
    return np.array(rows, dtype=np.float64)


def test_the_card_lists_the_models_modalities(client):
    cards = {card["id"]: card for card in client.get("/v1/models").json()["data"]}
    assert cards[CLIP_MODEL]["modalities"] == ["text", "image"]
    assert cards[CLIP_MODEL]["kind"] == "embedding"


def test_texts_and_images_in_one_request_are_the_librarys_vectors_in_order(client, clip):
    inputs = [TEXTS[0], image_part(IMAGES[0]), {"type": "text", "text": TEXTS[1]}, image_part(IMAGES[3])]
    response = client.post("/v1/embeddings", json={"model": CLIP_MODEL, "input": inputs})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = library(clip, [TEXTS[0], decoded(IMAGES[0]), TEXTS[1], decoded(IMAGES[3])])
    assert_same_vectors(vectors_of(body), expected)
    assert body["usage"]["prompt_tokens"] > 0


def test_the_openai_client_sends_content_parts_and_decodes_base64(stack, clip):
    with openai.OpenAI(base_url=stack.base_url + "/v1", api_key="unused", max_retries=0) as client:
        answer = client.embeddings.create(model=CLIP_MODEL, input=[image_part(uri) for uri in IMAGES[:2]])  # type: ignore[list-item]
    actual = np.array([item.embedding for item in answer.data])
    assert_same_vectors(actual, library(clip, [decoded(uri) for uri in IMAGES[:2]]))


def test_infinitys_modality_image(client, clip):
    response = client.post("/v1/embeddings", json={"model": CLIP_MODEL, "modality": "image", "input": IMAGES})
    assert response.status_code == 200, response.text
    assert_same_vectors(vectors_of(response.json()), library(clip, [decoded(uri) for uri in IMAGES]))


def test_cohere_images_and_inputs(stack, clip):
    with cohere.ClientV2(base_url=stack.base_url, api_key="unused") as co:
        images = co.embed(model=CLIP_MODEL, input_type="image", images=IMAGES[:2], embedding_types=["float"])
        inputs = [
            {"content": [{"type": "text", "text": TEXTS[2]}]},
            {"content": [{"type": "image_url", "image_url": {"url": IMAGES[1]}}]},
        ]
        mixed = co.embed(model=CLIP_MODEL, input_type="search_document", inputs=inputs, embedding_types=["float"])  # type: ignore[arg-type]
    assert_same_vectors(np.array(images.embeddings.float_), library(clip, [decoded(uri) for uri in IMAGES[:2]]))
    assert_same_vectors(np.array(mixed.embeddings.float_), library(clip, [TEXTS[2], decoded(IMAGES[1])]))


def test_concurrent_requests_of_images_and_texts_share_batches_and_stay_exact(stack, clip):
    bodies = [
        {"model": CLIP_MODEL, "input": [image_part(IMAGES[i % 3]), TEXTS[i % 3]]}
        if i % 2
        else {"model": CLIP_MODEL, "modality": "image", "input": [IMAGES[i % 4]]}
        for i in range(16)
    ]

    async def send() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=120) as client:
            return await asyncio.gather(*(client.post("/v1/embeddings", json=body) for body in bodies))

    for body, response in zip(bodies, asyncio.run(send()), strict=True):
        assert response.status_code == 200, response.text
        inputs = body["input"]
        expected = [
            decoded(item["image_url"]["url"])
            if isinstance(item, dict)
            else (item if "modality" not in body else decoded(item))
            for item in inputs
        ]
        assert_same_vectors(vectors_of(response.json()), library(clip, expected))


def _png_header(width: int, height: int) -> bytes:
    """A PNG that says it is ``width`` x ``height``: its header only, as a decompression bomb's would."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def _uri(kind: str, data: bytes) -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


def attack_list(image_server) -> list[tuple[str, str]]:
    png = base64.b64decode(IMAGES[0].split(",", 1)[1])
    port = image_server.server_address[1]
    return [
        (_uri("image/png", png[: len(png) // 2]), "truncated or corrupt"),
        (_uri("image/png", _png_header(50_000, 50_000)), "pixels"),
        (_uri("image/svg+xml", b'<svg xmlns="http://www.w3.org/2000/svg"/>'), "PNG"),
        (_uri("image/jpeg", png), "declared as"),
        (f"http://127.0.0.1:{port}/cat.png", "address"),
        (f"http://localhost:{port}/cat.png", "address"),
        ("http://images.example.com/cat.png", "not one of them"),
        ("file:///etc/passwd", "data URI"),
    ]


def test_the_attack_list_gets_clean_400s_and_a_good_request_beside_each_is_served(stack, clip, image_server):
    good = {"model": CLIP_MODEL, "modality": "image", "input": [IMAGES[2]]}
    expected = library(clip, [decoded(IMAGES[2])])
    for source, fragment in attack_list(image_server):
        bad = {"model": CLIP_MODEL, "input": [TEXTS[0], image_part(source)]}

        async def send(bad: dict = bad) -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=stack.base_url, timeout=120) as client:
                return await asyncio.gather(*(client.post("/v1/embeddings", json=b) for b in (bad, good, bad)))

        refused, served, _ = asyncio.run(send())
        assert refused.status_code == 400, (source[:60], refused.text)
        error = refused.json()["error"]
        assert fragment in error["message"], (source[:60], error)
        assert error["param"] == "input"
        assert served.status_code == 200, served.text
        assert_same_vectors(vectors_of(served.json()), expected)
    assert _Counting.hits == 0  # allowed by name, refused by address: never fetched


def test_an_image_for_a_text_model_is_a_400_that_says_so(client):
    response = client.post("/v1/embeddings", json={"model": MODEL, "input": [image_part(IMAGES[0])]})
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "image" in message and "text" in message


def test_a_job_of_images(client, clip):
    response = client.post("/v1/embeddings/jobs", json={"model": CLIP_MODEL, "modality": "image", "input": IMAGES})
    assert response.status_code in (200, 202), response.text
    job_id = response.json()["id"]
    assert wait_for(client, job_id)[-1]["status"] == "completed"
    indices, vectors, _ = result_vectors(client, job_id)
    assert indices == list(range(len(IMAGES)))
    assert_same_vectors(vectors, library(clip, [decoded(uri) for uri in IMAGES]))


def test_a_batch_line_of_images_and_a_bad_line_beside_it(stack, clip):
    bodies = [
        {"model": CLIP_MODEL, "input": [TEXTS[0], image_part(IMAGES[1])]},
        {"model": CLIP_MODEL, "input": [image_part(_uri("image/png", b"not a png"))]},
    ]
    with openai.OpenAI(base_url=stack.base_url + "/v1", api_key="unused", max_retries=0, timeout=120) as client:
        batch = run_batch(client, jsonl(bodies))
        assert batch.status == "completed", batch
        outputs = {line["custom_id"]: line for line in lines_of(client, batch.output_file_id)}
        errors = {line["custom_id"]: line for line in lines_of(client, batch.error_file_id)}
    good = outputs["request-0"]["response"]
    assert good["status_code"] == 200
    assert_same_vectors(embeddings_of(good["body"]), library(clip, [TEXTS[0], decoded(IMAGES[1])]))
    failed = errors["request-1"]["response"]
    assert failed["status_code"] == 400, failed
    assert "truncated or corrupt" in failed["body"]["error"]["message"] or "PNG" in failed["body"]["error"]["message"]
