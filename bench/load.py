"""Drive an HTTP endpoint with wrk (fast enough not to be the bottleneck) and read back one result row."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

LUA = Path(__file__).with_name("report.lua")


@dataclasses.dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds


def run_wrk(url: str, body: dict[str, object], *, connections: int, seconds: float) -> LoadResult:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (apt-get install -y wrk)")
    with tempfile.NamedTemporaryFile("w", suffix=".json") as body_file:
        json.dump(body, body_file)
        body_file.flush()
        threads = min(2, connections)
        completed = subprocess.run(
            [
                wrk,
                f"-t{threads}",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "30s",
                "-s",
                str(LUA),
                url,
            ],
            env={"WRK_BODY_FILE": body_file.name, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=True,
        )
    row = json.loads(completed.stdout.strip().splitlines()[-1])
    return LoadResult(
        requests=row["requests"],
        seconds=row["duration_us"] / 1e6,
        p50_ms=row["p50_us"] / 1000,
        p99_ms=row["p99_us"] / 1000,
        errors=row["errors"],
    )


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _proc_stats() -> dict[int, tuple[int, float]]:
    """Every live process: its parent and its CPU seconds (user + system), from /proc/<pid>/stat."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) ", whatever comm holds
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS)
    return stats


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds each named process has used so far, its live descendants included (uvicorn's ``--workers``
    processes count towards their supervisor)."""
    stats = _proc_stats()
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in stats.items():
        children.setdefault(parent, []).append(pid)
    used = {}
    for name, root in pids.items():
        total, todo = 0.0, [root]
        while todo:
            pid = todo.pop()
            total += stats.get(pid, (0, 0.0))[1]
            todo += children.get(pid, [])
        used[name] = total
    return used


def machine_busy_s() -> float:
    """CPU seconds this whole machine has spent busy (every core, every process: the load generator and anything
    else running here included), from /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
