"""The API never pulls in torch or worker code; shared/ pulls in neither torch nor FastAPI."""

import subprocess
import sys

from tests.stack import ROOT

HEAVY = ("torch", "sentence_transformers", "transformers", "onnxruntime", "openvino", "worker")


def imported_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    output = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, check=True, capture_output=True, text=True)
    return set(output.stdout.split())


def test_api_imports_no_torch_and_no_worker_code():
    modules = imported_after("import api.main\napi.main.create_app()")
    assert "fastapi" in modules
    assert not modules & set(HEAVY)


def test_shared_imports_neither_torch_nor_fastapi():
    modules = imported_after(
        "import shared.protocol, shared.keys, shared.settings, shared.redis_client, shared.workers"
    )
    assert not modules & {*HEAVY, "fastapi", "starlette"}
