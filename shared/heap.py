"""The cyclic garbage collector, set for a long-running server process (the API's and the worker's).

With CPython's defaults a collection starts every 700 net allocations, and a request's objects that live across a
few of them (64 requests in flight, each alive for milliseconds) reach the oldest generation, whose full collections
then walk every object the process holds: the imported libraries, the app, the loaded models. Measured under load
(64 clients x 1 text, stub encoder, perf) that was about a tenth of the API's CPU and a twentieth of the worker's.
So once a process is ready, what it holds then is frozen out of the collector's sight (``gc.freeze``: it lives as
long as the process anyway) and the youngest generation is collected less often; reference counting still frees
every object that is not in a cycle the moment it is dropped, so memory does not grow with the threshold.
"""

from __future__ import annotations

import gc

#: net allocations between collections of the youngest generation (CPython's default: 700)
YOUNG_THRESHOLD = 50_000
#: collections of a generation between collections of the next one (CPython's default: 10 and 10)
OLDER_THRESHOLDS = (20, 20)


def settle() -> None:
    """Collect what is garbage now, freeze what is left, and collect the young less often: call it once the process
    holds what it serves with (its modules, app and start-up models)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
