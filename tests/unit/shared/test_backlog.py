"""Each API key's share of the backlog (``shared.backlog``): its default, and the API's 429 ``key_backlog_full``
over fakeredis, with a worker that never answers (the scripts themselves: ``test_job_queue.py``)."""

import asyncio
import hashlib

import fakeredis
import pytest
from pydantic import ValidationError

from api.auth import ANONYMOUS, KeyRing
from shared import keys
from shared.queue_format import queue_job_id
from shared.settings import Settings
from tests.unit.api.test_main import assert_openai_error, served_by_a_silent_worker


def test_with_api_keys_a_key_may_hold_half_of_the_backlog_by_default():
    assert Settings(_env_file=None, api_keys="key-a,key-b").queued_texts_per_key == 10_000
    assert Settings(_env_file=None, api_keys="key-a", max_queued_texts=7).queued_texts_per_key == 4


def test_without_api_keys_all_traffic_is_one_key_with_the_whole_backlog_by_default():
    assert Settings(_env_file=None, max_queued_texts=300).queued_texts_per_key == 300


def test_a_share_set_is_kept_with_or_without_keys():
    assert Settings(_env_file=None, max_queued_texts_per_key=50).queued_texts_per_key == 50
    assert Settings(_env_file=None, api_keys="k", max_queued_texts_per_key=20_000).queued_texts_per_key == 20_000


def test_a_share_over_the_whole_backlog_is_refused_at_start():
    with pytest.raises(ValidationError, match=r"MAX_QUEUED_TEXTS_PER_KEY=30000 is more than .* MAX_QUEUED_TEXTS=20000"):
        Settings(_env_file=None, max_queued_texts_per_key=30_000)


async def test_a_key_over_its_share_gets_429_key_backlog_full_while_another_key_is_served():
    settings = Settings(
        _env_file=None,
        api_keys="key-a,key-b",
        max_queued_texts_per_key=2,
        # long enough for the others to find the first admitted ones still queued, however slow the machine
        request_timeout_s=3,
        embed_models=["m"],
    )
    body = {"input": ["a", "b"], "model": "m"}
    async with served_by_a_silent_worker(fakeredis.FakeServer(), settings) as (client, redis):

        async def post(key: str):
            return await client.post("/v1/embeddings", json=body, headers={"Authorization": f"Bearer {key}"})

        # the first of key-a's two fills its share; key-b's is admitted all the same
        *key_a, other = await asyncio.gather(post("key-a"), post("key-a"), post("key-b"))
        first, second = sorted(key_a, key=lambda answer: answer.status_code, reverse=True)
        # the silent worker never answers: the admitted ones time out and are withdrawn, releasing their texts
        assert int(await redis.get(keys.QUEUED_TEXTS) or 0) == 0
        assert await redis.hgetall(keys.QUEUED_TEXTS_PER_KEY) == {}
    assert (first.status_code, other.status_code) == (504, 504)
    error = assert_openai_error(second, 429, "key_backlog_full")
    assert second.headers["retry-after"] == "1"
    assert error["type"] == "rate_limit_error"
    assert "this API key already has 2 texts queued" in error["message"]
    assert "MAX_QUEUED_TEXTS_PER_KEY=2" in error["message"]


async def test_with_no_keys_every_request_shares_the_anonymous_key():
    # the first request waits for a worker that never answers, long enough for the second to find it queued
    settings = Settings(_env_file=None, max_queued_texts_per_key=2, request_timeout_s=3, embed_models=["m"])
    body = {"input": ["a", "b"], "model": "m"}
    async with served_by_a_silent_worker(fakeredis.FakeServer(), settings) as (client, redis):
        answers = await asyncio.gather(*[client.post("/v1/embeddings", json=body) for _ in range(2)])
        assert await redis.hgetall(keys.QUEUED_TEXTS_PER_KEY) == {}
    timed_out, refused = sorted(answers, key=lambda answer: answer.status_code, reverse=True)
    assert timed_out.status_code == 504
    error = assert_openai_error(refused, 429, "key_backlog_full")
    assert "unauthenticated requests already have 2 texts queued" in error["message"]


def test_owners_are_what_the_queue_ids_may_carry():
    """``api.auth`` names a key's owner by 16 hex digits of its digest; queue ids take them (and "anonymous")."""
    owner = KeyRing({hashlib.sha256(b"key-a").digest()}).owner_of("key-a")
    assert owner is not None
    assert queue_job_id("r", 1, owner) == f"{owner}:r.1"
    assert queue_job_id("r", 1, ANONYMOUS) == "anonymous:r.1"
