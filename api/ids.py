"""Ids of the things the API stores in Redis (jobs, batches, files), and the test that says one was lost.

An id is a prefix, the time it was made (ms, 12 hex digits) and 128 random bits. The time tells a record that a
restart of Redis lost (made before the current epoch of Redis began, ``shared.epoch``) from one that never was.
"""

from __future__ import annotations

import secrets
from typing import NoReturn, Protocol, TypeVar

from fastapi import Request

from api.auth import owner_of
from shared.clock import now_ms
from shared.epoch import Epochs
from shared.errors import ErrorKind, ServiceError

_TOKEN_LENGTH = 44

JOB_ID_PREFIX = "embjob_"
BATCH_ID_PREFIX = "batch_"
FILE_ID_PREFIX = "file-"
#: a batch's two files: ``file-<batch token>-output`` and ``file-<batch token>-errors``
OUTPUT = "output"
ERRORS = "errors"

_TOKEN_PATTERN = f"[0-9a-f]{{{_TOKEN_LENGTH}}}"
#: the ids of each kind, as regular expressions (the OpenAPI document's patterns)
BATCH_ID_PATTERN = f"^{BATCH_ID_PREFIX}{_TOKEN_PATTERN}$"
FILE_ID_PATTERN = f"^{FILE_ID_PREFIX}{_TOKEN_PATTERN}(-({OUTPUT}|{ERRORS}))?$"


def output_file_id(batch_id: str, which: str) -> str:
    return f"{FILE_ID_PREFIX}{batch_id.removeprefix(BATCH_ID_PREFIX)}-{which}"


def batch_of_file(file_id: str) -> tuple[str, str] | None:
    """The batch and the kind (output or errors) of an output file's id; None for any other id."""
    token, _, which = file_id.removeprefix(FILE_ID_PREFIX).rpartition("-")
    return (BATCH_ID_PREFIX + token, which) if which in (OUTPUT, ERRORS) and token else None


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


def file_made_at_ms(file_id: str) -> int | None:
    """When a file id was made: an upload's, or its batch's for an output file."""
    derived = batch_of_file(file_id)
    return made_at_ms(BATCH_ID_PREFIX, derived[0]) if derived else made_at_ms(FILE_ID_PREFIX, file_id)


class Owned(Protocol):
    @property
    def owner(self) -> str: ...


Record = TypeVar("Record", bound=Owned)


async def owned(request: Request, record: Record | None, prefix: str, value: str, what: str) -> Record:
    """``record`` if the caller owns it; otherwise why it is not there for them (another key's records are not:
    404, never 403), 410 if a restart of Redis lost it."""
    if record is None or not check_owner(request.state, record.owner):
        made_at = made_at_ms(prefix, value) if record is None else None
        await raise_missing(request.app.state.epochs, what, value, made_at)
    return record


async def raise_missing(epochs: Epochs, what: str, shown_id: str, made_at: int | None) -> NoReturn:
    """Raise why ``shown_id`` is not there for the caller: 410 if a restart of Redis lost it (``made_at``, from
    ``made_at_ms``, is before the current epoch began), else 404."""
    if made_at is not None and made_at < (await epochs.current()).started_ms:
        message = f"{what} {shown_id!r} was lost: the job store restarted without it; submit it again"
        raise ServiceError(ErrorKind.JOB_LOST, message)
    raise ServiceError(ErrorKind.NOT_FOUND, f"no {what} with id {shown_id!r}")


def check_owner(state: object, owner: str | None) -> bool:
    """Whether the caller owns a record."""
    return owner is not None and owner == owner_of(state)
