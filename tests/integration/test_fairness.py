"""A fair share of the queue per API key, over real processes: one key floods the synchronous queue past its share
(``MAX_QUEUED_TEXTS_PER_KEY``) and gets 429 ``key_backlog_full``, while another key's requests are all served.

No timing is asserted: the other key never has more than its share queued, so it is admitted whatever the pace of
the machine, and the flooder, with a slowed worker and waves of concurrent requests, always finds its share full.
"""

from __future__ import annotations

import asyncio
import collections

import httpx
import redis

from shared import keys
from tests.integration.conftest import MODEL, TEXTS, assert_same_vectors, vectors_of, wait_until

SHARE = 8
#: the flooder's requests: waves of this many at once, each of this many texts (all of a wave: 12 times its share)
WAVE, FLOOD_TEXTS = 24, 4
#: the other key's requests, one after the other, each of this many texts (under the share)
STEADY_REQUESTS, STEADY_TEXTS = 12, 2


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


Sent = list[tuple[list[str], httpx.Response]]


async def traffic(base_url: str) -> tuple[Sent, Sent]:
    """The flooder's responses and the other key's, each with its texts; the flood goes on while the other key is
    served, and for two waves at least."""
    flooded: Sent = []
    served: Sent = []
    limits = httpx.Limits(max_connections=WAVE + 4)
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as client:

        async def post(key: str, texts: list[str]) -> tuple[list[str], httpx.Response]:
            body = {"model": MODEL, "input": texts}
            return texts, await client.post("/v1/embeddings", json=body, headers=bearer(key))

        async def steady() -> None:
            for i in range(STEADY_REQUESTS):
                texts = [f"{TEXTS[(i + j) % len(TEXTS)]} (steady {i}.{j})" for j in range(STEADY_TEXTS)]
                served.append(await post("key-b", texts))

        async def flood(steady_done: asyncio.Task[None]) -> None:
            wave = 0
            while wave < 2 or not steady_done.done():
                bodies = [
                    [f"{TEXTS[(i + j) % len(TEXTS)]} (flood {wave}.{i}.{j})" for j in range(FLOOD_TEXTS)]
                    for i in range(WAVE)
                ]
                flooded.extend(await asyncio.gather(*(post("key-a", texts) for texts in bodies)))
                wave += 1

        steady_task = asyncio.create_task(steady())
        await asyncio.gather(flood(steady_task), steady_task)
    return flooded, served


def backlog(redis_url: str) -> tuple[int, dict[bytes, bytes]]:
    client = redis.Redis.from_url(redis_url)
    try:
        return int(client.get(keys.QUEUED_TEXTS) or 0), client.hgetall(keys.QUEUED_TEXTS_PER_KEY)
    finally:
        client.close()


def test_a_key_flooding_the_queue_gets_429_past_its_share_and_another_key_is_still_served(stack_with, reference):
    stack = stack_with(
        API_KEYS="key-a,key-b",
        MAX_QUEUED_TEXTS_PER_KEY=str(SHARE),
        # every batch takes a while: the flooder's admitted requests hold its share while the next wave arrives
        FAULT_ENCODE_DELAY_S="0.3",
    )
    flooded, served = asyncio.run(traffic(stack.base_url))

    flood_statuses = collections.Counter(response.status_code for _, response in flooded)
    served_statuses = collections.Counter(response.status_code for _, response in served)
    print(
        f"\nflooder (key-a, {len(flooded)} requests of {FLOOD_TEXTS} texts, share {SHARE}): {dict(flood_statuses)}"
        f"\nother key (key-b, {len(served)} requests of {STEADY_TEXTS} texts, one at a time): {dict(served_statuses)}"
    )

    assert served_statuses == {200: STEADY_REQUESTS}, served_statuses  # not one 429, nor anything else
    for texts, response in served:
        assert_same_vectors(vectors_of(response.json()), reference(texts))

    assert set(flood_statuses) <= {200, 429}, flood_statuses
    assert flood_statuses[429] > 0 and flood_statuses[200] > 0, flood_statuses
    for texts, response in flooded:
        if response.status_code == 429:
            assert response.headers["retry-after"] == "1"
            error = response.json()["error"]
            assert (error["code"], error["type"]) == ("key_backlog_full", "rate_limit_error")
            assert f"MAX_QUEUED_TEXTS_PER_KEY={SHARE}" in error["message"]
        else:
            assert_same_vectors(vectors_of(response.json()), reference(texts))

    # every admitted text was released when its job finished: the whole count and each key's are back to nothing
    wait_until(lambda: backlog(stack.redis_url) == (0, {}), 30, "the backlog to be released")
