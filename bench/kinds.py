"""What the benchmarks of each model kind share (``bench.sparse``, ``bench.multivector``, ``bench.multimodal``): the
library's in-process ceiling at its best batch size, measured before and after the stack runs (the machine drifts);
the stack's route under ``wrk`` at each load; one table of both, the ratios against the mean of the two ceilings.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from bench.load import LoadResult, run_wrk
from bench.run import wait_idle

BATCH_SIZES = (8, 16, 32, 64)


class Ceiling:
    """Items/s of ``run(batch_size)`` over ``items`` items at the best of ``sizes``, and that size."""

    def __init__(self, run: Callable[[int], object], items: int, sizes: Sequence[int] = BATCH_SIZES) -> None:
        self._run, self._items, self._sizes = run, items, sizes
        self.measured: list[tuple[float, int]] = []

    def measure(self, rounds: int = 3) -> tuple[float, int]:
        self._run(self._sizes[len(self._sizes) // 2])  # warm-up
        best = (0.0, 0)
        for batch_size in self._sizes:
            for _ in range(rounds):
                started = time.perf_counter()
                self._run(batch_size)
                best = max(best, (self._items / (time.perf_counter() - started), batch_size))
        self.measured.append(best)
        return best

    @property
    def mean(self) -> float:
        return sum(rate for rate, _ in self.measured) / len(self.measured)

    def describe(self, what: str) -> str:
        before, after = self.measured[0], self.measured[-1]
        return (
            f"in-process ceiling, {what}: {before[0]:.0f} /s (batch {before[1]}) before, "
            f"{after[0]:.0f} (batch {after[1]}) after"
        )


def load_rows(
    url: str, bodies: dict[tuple[int, int], dict[str, object]], redis_url: str, seconds: float
) -> dict[tuple[int, int], LoadResult]:
    """``wrk`` at each (clients, items a request) load with its body, after a warm-up and on an idle queue."""
    rows = {}
    for (clients, count), body in bodies.items():
        wait_idle(redis_url)
        run_wrk(url, body, connections=clients, seconds=2)
        wait_idle(redis_url)
        rows[(clients, count)] = run_wrk(url, body, connections=clients, seconds=seconds)
    return rows


def print_table(title: str, ceiling: Ceiling, what: str, rows: dict[tuple[int, int], LoadResult], unit: str) -> None:
    print(f"\n## {title}")
    print(ceiling.describe(what))
    print(f"{'load':<12} {unit + '/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'x ceiling':>9}")
    for (clients, count), result in rows.items():
        rate = result.requests_per_s * count
        print(
            f"{f'{clients} x {count}':<12} {rate:8.0f} {result.p50_ms:8.1f} {result.p99_ms:8.1f} "
            f"{result.errors:6d} {rate / ceiling.mean:9.2f}"
        )
