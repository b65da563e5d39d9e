"""Error kinds shared by the API and the workers.

Every layer only raises; the API alone turns a kind into an HTTP status (``api.errors.ERROR_TABLE``).
A worker sends the kind and a message it wrote itself across the wire, never exception text.

Hierarchy::

    ServiceError            any failure a client may be told about; carries an ErrorKind
     └── ProtocolError      a queue message that cannot be decoded (bad bytes, unknown version)
    ClientGone              not a failure: the client left before its answer; nobody is told anything
    ResultsLost             stored results vanished while a response streamed them: the response is cut off, so
                            the client sees a broken stream rather than a short 200
"""

from __future__ import annotations

import enum


class ErrorKind(enum.StrEnum):
    """What went wrong, as a client sees it. The value is the OpenAI error ``code``."""

    INVALID_REQUEST = "invalid_request"
    INPUT_TOO_LONG = "context_length_exceeded"
    AUTHENTICATION = "invalid_api_key"
    MODEL_NOT_FOUND = "model_not_found"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    NOT_READY = "job_not_completed"
    EXPIRED = "expired"
    JOB_LOST = "job_lost"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    RATE_LIMITED = "rate_limit_exceeded"
    #: this API key holds its whole share of the queue (``MAX_QUEUED_TEXTS_PER_KEY``); other keys are still served
    KEY_BACKLOG_FULL = "key_backlog_full"
    #: the result store has no room for this job's results (``shared.storage``)
    INSUFFICIENT_STORAGE = "insufficient_storage"
    INTERNAL = "internal_error"
    MODEL_UNAVAILABLE = "model_unavailable"
    SERVICE_UNAVAILABLE = "service_unavailable"
    #: Redis may delete keys on its own (an eviction policy other than noeviction): no work is taken
    STORE_EVICTS = "store_evicts_keys"
    TIMEOUT = "timeout"


class ServiceError(Exception):
    """A failure with a message that is safe to show to the client."""

    def __init__(self, kind: ErrorKind, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.param = param


class ProtocolError(ServiceError):
    """A message on the queue could not be decoded."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorKind.INTERNAL, message)


class ClientGone(Exception):
    """The client closed the connection before it was answered: the request ends with no response (counted 499)."""


class ResultsLost(Exception):
    """Results a streamed response promised are gone from Redis (evicted or deleted) halfway through it."""
