"""The count of texts queued or being encoded, deployment-wide and per key: the API admits work against it, whoever
takes an entry off the queue releases it.

Past ``max_queued_texts`` new requests get 429 ``rate_limit_exceeded`` at once, so accepted work keeps its latency.
Each owner (an API key, or "anonymous") may also hold at most its share, ``max_queued_texts_per_key``, so one key
filling the queue leaves room for the others: past its share a key gets 429 ``key_backlog_full`` while the others are
still served. A request larger than either bound is still admitted when nothing (of the bound's) is queued, so no
valid request is refused forever.

Admission happens inside the enqueue script (``shared.job_queue``), atomically with the enqueue itself, and so does
every release: the script that takes an entry off the queue (a worker finishing it, a withdrawal, a claim dropping an
entry whose job vanished) gives its texts back to both counts, once, since only one of them removes it. The counts
live in Redis: a counter (``keys.QUEUED_TEXTS``) and a hash of owner -> texts (``keys.QUEUED_TEXTS_PER_KEY``). The
enqueue script puts the counter back to 0 if it went below, and empties the hash whenever the counter reads 0 (what
every key holds is part of the whole, so then nobody holds anything): a Redis restart, or a count that drifted,
mends itself.
"""

from __future__ import annotations

#: Lua: a counter's value, put back to 0 if releases took it below (work an emptied Redis no longer counted)
READ_COUNTER_LUA = """
local function read_counter(key)
    local value = tonumber(redis.call('GET', key) or '0')
    if value < 0 then
        redis.call('SET', key, 0)
        value = 0
    end
    return value
end
"""

#: Lua: ``read_share(hash, owner)``, the texts ``owner`` holds, 0 for none (a count below 0 is dropped)
READ_SHARE_LUA = """
local function read_share(hash, owner)
    local value = tonumber(redis.call('HGET', hash, owner) or '0')
    if value < 0 then
        redis.call('HDEL', hash, owner)
        value = 0
    end
    return value
end
"""

#: Lua: ``release(counter, hash, texts, by_owner)``, ``texts`` given back to the counter and, of them, each
#: owner's (a table owner -> texts) to its share; an owner left with nothing leaves the hash
RELEASE_LUA = """
local function release(counter, hash, texts, by_owner)
    if texts > 0 then
        redis.call('DECRBY', counter, texts)
    end
    for owner, owned in pairs(by_owner) do
        if redis.call('HINCRBY', hash, owner, -owned) <= 0 then
            redis.call('HDEL', hash, owner)
        end
    end
end
"""
