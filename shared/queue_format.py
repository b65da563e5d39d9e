"""What Python writes and the queue's Lua scripts read back, side by side: a queue entry's id, a chunk's id, and
the fields of a parent's progress hash. ``tests/unit/shared/test_queue_format.py`` runs the Lua here on a real Redis
against ids and hashes the Python here made.

- A queue entry's id (``queue_job_id``) carries its number of texts, which claims budget by and the backlog
  counts, and for a synchronous request its owner, whose share of the backlog it counts against
  (``shared.backlog``): ``<owner>:<request id>.<texts>``, or ``<request id>.<texts>`` with no owner.
- A chunk of a job or batch (``shared.chunks``) is ``<parent id>-<chunk>``; the chunk queue's claim reads the
  parent back from its entry, to mark the parent started or see it cancelled.
- A parent's progress is a hash whose fields are ``PROGRESS_FIELDS``; the Lua names them through the table ``F``
  (``PROGRESS_FIELDS_LUA``), so both languages take the names from here.
"""

from __future__ import annotations

import re

_OWNER = re.compile(r"[0-9A-Za-z_-]{1,64}")


def queue_job_id(request_id: str, texts: int, owner: str | None = None) -> str:
    """The arq job id of a request or chunk. The owner is what precedes the first ":", so a request id with no
    owner must have none."""
    if owner is None:
        if ":" in request_id:
            raise ValueError(f"a queue id with no owner cannot hold a ':' ({request_id!r})")
        return f"{request_id}.{texts}"
    if not _OWNER.fullmatch(owner):
        raise ValueError(f"{owner!r} cannot own a queue entry")
    return f"{owner}:{request_id}.{texts}"


#: Lua: ``parse_id(id)``, the texts and the owner (nil for none) of a queue entry; an id with no count counts 1
PARSE_ID_LUA = """
local function parse_id(id)
    local texts = tonumber(string.match(id, '%.(%d+)$') or '1')
    local owner = string.match(id, '^([%w_%-]+):')
    return texts, owner
end
"""


def chunk_request_id(parent_id: str, chunk: int) -> str:
    """How a chunk's message and logs name it."""
    return f"{parent_id}-{chunk}"


def chunk_queue_id(parent_id: str, chunk: int, texts: int) -> str:
    """The chunk's arq job id in ``keys.CHUNK_QUEUE``."""
    return queue_job_id(chunk_request_id(parent_id, chunk), texts)


#: Lua: ``parent_of(id)``, the parent of a chunk's queue entry; the id itself for an entry of no parent
PARENT_OF_LUA = """
local function parent_of(id)
    return string.match(id, '^(.+)%-%d+%.%d+$') or id
end
"""

#: a parent's progress hash: its fields, by the names both languages use
PROGRESS_FIELDS = {
    # set by the API when it creates the parent
    "total": "total",
    "chunks": "chunks",
    # counted by each chunk as it ends
    "completed": "completed",
    "failed": "failed",
    "prompt_tokens": "prompt_tokens",
    "chunks_done": "chunks_done",
    # stamped (epoch seconds) once
    "completed_at": "completed_at",
    "finished_at": "finished_at",
    "cancelling_at": "cancelling_at",
    # flags: present or not
    "started": "started",
    "cancelled": "cancelled",
    # per chunk, followed by its index: counted once; why it failed
    "done": "done:",
    "error": "error:",
}

#: Lua: the table ``F`` of ``PROGRESS_FIELDS``
PROGRESS_FIELDS_LUA = (
    "local F = {" + ", ".join(f"{name} = '{field}'" for name, field in PROGRESS_FIELDS.items()) + "}\n"
)
