"""Submit a validated batch: its record and its file's requests as chunks on the jobs queue (the second read of the
file), created whole or not at all (``api.submission``).

Chunks are cut where ``api.batches.plan.chunk_starts`` says. A chunk to run becomes a ``EmbedChunk`` with ``parts`` (its
requests' input counts) on ``keys.CHUNK_QUEUE``, so batches share workers, leases, retries and the backlog bound
with embedding jobs; a chunk of requests that already failed has its results written here. Each chunk's manifest
entry names its requests for the output files. Written a group of chunks per round trip.
"""

from __future__ import annotations

import functools

from redis.asyncio import Redis
from starlette.datastructures import State

from api.batches.input import Line, LineError, read_lines
from api.batches.plan import ManifestEntry, format_code
from api.batches.store import BatchRecord, BatchStore
from api.embeddings.options import EmbedOptions
from api.files.store import FileRecord, FileStore
from api.submission import Chunks, Footprint, create_work
from shared import keys
from shared.chunks import ChunkStore, PartResult
from shared.clock import now_ms
from shared.errors import ErrorKind, ServiceError
from shared.job_queue import NewJob
from shared.protocol import encode_job
from shared.queue_format import chunk_queue_id
from shared.settings import Settings
from shared.storage import input_bytes

#: chunks written per round trip at most, and input characters held before they are written (long texts make
#: chunks of megabytes: the API holds these a few times over, as inputs, messages and arq payloads)
_CHUNKS_PER_WRITE = 64
_CHARS_PER_WRITE = 2_000_000


class _Writer:
    def __init__(self, redis: Redis, queue: Chunks, record: BatchRecord, settings: Settings) -> None:
        self._redis = redis
        self._queue = queue
        self._chunks = ChunkStore(redis)
        self._record = record
        self._settings = settings
        self._entries: list[ManifestEntry] = []
        self._to_run: list[NewJob] = []
        self._failed: list[tuple[int, list[Line]]] = []
        self._chars = 0

    async def add(self, chunk: int, lines: list[Line], first: int) -> None:
        entry = ManifestEntry(
            first,
            [line.custom_id for line in lines],
            [len(line.inputs) for line in lines],
            "".join(
                format_code(line.request.encoding_format, line.request.output_dtype) if line.request else "f"
                for line in lines
            ),
        )
        self._entries.append(entry)
        options = lines[0].options()  # the same for every request of the chunk
        if options is None:
            self._failed.append((chunk, lines))
        else:
            self._to_run.append(self._chunk_job(chunk, lines, entry, options))
        self._chars += input_bytes([value for line in lines for value in line.inputs])
        if len(self._entries) >= _CHUNKS_PER_WRITE or self._chars >= _CHARS_PER_WRITE:
            await self.flush()

    def _chunk_job(self, chunk: int, lines: list[Line], entry: ManifestEntry, options: EmbedOptions) -> NewJob:
        record = self._record
        inputs = [value for line in lines for value in line.inputs]
        enqueued = now_ms()
        message = options.chunk_job(
            record.batch_id,
            chunk,
            inputs,
            enqueued_ms=enqueued,
            deadline_ms=record.expires_at * 1000,
            parts=entry.counts,
            results_expire_at_s=record.kept_until,
        )
        expires_ms = max(1, record.expires_at * 1000 - enqueued)
        queue_id = chunk_queue_id(record.batch_id, chunk, len(inputs))
        return NewJob(queue_id, (encode_job(message),), enqueued, expires_ms, len(inputs))

    async def flush(self) -> None:
        record = self._record
        if self._entries or self._failed:
            async with self._redis.pipeline(transaction=False) as pipe:
                if self._entries:
                    pipe.rpush(keys.batch_manifest(record.batch_id), *[entry.pack() for entry in self._entries])
                    pipe.expireat(keys.batch_manifest(record.batch_id), record.kept_until)
                for chunk, lines in self._failed:
                    await self._chunks.done_in(
                        pipe,
                        record.batch_id,
                        chunk,
                        vectors=None,
                        parts=[PartResult(error=line.error) for line in lines],
                        completed=0,
                        failed=len(lines),
                        prompt_tokens=0,
                        expires_at_s=record.kept_until,
                    )
                await pipe.execute()
        if self._to_run:
            await self._queue.enqueue(self._to_run, now_ms())
        self._entries, self._to_run, self._failed, self._chars = [], [], [], 0


async def submit_batch(state: State, record: BatchRecord, upload: FileRecord, starts: list[int], inputs: int) -> None:
    """Create batch ``record``, whose input file ``upload`` validated with ``inputs`` inputs, cut into chunks at
    ``starts``. ``state``: the app's."""
    batches: BatchStore = state.batches
    footprint = Footprint(record.model or "", None, inputs, len(starts), upload.size)
    await create_work(
        state,
        record.batch_id,
        footprint,
        record.kept_until,
        create=functools.partial(batches.create, record),
        enqueue=functools.partial(_write, state, record, upload, starts),
        delete=functools.partial(batches.delete, record),
    )


async def _write(state: State, record: BatchRecord, upload: FileRecord, starts: list[int], chunks: Chunks) -> None:
    """Write every chunk of a batch whose record exists, reading its file again."""
    settings: Settings = state.settings
    files: FileStore = state.files
    lines = read_lines(files.segments(upload.file_id), settings)
    writer = _Writer(state.redis, chunks, record, settings)
    bounds = [*starts, record.total]
    pending: list[Line] = []
    chunk = 0
    index = 0
    async for group in lines:
        for line in group:
            if isinstance(line, LineError):  # the file validated: it cannot have changed
                raise ServiceError(ErrorKind.INTERNAL, "the input file changed while the batch was created")
            pending.append(line)
            index += 1
            if index == bounds[chunk + 1]:
                await writer.add(chunk, pending, bounds[chunk])
                pending, chunk = [], chunk + 1
    await writer.flush()


def chunk_ids(batch_id: str, entries: list[ManifestEntry]) -> list[str]:
    """The queue ids of a batch's chunks, from its manifest."""
    return [chunk_queue_id(batch_id, chunk, sum(entry.counts)) for chunk, entry in enumerate(entries)]
