"""Wall-clock time in epoch milliseconds: what deadlines, queue scores and heartbeats are written in.

Epoch time, not a monotonic clock, because the API, the workers and Redis compare these values across processes.
"""

from __future__ import annotations

import time


def now_ms() -> int:
    return int(time.time() * 1000)
