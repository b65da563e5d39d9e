"""Every runtime a worker may put a model on gives ``SentenceTransformer.encode``'s vectors through the real stack,
short and long inputs in one batch, and ``/v1/models`` names the runtime. The session stack runs the default
(``BACKEND=auto``: OpenVINO on this CPU); the others get their own stacks here."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.conftest import MODEL, TEXTS, assert_same_vectors, post_all, vectors_of
from tests.stack import running_stack, served_backend

LONG = " ".join(["A long input fills the model's window and pads every shorter neighbour in its batch."] * 20)
INPUTS = [*TEXTS, LONG]


def check_vectors(base_url: str, reference) -> None:
    one_request = httpx.post(base_url + "/v1/embeddings", json={"model": MODEL, "input": INPUTS}, timeout=60)
    assert one_request.status_code == 200, one_request.text
    assert_same_vectors(vectors_of(one_request.json()), reference(INPUTS))
    # one text a request, sent together: the worker batches them across requests
    responses = post_all(base_url, [{"model": MODEL, "input": text} for text in INPUTS])
    for text, response in zip(INPUTS, responses, strict=True):
        assert response.status_code == 200, response.text
        assert_same_vectors(vectors_of(response.json()), reference([text]))


def test_the_default_on_this_cpu_is_openvino_with_torchs_vectors(base_url, reference):
    assert served_backend(base_url, MODEL) == "openvino"
    check_vectors(base_url, reference)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_each_runtime_gives_torchs_vectors(tmp_path, reference, backend):
    with running_stack(tmp_path / "stack", BACKEND=backend, EXPORT_DIR=str(tmp_path / "exports")) as stack:
        assert served_backend(stack.base_url, MODEL) == backend
        check_vectors(stack.base_url, reference)
