"""Many concurrent requests of mixed sizes: each gets exactly its own vectors, and batches span requests."""

import asyncio
import random

import httpx

from tests.integration.conftest import MODEL, assert_same_vectors, vectors_of

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "queue",
    "batch",
    "vector",
    "redis",
    "worker",
    "model",
    "token",
    "budget",
    "latency",
]


def request_texts(rng: random.Random, request: int) -> list[str]:
    count = rng.choice([1, 1, 2, 3, 5, 8, 16])
    return [f"request {request} text {i}: " + " ".join(rng.choices(WORDS, k=rng.randint(2, 40))) for i in range(count)]


def test_64_concurrent_requests_each_get_their_own_vectors(base_url, reference):
    rng = random.Random(7)
    inputs = [request_texts(rng, i) for i in range(64)]

    async def send_all():
        async with httpx.AsyncClient(base_url=base_url, timeout=120) as client:
            return await asyncio.gather(
                *(client.post("/v1/embeddings", json={"model": MODEL, "input": texts}) for texts in inputs)
            )

    responses = asyncio.run(send_all())
    for texts, response in zip(inputs, responses, strict=True):
        assert response.status_code == 200, response.text
        vectors = vectors_of(response.json())
        assert vectors.shape == (len(texts), 384)
        assert_same_vectors(vectors, reference(texts))
    largest_batch_requests = max(int(r.headers["x-batch-requests"]) for r in responses)
    largest_batch_size = max(int(r.headers["x-batch-size"]) for r in responses)
    print(f"\nlargest batch: {largest_batch_size} texts from {largest_batch_requests} requests")
    assert largest_batch_requests > 1, "no batch held more than one request"
