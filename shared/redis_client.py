"""Redis clients, built the same way on both sides.

Both sides build their clients here, so timeouts, passwords, TLS (``rediss://``) and Redis Sentinel behave
the same. With sentinels configured, a client asks them for the primary on every new connection, so after a
failover the next command that fails reconnects to the promoted replica by itself.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from arq.connections import ArqRedis
from redis.asyncio.sentinel import Sentinel

from shared import keys
from shared.job_queue import deserialize_arq_job, serialize_arq_job
from shared.settings import Settings


def connect(settings: Settings, *, blocking_timeout_s: float = 0.0) -> ArqRedis:
    """A Redis client with bounded timeouts.

    ``blocking_timeout_s`` is the longest blocking command (BLMPOP, pub/sub read) the client will issue;
    its socket timeout is stretched past it.
    """
    timeouts: dict[str, Any] = {
        "socket_connect_timeout": settings.redis_connect_timeout_s,
        "socket_timeout": settings.redis_op_timeout_s + blocking_timeout_s,
        "health_check_interval": 30,
    }
    if settings.redis_sentinels:
        return as_job_queue(_through_sentinels(settings, timeouts))
    redis: ArqRedis = ArqRedis.from_url(settings.redis_url, **timeouts)
    # from_url hands keyword arguments to the connection pool, so arq's own attributes are set apart
    return as_job_queue(redis)


def _through_sentinels(settings: Settings, timeouts: dict[str, Any]) -> ArqRedis:
    url = urlparse(settings.redis_url)
    sentinels = []
    for address in settings.redis_sentinels:
        host, _, port = address.rpartition(":")
        sentinels.append((host, int(port)))
    sentinel_timeouts = {
        "socket_connect_timeout": settings.redis_connect_timeout_s,
        "socket_timeout": settings.redis_op_timeout_s,
    }
    manager = Sentinel(sentinels, sentinel_kwargs=sentinel_timeouts)  # type: ignore[no-untyped-call]
    database = int(url.path.lstrip("/") or 0)
    primary: ArqRedis = manager.master_for(
        settings.redis_sentinel_master,
        redis_class=ArqRedis,
        password=url.password,
        username=url.username,
        db=database,
        ssl=url.scheme == "rediss",
        **timeouts,
    )
    return primary


def as_job_queue(redis: ArqRedis) -> ArqRedis:
    """Give an arq client our serializer and default queue."""
    redis.job_serializer = serialize_arq_job
    redis.job_deserializer = deserialize_arq_job
    redis.default_queue_name = keys.SYNC_QUEUE
    return redis
