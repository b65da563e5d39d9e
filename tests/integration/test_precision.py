"""``DTYPE=float32`` (and ``auto`` on CPU) is float32 whatever dtype a checkpoint is stored in: a MiniLM saved in
bfloat16, served from a folder (``MODEL_PATHS``) through the real stack, gives ``SentenceTransformer.encode``'s
vectors of the float32-upcast model to float32 noise, on ``BACKEND=auto`` (OpenVINO) and ``torch``, and
``/v1/models`` says ``float32`` and the runtime."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.integration.conftest import TEXTS, cosines, vectors_of, wait_until
from tests.model_fixtures import BFLOAT16_MODEL, load_upcast, model_paths_setting, save_bfloat16_checkpoints
from tests.stack import running_stack, served_card

LONG = " ".join(["A long input fills the model's window and pads every shorter neighbour in its batch."] * 20)
INPUTS = [*TEXTS, LONG]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return save_bfloat16_checkpoints(tmp_path_factory.mktemp("bfloat16"))


@pytest.fixture(scope="module")
def upcast(checkpoints) -> np.ndarray:
    return load_upcast(checkpoints[BFLOAT16_MODEL]).encode(INPUTS)


@pytest.mark.parametrize(("backend", "served_on"), [("auto", "openvino"), ("torch", "torch")])
def test_a_bfloat16_checkpoint_is_served_in_float32(tmp_path, checkpoints, upcast, backend, served_on):
    with running_stack(
        tmp_path / "stack",
        BACKEND=backend,
        DTYPE="float32",
        MODEL_PATHS=model_paths_setting(checkpoints),
        EMBED_MODELS=BFLOAT16_MODEL,
        EXPORT_DIR=str(tmp_path / "exports"),
    ) as stack:
        wait_until(lambda: "dtype" in served_card(stack.base_url, BFLOAT16_MODEL), 15, "the worker's heartbeat")
        card = served_card(stack.base_url, BFLOAT16_MODEL)
        assert (card["backend"], card["dtype"], card["attention"]) == (served_on, "float32", "sdpa")
        response = httpx.post(
            stack.base_url + "/v1/embeddings", json={"model": BFLOAT16_MODEL, "input": INPUTS}, timeout=60
        )
        assert response.status_code == 200, response.text
        served = vectors_of(response.json())
    difference, cosine = np.abs(served - upcast).max(), cosines(served, upcast).min()
    print(f"\n{backend}: max |difference| {difference:.2e}, lowest cosine {cosine:.9f} to the float32-upcast model")
    assert difference <= 1e-6
    assert cosine > 0.999999
