"""Which life of Redis a job was written in, so work Redis lost is told apart from work still on its way.

Redis without persistence (or past its last fsync) comes back from a restart empty. ``keys.EPOCH`` holds an id made
of the time it was made and random bits; whoever first touches an empty Redis (the enqueue script, or the API's
reply reader checking) creates it. So:

- a synchronous request whose job was written in an older epoch than the current one was lost with it: a
  retryable 503 at once (``api.replies``), while requests written in the current epoch wait for their reply;
- a job id made before the current epoch began, whose record is gone, was lost (410), not mistyped (404).
"""

from __future__ import annotations

import dataclasses
import secrets

from redis.asyncio import Redis

from shared import keys
from shared.clock import now_ms

#: Lua: ``current_epoch(key, candidate id)``, the epoch's id, the candidate if there is none yet (one GET, as a rule)
CURRENT_EPOCH_LUA = """
local function current_epoch(key, candidate)
    local id = redis.call('GET', key)
    if not id then
        redis.call('SET', key, candidate)
        id = candidate
    end
    return id
end
"""

_CURRENT = CURRENT_EPOCH_LUA + "return current_epoch(KEYS[1], ARGV[1])"


@dataclasses.dataclass(frozen=True, slots=True)
class Epoch:
    id: str

    @property
    def started_ms(self) -> int:
        return int(self.id.split("-", 1)[0])


def candidate_id() -> str:
    """``<epoch ms>-<random>``: the time this epoch would begin, if it is the one that is kept."""
    return f"{now_ms()}-{secrets.token_hex(6)}"


class Epochs:
    def __init__(self, redis: Redis) -> None:
        self._current = redis.register_script(_CURRENT)

    async def current(self) -> Epoch:
        epoch_id: bytes = await self._current(keys=[keys.EPOCH], args=[candidate_id()])
        return Epoch(epoch_id.decode())
