"""``python -m api [--host 127.0.0.1] [--port 8000]``: the API under uvicorn, as ``API_WORKERS`` processes.

Each process is a whole API (``api.main.create_app``): its own Redis connections and its own reply list (a fresh id
each, ``api.main``), so a worker's reply goes back to the process whose request waits for it. uvicorn's supervisor
shares the listening socket among them, restarts one that dies, and on SIGTERM has each finish its requests in
flight. No access log: it would print query strings, where a client may put a secret; the API logs its own lines.
"""

from __future__ import annotations

import argparse

import uvicorn

from shared.cpus import cpu_budget
from shared.settings import get_settings

#: processes ``API_WORKERS=0`` runs at most: past a few, Redis (one thread) is the bound, not the API
MOST_AUTO_WORKERS = 4


def api_processes(api_workers: int) -> int:
    """How many API processes to run: ``api_workers``, or with 0 the CPUs the API may use, at most
    ``MOST_AUTO_WORKERS``."""
    return api_workers or min(cpu_budget(), MOST_AUTO_WORKERS)


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
    )


if __name__ == "__main__":
    main()
