"""Every runtime a worker may put a model on gives ``SentenceTransformer.encode``'s vectors to float32 noise through
the real stack, short and long inputs in one batch, on any CPU (with or without bfloat16), and ``/v1/models`` names
the runtime and the precision. ``DTYPE=bfloat16`` is served as bfloat16, where the CPU computes it, and is refused
at start where it does not. The session stack runs the default (``BACKEND=auto``: OpenVINO); the others get their
own stacks here."""

from __future__ import annotations

import subprocess
import sys

import httpx
import numpy as np
import pytest

from tests.integration.conftest import MODEL, TEXTS, assert_same_vectors, cosines, post_all, vectors_of
from tests.stack import python_env, running_stack, served_card
from worker.models.precision import TOLERANCES, native_on_cpu

LONG = " ".join(["A long input fills the model's window and pads every shorter neighbour in its batch."] * 20)
INPUTS = [*TEXTS, LONG]


def served_vectors(base_url: str) -> list[tuple[list[str], np.ndarray]]:
    """All the inputs in one request, then one text a request sent together (batched across requests)."""
    one_request = httpx.post(base_url + "/v1/embeddings", json={"model": MODEL, "input": INPUTS}, timeout=60)
    assert one_request.status_code == 200, one_request.text
    served = [(INPUTS, vectors_of(one_request.json()))]
    responses = post_all(base_url, [{"model": MODEL, "input": text} for text in INPUTS])
    for text, response in zip(INPUTS, responses, strict=True):
        assert response.status_code == 200, response.text
        served.append(([text], vectors_of(response.json())))
    return served


def check_vectors(base_url: str, reference) -> None:
    for texts, vectors in served_vectors(base_url):
        assert_same_vectors(vectors, reference(texts))


def test_the_default_is_openvino_in_float32_with_torchs_vectors(base_url, reference):
    card = served_card(base_url, MODEL)
    assert (card["backend"], card["dtype"]) == ("openvino", "float32")
    check_vectors(base_url, reference)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_each_runtime_gives_torchs_vectors(tmp_path, reference, backend):
    with running_stack(tmp_path / "stack", BACKEND=backend, EXPORT_DIR=str(tmp_path / "exports")) as stack:
        card = served_card(stack.base_url, MODEL)
        assert (card["backend"], card["dtype"]) == (backend, "float32")
        check_vectors(stack.base_url, reference)


@pytest.mark.skipif(not native_on_cpu("bfloat16"), reason="this CPU has neither avx512_bf16 nor amx_bf16")
def test_bfloat16_is_served_named_so_and_within_its_tolerance(tmp_path, reference):
    with running_stack(tmp_path / "stack", DTYPE="bfloat16", EXPORT_DIR=str(tmp_path / "exports")) as stack:
        card = served_card(stack.base_url, MODEL)
        assert (card["backend"], card["dtype"]) == ("openvino", "bfloat16")
        for texts, vectors in served_vectors(stack.base_url):
            assert cosines(vectors, reference(texts)).min() >= TOLERANCES["bfloat16"].min_cosine


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_precision_the_cpu_does_not_compute_is_refused_at_start(dtype):
    if native_on_cpu(dtype):
        pytest.skip(f"this CPU computes {dtype}")
    worker = subprocess.run(
        [sys.executable, "-m", "worker"],
        env=python_env("redis://127.0.0.1:1/0", DTYPE=dtype, DEVICE="cpu"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert worker.returncode == 2
    assert f"DTYPE={dtype}: this CPU does not compute {dtype} natively" in worker.stderr
