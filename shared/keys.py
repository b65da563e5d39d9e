"""Every Redis key and channel this project uses, in one place; code builds keys only through here.

arq keeps its own keys (``arq:job:*``, ``arq:in-progress:*``, ``arq:retry:*``, ``arq:result:*``) for the jobs
that sit in our queues.
"""

PREFIX = "emb:"

#: arq queue (a sorted set) holding synchronous ``/v1/embeddings`` jobs.
SYNC_QUEUE = PREFIX + "queue:sync"

#: Pub/sub channel the API publishes to after enqueueing, so idle workers wake at once instead of polling.
WAKE_CHANNEL = PREFIX + "wake"

#: Sorted set: worker id -> time (ms) of its last heartbeat.
WORKERS = PREFIX + "workers"

#: Counter of texts queued or being encoded, deployment-wide (``shared.backlog``).
QUEUED_TEXTS = PREFIX + "queued-texts"

_REPLY_PREFIX = PREFIX + "reply:"
_WORKER_INFO_PREFIX = PREFIX + "worker:"


def reply_list(api_instance_id: str) -> str:
    """List a worker pushes results to; one per API process, drained by that process only."""
    return _REPLY_PREFIX + api_instance_id


def worker_info(worker_id: str) -> str:
    """What a live worker serves (msgpack), expiring shortly after its heartbeats stop."""
    return _WORKER_INFO_PREFIX + worker_id
