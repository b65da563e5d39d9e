"""The prepared H200 check (bench/gpu_check.py) dry-runs on this machine's CPU, so it does not rot between the tasks
that are lent a GPU: every phase runs or says why not, and the stack's vectors agree with ``encode``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.gpu_check import PHASES, SETTINGS_USED
from tests.stack import ROOT


def test_the_gpu_check_dry_runs_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [sys.executable, "-m", "bench.gpu_check", "--quick", "--device", "cpu", "--out", str(out)]
    # the carried folder, where a developer built one, is used as on the device; without it, the PATH's redis-server
    # and the bundled model's config
    completed = subprocess.run(
        [*command, "--budget-s", "150"], cwd=ROOT, capture_output=True, text=True, timeout=240, check=False
    )
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]

    results = json.loads((out / "results.json").read_text())
    phases = results["phases"]
    for name in PHASES:
        assert phases[name]["status"] in ("done", "skipped"), (name, phases[name])
    checks = phases["vectors"]["checks"]
    assert "float32" in checks and "float32, images" in checks  # the image path too, on the test CLIP
    assert all(check["passed"] for check in checks.values()), checks
    stacks = phases["load"]["stacks"]
    assert stacks and all("error" not in stack and stack.get("runs") for stack in stacks.values()), stacks
    runs = [run for stack in stacks.values() for run in stack["runs"]]
    # a second on a busy shared CPU may answer nothing in one workload; the summary marks such a run
    assert any(run.get("texts_per_s", 0) > 0 for run in runs), runs
    assert any(batches.get("batch_size") for run in runs if (batches := run.get("batches"))), runs
    assert phases["env"]["settings"]["missing"] == [] and phases["settings_end"]["missing"] == [], SETTINGS_USED
    # torch.compile's graph capture, without a C++ compiler: dynamo's eager backend, the vectors still encode's
    compiled = phases["compile"]
    assert compiled["backend"] == "eager" and compiled["compiled"]["passed"], compiled

    summary = (out / "summary.md").read_text()
    for name in PHASES:
        assert f"| {name} |" in summary
    for heading in ("## In-process ceilings", "## Vectors through the stack", "## The stack", "## torch.compile"):
        assert heading in summary
