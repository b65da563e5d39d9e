"""How a loaded model runs: its precision on CUDA, its runtime on CPU, and the check that the runtime changes nothing.

A model moved to ONNX Runtime or OpenVINO is served only if its vectors for a few probe texts (short and long, in
one padded batch) agree with torch's to a cosine of ``MIN_COSINE``; a model that fails the check, or cannot be
exported, is served with torch, with a warning. Int8 weights change the vectors visibly (cosine about 0.98 on
MiniLM), so they are used only when an operator asks (``QUANTIZE=int8``), against a lower floor.
"""

from __future__ import annotations

import logging
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from shared.settings import Settings
from worker.encoder import SentenceTransformerEncoder
from worker.runtimes import choose_backend, cpu_budget, export_folder, installed, load_forward

log = logging.getLogger(__name__)

MIN_COSINE = 0.9999
MIN_COSINE_INT8 = 0.95
PROBE_TEXTS = [
    "hello",
    "A short sentence about the weather in Lisbon.",
    " ".join(["Long inputs pad the batch and reach the attention mask's every column."] * 12),
    "Ünïcödé, emoji 🙂 and numbers 3.14159 also go through the tokenizer.",
]

#: model types documented to overflow in float16 (activations past its range): bfloat16 or float32 only
_FLOAT16_OVERFLOWS = {"gemma2", "gemma3", "gemma3_text", "t5", "mt5"}


def runtime_threads(settings: Settings) -> int:
    return settings.worker_threads or cpu_budget()


def choose_dtype(setting: str, device: str, *, bfloat16_supported: bool, model_type: str) -> torch.dtype:
    """Weights' precision: float32 on CPU; on CUDA the setting, or for ``auto`` the fastest one that is safe."""
    if device == "cpu":
        return torch.float32
    if setting != "auto":
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[setting]
    if bfloat16_supported:
        return torch.bfloat16
    return torch.float32 if model_type in _FLOAT16_OVERFLOWS else torch.float16


def place(model: SentenceTransformer, name: str, settings: Settings) -> SentenceTransformerEncoder:
    """An encoder for ``model`` on the runtime and precision the settings and the device call for."""
    device = str(model.device)
    torch.set_num_threads(runtime_threads(settings))
    if device != "cpu":
        bfloat16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        dtype = choose_dtype(settings.dtype, device, bfloat16_supported=bfloat16, model_type=_model_type(model))
        if dtype != torch.float32:
            model.to(dtype)
    torch_encoder = SentenceTransformerEncoder(model)
    backend = choose_backend(settings.backend, device)
    if backend == "torch":
        return torch_encoder
    if device != "cpu" or not installed(backend):
        log.warning("model %r: backend %s is not available on %s; serving it with torch", name, backend, device)
        return torch_encoder
    quantize = settings.quantize if backend == "onnx" else "none"
    try:
        transformer = model[0].auto_model
        if not isinstance(transformer, torch.nn.Module):
            raise TypeError(f"the first module holds no torch model but {type(transformer).__name__}")
        folder = export_folder(_export_root(settings), name, backend, quantize, transformer)
        forward = load_forward(backend, transformer, folder, threads=runtime_threads(settings), quantize=quantize)
        candidate = SentenceTransformerEncoder(model, forward, backend + "-int8" * (quantize == "int8"))
        cosine = agreement(torch_encoder, candidate)
    except Exception:
        log.warning("model %r could not run on %s; serving it with torch", name, backend, exc_info=True)
        return torch_encoder
    floor = MIN_COSINE_INT8 if quantize == "int8" else MIN_COSINE
    if cosine < floor:
        log.warning("model %r on %s: cosine to torch %.6f < %s; serving it with torch", name, backend, cosine, floor)
        return torch_encoder
    log.info("model %r runs on %s (cosine to torch %.6f)", name, candidate.backend, cosine)
    return candidate


def agreement(reference: SentenceTransformerEncoder, candidate: SentenceTransformerEncoder) -> float:
    """The lowest cosine between the two encoders' vectors for the probe texts, encoded as one padded batch."""
    expected, actual = reference.encode_texts(PROBE_TEXTS), candidate.encode_texts(PROBE_TEXTS)
    norms = np.linalg.norm(expected, axis=1) * np.linalg.norm(actual, axis=1)
    return float(np.min(np.sum(expected * actual, axis=1) / np.maximum(norms, 1e-12)))


def _export_root(settings: Settings) -> Path:
    return settings.export_dir or Path(huggingface_hub.constants.HF_HOME) / "exports"


def _model_type(model: SentenceTransformer) -> str:
    config = getattr(getattr(model[0], "auto_model", None), "config", None)
    return str(getattr(config, "model_type", ""))
