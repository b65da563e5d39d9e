"""The running API against its own OpenAPI document: ``schemathesis run --checks all``, the CLI users run, over
every operation, with an API key, in the coverage, fuzzing and stateful phases (the last through the document's
links; the document has no examples for the examples phase). Every check is on; nothing is excluded.

It proves, among the rest: no 5xx; every status, content type, header and body as documented; a request the
document allows is never refused with a 400, and one it forbids never accepted; undeclared methods answer 405
with ``Allow``; a route that needs a key refuses the request without it; a deleted object is gone.

The model names it generates are not served (404), so it reaches validation, storage and routing rather than the
encoder: with a served model, a ``prompt_name`` or ``dimensions`` that model lacks is a 400 that no schema can
foresee. The encoder's answers are held to ``SentenceTransformer.encode`` by the other integration tests.
"""

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.stack import running_stack

KEY = "fuzz-key-0123456789"
EXAMPLES_PER_OPERATION = 30
#: the same cases on every run, so a failure is reproduced by running the test again
SEED = 20261204


@pytest.fixture(scope="module")
def keyed_url(tmp_path_factory: pytest.TempPathFactory):
    # any model name is admitted, so jobs are created (and linked operations reached) with the names generated
    with running_stack(tmp_path_factory.mktemp("fuzz"), API_KEYS=KEY, ALLOW_ANY_MODEL="true") as stack:
        yield stack.base_url


def test_the_api_keeps_to_its_openapi_document(keyed_url, tmp_path):
    with urllib.request.urlopen(keyed_url + "/openapi.json", timeout=30) as response:
        document = json.load(response)
    operations = sum(len(methods) for methods in document["paths"].values())
    schemathesis = Path(sys.executable).with_name("schemathesis")
    command = [
        str(schemathesis),
        "run",
        keyed_url + "/openapi.json",
        "--checks",
        "all",
        "--header",
        f"Authorization: Bearer {KEY}",
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--no-color",
        "--report-dir",
        str(tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    summary = result.stdout[result.stdout.rfind("SUMMARY") :]
    print(summary)
    assert result.returncode == 0, result.stdout[-20_000:]
    assert f"Tested: {operations}" in summary and operations >= 22
    for phase in ("Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in summary
