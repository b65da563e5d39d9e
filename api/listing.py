"""OpenAI's cursor pages (``after`` an id, ``limit``) over an owner's ids in a sorted set scored by creation time."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from shared.errors import ErrorKind, ServiceError
from shared.settings import Settings

#: ids resolved per round trip
_IDS_PER_READ = 100


def kept_since_ms(settings: Settings, now_s: int) -> int:
    """The creation time before which nothing listed is kept any more: the longest life of a file or batch (a
    batch's window plus the results' TTL; uploads live the TTL alone)."""
    return (now_s - settings.job_result_ttl_s - settings.batch_completion_window_s) * 1000


async def page(
    redis: Redis,
    key: str,
    *,
    after: str | None,
    after_made_at_ms: int | None,
    limit: int,
    newest_first: bool,
    older_than_kept_ms: int,
    resolve: Callable[[list[str]], Awaitable[list[dict[str, Any] | None]]],
) -> dict[str, Any]:
    """The next ``limit`` objects after ``after``; ``resolve`` turns ids into objects, None for one that is gone.
    An ``after`` no longer listed (deleted, expired) pages on from where it was, by the time its id was made
    (``after_made_at_ms``). Ids scored before ``older_than_kept_ms`` have expired with their records and are
    dropped first."""
    await redis.zremrangebyscore(key, "-inf", f"({older_than_kept_ms}")
    start = 0
    if after is not None:
        rank = await (redis.zrevrank(key, after) if newest_first else redis.zrank(key, after))
        if rank is not None:
            start = int(rank) + 1
        elif after_made_at_ms is None:
            raise ServiceError(ErrorKind.INVALID_REQUEST, f"after: no object with id {after!r}", "after")
        elif newest_first:
            start = int(await redis.zcount(key, after_made_at_ms, "+inf"))
        else:
            start = int(await redis.zcount(key, "-inf", after_made_at_ms))
    found: list[dict[str, Any]] = []
    while len(found) <= limit:
        ids = [raw.decode() for raw in await redis.zrange(key, start, start + _IDS_PER_READ - 1, desc=newest_first)]
        if not ids:
            break
        found += [found_object for found_object in await resolve(ids) if found_object is not None]
        start += len(ids)
    data = found[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(found) > limit,
    }
