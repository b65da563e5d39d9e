"""Ids of the things the API stores in Redis (jobs, batches, files), and the test that says one was lost.

An id is a prefix, the time it was made (ms, 12 hex digits) and 128 random bits. The time tells a record that a
restart of Redis lost (made before the current epoch of Redis began, ``shared.epoch``) from one that never was.
"""

from __future__ import annotations

import secrets
from typing import NoReturn

from api.auth import owner_of
from shared.clock import now_ms
from shared.epoch import Epochs
from shared.errors import ErrorKind, ServiceError

_TOKEN_LENGTH = 44


def new_id(prefix: str) -> str:
    return f"{prefix}{now_ms():012x}{secrets.token_hex(16)}"


def made_at_ms(prefix: str, value: str) -> int | None:
    """When an id of ours was made; None for anything else."""
    token = value.removeprefix(prefix)
    if len(token) != _TOKEN_LENGTH or len(value) != len(prefix) + _TOKEN_LENGTH:
        return None
    if not all(c in "0123456789abcdef" for c in token):
        return None
    return int(token[:12], 16)


async def raise_missing(epochs: Epochs, what: str, shown_id: str, made_at: int | None) -> NoReturn:
    """Raise why ``shown_id`` is not there for the caller: 410 if a restart of Redis lost it (``made_at``, from
    ``made_at_ms``, is before the current epoch began), else 404."""
    if made_at is not None and made_at < (await epochs.current()).started_ms:
        message = f"{what} {shown_id!r} was lost: the job store restarted without it; submit it again"
        raise ServiceError(ErrorKind.JOB_LOST, message)
    raise ServiceError(ErrorKind.NOT_FOUND, f"no {what} with id {shown_id!r}")


def check_owner(state: object, owner: str | None) -> bool:
    """Whether the caller owns a record; another key's records are not there for it (404, not 403)."""
    return owner is not None and owner == owner_of(state)
