"""Uploaded files (``purpose=batch``) in Redis: a record, and the bytes as a list of segments.

The bytes go in and come out a segment at a time, so no file is ever whole in the API's memory. Files belong to
the key that uploaded them and expire with the job TTL. A batch's output and error files are not stored: they are
rendered from the batch's chunks when read (``api.batches.output``); only their ids are listed with the owner's files.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

from redis.asyncio import Redis

from api.admission import Admission
from api.ids import FILE_ID_PREFIX, new_id
from shared import keys
from shared.errors import ErrorKind, ServiceError

#: the only purpose an upload may have: a batch's input
PURPOSE = "batch"
#: bytes per stored segment
SEGMENT_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True, slots=True)
class FileRecord:
    file_id: str
    owner: str
    filename: str
    purpose: str
    size: int
    created_at: int
    expires_at: int

    def as_object(self) -> dict[str, Any]:
        """The OpenAI file object."""
        return file_object(self.file_id, self.size, self.created_at, self.filename, self.purpose, self.expires_at)


def file_object(
    file_id: str, size: int, created_at: int, filename: str, purpose: str, expires_at: int
) -> dict[str, Any]:
    return {
        "id": file_id,
        "object": "file",
        "bytes": size,
        "created_at": created_at,
        "expires_at": expires_at,
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
        "status_details": None,
    }


class FileStore:
    """``admission``: what every stored segment is reserved with, in the result store's budget."""

    def __init__(self, redis: Redis, ttl_s: int, admission: Admission) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._admission = admission

    async def create(
        self, owner: str, filename: str, purpose: str, read: Callable[[int], Awaitable[bytes]], max_bytes: int
    ) -> FileRecord:
        """Store what ``read(n)`` gives until it gives nothing; PAYLOAD_TOO_LARGE past ``max_bytes`` (nothing kept)."""
        file_id = new_id(FILE_ID_PREFIX)
        created = int(time.time())
        size = 0
        data_key = keys.file_data(file_id)
        try:
            while segment := await read(SEGMENT_BYTES):
                size += len(segment)
                if size > max_bytes:
                    raise ServiceError(
                        ErrorKind.PAYLOAD_TOO_LARGE, f"the file is larger than {max_bytes} bytes", "file"
                    )
                await self._admission.reserve(file_id, len(segment), created + self._ttl_s)
                async with self._redis.pipeline(transaction=False) as pipe:
                    pipe.rpush(data_key, segment)
                    pipe.expire(data_key, self._ttl_s)
                    await pipe.execute()
        except BaseException:
            await self._redis.delete(data_key)
            await self._admission.release(file_id)
            raise
        record = FileRecord(file_id, owner, filename, purpose, size, created, created + self._ttl_s)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                keys.file(file_id),
                mapping={
                    "owner": owner,
                    "filename": filename,
                    "purpose": purpose,
                    "bytes": size,
                    "created_at": created,
                },
            )
            pipe.expireat(keys.file(file_id), record.expires_at)
            pipe.zadd(keys.owner_files(owner), {file_id: created * 1000})
            await pipe.execute()
        return record

    async def get(self, file_id: str) -> FileRecord | None:
        return (await self.get_many([file_id]))[0]

    async def get_many(self, file_ids: list[str]) -> list[FileRecord | None]:
        """The uploads' records, in one round trip; None for each that is gone."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for file_id in file_ids:
                pipe.hgetall(keys.file(file_id))
            replies: list[dict[bytes, bytes]] = await pipe.execute()
        return [self._parse(file_id, raw) if raw else None for file_id, raw in zip(file_ids, replies, strict=True)]

    def _parse(self, file_id: str, raw: dict[bytes, bytes]) -> FileRecord:
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        created = int(fields["created_at"])
        return FileRecord(
            file_id,
            fields["owner"],
            fields["filename"],
            fields["purpose"],
            int(fields["bytes"]),
            created,
            created + self._ttl_s,
        )

    async def segments(self, file_id: str) -> AsyncIterator[bytes]:
        """The file's bytes, a segment per round trip."""
        index = 0
        while (
            segment := await cast(Awaitable[bytes | None], self._redis.lindex(keys.file_data(file_id), index))
        ) is not None:
            yield segment
            index += 1

    async def delete(self, record: FileRecord) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.file(record.file_id), keys.file_data(record.file_id))
            pipe.zrem(keys.owner_files(record.owner), record.file_id)
            await pipe.execute()
        await self._admission.release(record.file_id)
