"""``python -m api [--host 127.0.0.1] [--port 8000]``: the API under uvicorn, as ``API_WORKERS`` processes.

Each process is a whole API (``api.main.create_app``): its own Redis connections and its own reply list (a fresh id
each, ``api.main``), so a worker's reply goes back to the process whose request waits for it. uvicorn's supervisor
shares the listening socket among them, restarts one that dies, and on SIGTERM has each finish its requests in
flight. No access log: it would print query strings, where a client may put a secret; the API logs its own lines.
uvicorn's httptools protocol, with one change (``OneWriteHttpTools``): a response's head goes out with its body, in
one write.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from shared.cpus import cpu_budget
from shared.settings import get_settings

#: processes ``API_WORKERS=0`` runs at most: past a few, Redis (one thread) is the bound, not the API
MOST_AUTO_WORKERS = 4


def api_processes(api_workers: int) -> int:
    """How many API processes to run: ``api_workers``, or with 0 the CPUs the API may use, at most
    ``MOST_AUTO_WORKERS``."""
    return api_workers or min(cpu_budget(), MOST_AUTO_WORKERS)


class _Held:
    """A stand-in transport that keeps what is written to it."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


class _HeadFirst:
    """The connection's transport, writing ``head`` ahead of the first write (or before it is closed)."""

    def __init__(self, transport: asyncio.Transport, head: bytes) -> None:
        self._transport = transport
        self.head: bytes | None = head

    def write(self, data: bytes) -> None:
        head, self.head = self.head, None
        self._transport.write(data if head is None else head + data)

    def flush(self) -> None:
        if self.head is not None:
            self.write(b"")

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _OneWriteCycle(RequestResponseCycle):
    """uvicorn's request cycle, writing a response's head with its first body message: one send a response, not
    two (uvicorn writes the head as soon as ``http.response.start`` comes; a write is a system call and the
    client's wake-up)."""

    _head: bytes | None = None

    async def send(self, message: Any) -> None:
        head = self._head
        if head is None and message["type"] == "http.response.start" and not self.response_started:
            transport, held = self.transport, _Held()
            self.transport = held  # type: ignore[assignment]
            try:
                await super().send(message)
            finally:
                self.transport = transport
            self._head = held.data or None
            return
        if head is None:
            await super().send(message)
            return
        self._head = None
        transport, head_first = self.transport, _HeadFirst(self.transport, head)
        self.transport = head_first  # type: ignore[assignment]
        try:
            await super().send(message)
        finally:
            self.transport = transport
            head_first.flush()


class OneWriteHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with ``_OneWriteCycle``s."""

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        cycle = getattr(self, "cycle", None)
        if type(cycle) is RequestResponseCycle:
            cycle.__class__ = _OneWriteCycle


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    uvicorn.run(
        "api.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=api_processes(get_settings().api_workers),
        access_log=False,
        http=OneWriteHttpTools,
    )


if __name__ == "__main__":
    main()
