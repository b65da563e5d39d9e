"""How a loaded model runs: its runtime and precision, and the check that they change nothing beyond what they may.

On CPU the precision is the one ``DTYPE`` declares (``worker.models.precision``: float32 unless asked). A model moved to
ONNX Runtime or OpenVINO, or run in bfloat16, is served only if its vectors for a few probe texts (short and long,
in one padded batch) agree with torch float32's within that precision's tolerance, and only if the runtime reports
computing at that precision. A float32 runtime that fails either is dropped for torch float32, with a warning; a
reduced precision that torch cannot hold either makes the model fail to load, never a silent float32. Int8 weights
change the vectors visibly (cosine about 0.98 on MiniLM), so they are used only when an operator asks
(``QUANTIZE=int8``), against a lower floor.

Rerankers run in float32 on CPU (a declared reduced precision is refused there rather than approximated): on
ONNX Runtime or OpenVINO as ``BACKEND`` chooses, with the classifier exported to take the pairs' token type ids and
answer logits, if its logits for probe pairs agree with torch's within ``RERANKER_TOLERANCE``; else on torch.

A model that takes images (or audio, video: ``SentenceTransformerEncoder.exportable``) runs on torch whatever
``BACKEND`` says: the export path exports the transformer's text graph (last hidden state from token ids), which
computes neither its images nor, for CLIP, its projected text vectors. ``BACKEND=auto`` picks torch for it (an info
line); an explicit ``onnx`` or ``openvino`` falls back to torch with a warning, as for a model that cannot be exported.

Before any of that, every model is cast to float32: transformers 5 loads a checkpoint in the dtype it is stored in
(``dtype="auto"``), so a model saved in bfloat16 would otherwise be computed in bfloat16 under ``DTYPE=float32``, and
the float32 reference of every check would be a bfloat16 one. Its attention implementation is chosen then too
(``worker.models.attention``). On a GPU the model stays on torch and its precision is checked the same way
(``worker.models.gpu_placement``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import torch
from sentence_transformers import CrossEncoder, SentenceTransformer

from shared.cpus import cpu_budget
from shared.errors import ErrorKind, ServiceError
from shared.settings import Settings
from worker.models.attention import choose_attention
from worker.models.encoder import SentenceTransformerEncoder
from worker.models.gpu_placement import place_on_gpu, place_reranker_on_gpu
from worker.models.precision import (
    INT8_TOLERANCE,
    TOLERANCES,
    Precision,
    PrecisionUnavailable,
    declared_precision,
    pin_float32_math,
)
from worker.models.probes import RERANKER_TOLERANCE, probe_agreement, probe_pairs, probe_vectors
from worker.models.reranker import CrossEncoderReranker
from worker.models.runtimes import (
    Backend,
    Graph,
    choose_backend,
    export_folder,
    installed,
    load_runtime,
)

log = logging.getLogger(__name__)


def runtime_threads(settings: Settings) -> int:
    return settings.worker_threads or cpu_budget()


def place(model: SentenceTransformer, name: str, settings: Settings) -> SentenceTransformerEncoder:
    """An encoder for ``model`` on the runtime and precision the settings and the device call for."""
    device = str(model.device)
    torch.set_num_threads(runtime_threads(settings))
    pin_float32_math()
    model.to(torch.float32)
    attention = choose_attention(model, name, _probe_vectors)
    encoder = _place_on_cpu(model, name, settings) if device == "cpu" else place_on_gpu(model, name, settings)
    # read by describe(): the card names the attention the transformer runs (or was exported with)
    setattr(encoder, "attention", attention)  # noqa: B010
    return encoder


def _place_on_cpu(model: SentenceTransformer, name: str, settings: Settings) -> SentenceTransformerEncoder:
    device = str(model.device)
    precision = declared_precision(settings.dtype, device) or "float32"  # never None on CPU
    reference = SentenceTransformerEncoder(model)
    backend = choose_backend(settings.backend, device, precision)
    if backend != "torch" and not reference.exportable:
        _torch_only(model, name, settings.backend)
        backend = "torch"
    if backend != "torch":
        encoder = _on_runtime(model, name, backend, precision, settings, reference)
        if encoder is not None:
            return encoder
    if precision == "float32":
        return reference
    encoder = SentenceTransformerEncoder(model, precision=precision)  # torch autocast
    measured = probe_agreement(reference, encoder)
    if not measured.within(TOLERANCES[precision]):
        log.error("model %r in %s on torch: %s, outside its tolerance", name, precision, measured)
        raise ServiceError(
            ErrorKind.MODEL_NOT_FOUND, f"model {name!r} cannot be served in {precision}; serve it in float32", "model"
        )
    log.info("model %r runs on torch in %s (%s)", name, precision, measured)
    return encoder


def _torch_only(model: SentenceTransformer, name: str, setting: str) -> None:
    """Say why a model that takes more than text runs on torch: the export path exports a text graph. ``BACKEND=auto``
    chose for it (info); an explicit ``onnx`` / ``openvino`` falls back to torch as for any model it cannot run (a
    warning)."""
    taken = ", ".join(modality if isinstance(modality, str) else "+".join(modality) for modality in model.modalities)
    if setting == "auto":
        log.info("model %r takes %s: it runs on torch (an exported graph computes text only)", name, taken)
    else:
        log.warning("model %r takes %s; backend %s exports text only; serving it with torch", name, taken, setting)


def place_reranker(model: CrossEncoder, name: str, settings: Settings) -> CrossEncoderReranker:
    device = str(model.device)
    torch.set_num_threads(runtime_threads(settings))
    pin_float32_math()
    model.to(torch.float32)
    choose_attention(model, name, _probe_logits)
    if device != "cpu":
        return place_reranker_on_gpu(model, name, settings)
    precision = declared_precision(settings.dtype, device) or "float32"
    if precision != "float32":
        raise ServiceError(
            ErrorKind.MODEL_NOT_FOUND, f"reranker {name!r} is served in float32 on CPU, not {precision}", "model"
        )
    reference = CrossEncoderReranker(model)
    backend = choose_backend(settings.backend, device)
    if backend == "torch" or not reference.exportable:
        return reference
    return _reranker_on_runtime(model, name, backend, settings, reference) or reference


def _probe_vectors(model: SentenceTransformer) -> np.ndarray:
    return probe_vectors(SentenceTransformerEncoder(model))


def _probe_logits(model: CrossEncoder) -> np.ndarray:
    """The logits of the probe pairs as one row per label: compared as a vector, so no single logit near zero
    decides alone."""
    reranker = CrossEncoderReranker(model)
    logits: np.ndarray = reranker.encode(probe_pairs(reranker)).T
    return logits


def _reranker_on_runtime(
    model: CrossEncoder, name: str, backend: Backend, settings: Settings, reference: CrossEncoderReranker
) -> CrossEncoderReranker | None:
    """The reranker with its classifier on ONNX Runtime or OpenVINO if its logits agree with torch's; None (with a
    warning) if not."""
    if not installed(backend):
        log.warning("reranker %r: backend %s is not installed; serving it with torch", name, backend)
        return None
    graph = Graph("logits", reference.inputs)
    try:
        classifier = reference.classifier
        folder = export_folder(_export_root(settings), name, backend, "none", classifier, graph)
        runtime = load_runtime(backend, classifier, folder, threads=runtime_threads(settings), graph=graph)
        candidate = CrossEncoderReranker(model, runtime.forward, backend)
        pairs = probe_pairs(reference)
        expected, actual = reference.encode(pairs), candidate.encode(pairs)
    except Exception:
        log.warning("reranker %r could not run on %s; serving it with torch", name, backend, exc_info=True)
        return None
    difference = float(np.max(np.abs(actual - expected)))
    if not np.allclose(actual, expected, rtol=RERANKER_TOLERANCE, atol=RERANKER_TOLERANCE):
        log.warning("reranker %r on %s: logits %.2g from torch's; serving it with torch", name, backend, difference)
        return None
    log.info("reranker %r runs on %s in float32 (logits within %.2g of torch's)", name, backend, difference)
    return candidate


def _on_runtime(
    model: SentenceTransformer,
    name: str,
    backend: Backend,
    precision: Precision,
    settings: Settings,
    reference: SentenceTransformerEncoder,
) -> SentenceTransformerEncoder | None:
    """The model on ONNX Runtime or OpenVINO if it runs there within its tolerance; None (with a warning) if not."""
    if not installed(backend):
        log.warning("model %r: backend %s is not installed; serving it with torch", name, backend)
        return None
    quantize = settings.quantize if backend == "onnx" else "none"
    try:
        transformer = model[0].auto_model
        if not isinstance(transformer, torch.nn.Module):
            raise TypeError(f"the first module holds no torch model but {type(transformer).__name__}")
        folder = export_folder(_export_root(settings), name, backend, quantize, transformer)
        runtime = load_runtime(
            backend, transformer, folder, threads=runtime_threads(settings), precision=precision, quantize=quantize
        )
        label = backend + "-int8" * (quantize == "int8")
        candidate = SentenceTransformerEncoder(model, runtime.forward, label, precision=runtime.precision)
        measured = probe_agreement(reference, candidate)
    except PrecisionUnavailable as exc:
        log.warning("model %r: %s; serving it with torch", name, exc)
        return None
    except Exception:
        log.warning("model %r could not run on %s; serving it with torch", name, backend, exc_info=True)
        return None
    tolerance = INT8_TOLERANCE if quantize == "int8" else TOLERANCES[precision]
    if not measured.within(tolerance):
        log.warning(
            "model %r on %s in %s: %s to torch float32, outside the tolerance (%s); serving it with torch",
            *(name, candidate.backend, precision, measured, tolerance),
        )
        return None
    log.info("model %r runs on %s in %s (%s to torch float32)", name, candidate.backend, precision, measured)
    return candidate


def _export_root(settings: Settings) -> Path:
    return settings.export_dir or Path(huggingface_hub.constants.HF_HOME) / "exports"
