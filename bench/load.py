"""Drive an HTTP endpoint with wrk (fast enough not to be the bottleneck) and read back one result row."""

from __future__ import annotations

import dataclasses
import json
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
