"""What Redis says of its memory (``INFO memory``), and the guard that refuses work on a Redis that evicts keys.

A Redis whose ``maxmemory-policy`` is anything but ``noeviction`` deletes keys on its own when it fills up: a
job's stored vectors, its record, a queued request. Results would come back with rows missing, and jobs would stay
in progress forever. So the API and the workers read the policy (``INFO memory``, which managed services that
disable ``CONFIG`` still answer) when they start and every ``REFRESH_S`` after (which also covers a reconnect and
a primary promoted by Sentinel), and while it evicts the API answers 503 ``store_evicts_keys`` and workers take no
work, unless the operator accepts the risk with ``ALLOW_EVICTING_REDIS=true``.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from shared.errors import ErrorKind, ServiceError

log = logging.getLogger(__name__)

#: seconds a reading of the policy is trusted
REFRESH_S = 5.0


@dataclasses.dataclass(frozen=True, slots=True)
class MemoryInfo:
    #: Redis' ``maxmemory_policy``; "" where it does not say
    policy: str
    #: bytes Redis may use (0: no cap)
    maxmemory: int
    used: int

    @property
    def evicts(self) -> bool:
        return self.policy not in ("", "noeviction")


async def read_memory_info(redis: Redis) -> MemoryInfo:
    """From ``INFO memory``; where that is refused, ``CONFIG GET``; where both are, nothing is known (policy "")."""
    try:
        info = await redis.info("memory")
    except ResponseError:
        pass
    else:
        return MemoryInfo(
            policy=str(info.get("maxmemory_policy", "")),
            maxmemory=int(info.get("maxmemory", 0) or 0),
            used=int(info.get("used_memory", 0) or 0),
        )
    try:
        config = await redis.config_get("maxmemory*")
    except ResponseError:
        return MemoryInfo("", 0, 0)
    return MemoryInfo(str(config.get("maxmemory-policy", "")), int(config.get("maxmemory", 0) or 0), 0)


def evicting_message(policy: str) -> str:
    return (
        f"Redis evicts keys (maxmemory-policy {policy}), so stored results could vanish: set maxmemory-policy "
        "noeviction, or ALLOW_EVICTING_REDIS=true to accept that risk"
    )


class EvictionGuard:
    """The last reading of Redis' memory settings, refreshed when older than ``REFRESH_S``."""

    def __init__(self, redis: Redis, *, allow_evicting: bool) -> None:
        self._redis = redis
        self._allow_evicting = allow_evicting
        self._read_at = -REFRESH_S
        self._info: MemoryInfo | None = None

    async def info(self) -> MemoryInfo:
        """The current reading. A refresh that fails (Redis restarting, failing over) keeps the last reading: the
        verdict changes only when Redis says something else; RedisError if there is no reading yet."""
        if self._info is None or time.monotonic() - self._read_at >= REFRESH_S:
            try:
                info = await read_memory_info(self._redis)
            except (RedisError, OSError):
                if self._info is None:
                    raise
                return self._info
            if self._info is None or info.policy != self._info.policy:
                self._log_policy(info)
            self._info, self._read_at = info, time.monotonic()
        return self._info

    async def check(self) -> None:
        """ServiceError (STORE_EVICTS) while Redis evicts keys and the operator has not accepted it."""
        info = await self.info()
        if info.evicts and not self._allow_evicting:
            raise ServiceError(ErrorKind.STORE_EVICTS, evicting_message(info.policy))

    async def safe(self) -> bool:
        try:
            await self.check()
        except ServiceError:
            return False
        return True

    def _log_policy(self, info: MemoryInfo) -> None:
        if not info.policy:
            log.warning("Redis answers neither INFO nor CONFIG GET: its eviction policy cannot be checked")
            return
        if not info.evicts:
            if info.maxmemory == 0:
                log.warning("Redis has no maxmemory: it grows until the host runs out of memory (set maxmemory)")
            return
        if self._allow_evicting:
            log.warning("Redis evicts keys (maxmemory-policy %s); ALLOW_EVICTING_REDIS accepts it", info.policy)
        else:
            log.error("%s; refusing work until then", evicting_message(info.policy))
