"""Every Redis key and channel this project uses, in one place; code builds keys only through here.

A job in our queues is stored under arq's key (``arq:job:*``); its lease and attempt count are its queue entry's
score (``shared.job_queue``), so arq's ``arq:in-progress:*`` and ``arq:retry:*`` keys are not written.
"""

PREFIX = "emb:"

#: arq queue (a sorted set) holding synchronous requests of every task (embed, rerank); workers serve it first.
SYNC_QUEUE = PREFIX + "queue:sync"

#: arq queue holding the chunks of asynchronous embedding jobs (``/v1/embeddings/jobs``).
CHUNK_QUEUE = PREFIX + "queue:chunks"

#: Pub/sub channel the API publishes to after enqueueing, so idle workers wake at once instead of polling.
WAKE_CHANNEL = PREFIX + "wake"

#: Sorted set: worker id -> time (ms) of its last heartbeat.
WORKERS = PREFIX + "workers"

#: Counter of texts queued or being encoded, deployment-wide (``shared.backlog``).
QUEUED_TEXTS = PREFIX + "queued-texts"

#: Hash: owner (an API key's owner name, or "anonymous") -> its share of ``QUEUED_TEXTS`` (``shared.backlog``).
QUEUED_TEXTS_PER_KEY = PREFIX + "queued-texts:per-key"

#: The same for the chunks of asynchronous jobs, bounded apart so they never crowd out synchronous requests.
QUEUED_CHUNK_TEXTS = PREFIX + "queued-chunk-texts"

#: The per-owner hash of ``QUEUED_CHUNK_TEXTS``; stays empty while chunk ids name no owner (``shared.chunks``).
QUEUED_CHUNK_TEXTS_PER_KEY = PREFIX + "queued-chunk-texts:per-key"

#: String: the id of this life of Redis, which says when it began (``shared.epoch``).
EPOCH = PREFIX + "epoch"

#: List: queue entries no worker could read, moved aside (newest first, capped), with why.
DEAD_LETTER = PREFIX + "dead-letter"

#: Counter of bytes reserved in the result store, deployment-wide (``shared.storage``).
STORE_RESERVED = PREFIX + "store:reserved"

#: Hash: job, batch or file id -> bytes it holds of the result store.
STORE_RESERVATIONS = PREFIX + "store:reservations"

#: Sorted set: job, batch or file id -> when (ms) its results expire and its reservation ends.
STORE_EXPIRIES = PREFIX + "store:expiries"

_REPLY_PREFIX = PREFIX + "reply:"
_WORKER_INFO_PREFIX = PREFIX + "worker:"


def reply_list(api_instance_id: str) -> str:
    """List a worker pushes results to; one per API process, drained by that process only."""
    return _REPLY_PREFIX + api_instance_id


def worker_info(worker_id: str) -> str:
    """What a live worker serves (msgpack), expiring shortly after its heartbeats stop."""
    return _WORKER_INFO_PREFIX + worker_id


def job(job_id: str) -> str:
    """Hash: an asynchronous embedding job's record (``api.jobs.store``)."""
    return f"{PREFIX}job:{job_id}"


def batch(batch_id: str) -> str:
    """Hash: a batch's record (``api.batches.store``)."""
    return f"{PREFIX}batch:{batch_id}"


def batch_manifest(batch_id: str) -> str:
    """List: one msgpack entry per chunk of a batch, naming its requests in input order (``api.batches.plan``)."""
    return f"{PREFIX}batch:{batch_id}:manifest"


#: what ``progress`` keys begin with; the chunk queue's claim script builds them from a chunk's id
PROGRESS_PREFIX = PREFIX + "progress:"


def progress(parent_id: str) -> str:
    """Hash: the progress of a job's or batch's chunks, which workers advance (``shared.chunks``)."""
    return PROGRESS_PREFIX + parent_id


def chunk_vectors(parent_id: str, chunk: int) -> str:
    """float32 vectors of one chunk of a job or batch, or nothing while it is not done."""
    return f"{PREFIX}chunk:{parent_id}:{chunk}:vectors"


def chunk_parts(parent_id: str, chunk: int) -> str:
    """A batch chunk's outcome per request it holds (msgpack; ``shared.chunks.PartResult``), next to its vectors."""
    return f"{PREFIX}chunk:{parent_id}:{chunk}:parts"


def owner_batches(owner: str) -> str:
    """Sorted set: an owner's batch ids, scored by creation time (ms)."""
    return f"{PREFIX}batches:{owner}"


def file(file_id: str) -> str:
    """Hash: an uploaded file's record (``api.files.store``)."""
    return f"{PREFIX}file:{file_id}"


def file_data(file_id: str) -> str:
    """List: an uploaded file's bytes, in segments, in order."""
    return f"{PREFIX}file:{file_id}:data"


def owner_files(owner: str) -> str:
    """Sorted set: an owner's file ids (uploaded, and the outputs of their batches), scored by creation time (ms)."""
    return f"{PREFIX}files:{owner}"


def idempotency(owner: str, key: str) -> str:
    """The job id created under an ``Idempotency-Key`` (scoped by who sent it)."""
    return f"{PREFIX}idempotency:{owner}:{key}"
