"""A model on a CUDA device: its precision chosen (``DTYPE``, or ``auto``: bfloat16 where the GPU computes it
natively, else float16) and checked at load, as on CPU.

The model arrives in float32 (``runtime_choice`` casts every checkpoint to it). The float32 reference (vectors for
the probe texts, a reranker's logits for probe pairs) is computed on the device first; then the model is cast to the
chosen precision and its outputs must agree with the reference within that precision's floor (``TOLERANCES``;
``REDUCED_RERANKER_TOLERANCE`` for logits). float32 itself is the reference (with TF32 pinned off, see
``precision.pin_float32_math``): there is nothing to compare it with.

A reduced precision that fails its floor:

- **declared** (``DTYPE=bfloat16``/``float16``): the load fails, as on CPU. The operator asked for that precision
  across the fleet; serving float32 under it would hide a model that cannot run as configured.
- **chosen** (``DTYPE=auto``): the model is served in float32, with a warning. The precision was this worker's
  choice for speed, not a promise: float32 gives the right vectors, and the card (``dtype``) and the variants
  metric say so. The float32 weights are kept on the host while the reduced precision is tried, so the fallback
  is the exact float32 model, not a round trip through bfloat16.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from sentence_transformers import CrossEncoder, SentenceTransformer

from shared.errors import ErrorKind, ServiceError
from shared.settings import Settings
from worker.models.encoder import SentenceTransformerEncoder
from worker.models.precision import (
    TOLERANCES,
    TORCH_DTYPES,
    Precision,
    agreement,
    cuda_auto_precision,
    cuda_bf16_native,
    declared_precision,
)
from worker.models.probes import probe_pairs, probe_vectors, reduced_logits_agree
from worker.models.reranker import CrossEncoderReranker
from worker.models.runtimes import choose_backend

log = logging.getLogger(__name__)

#: what ``declared_precision`` needs of the device: only whether it is a CPU
_CUDA = "cuda"


def place_on_gpu(model: SentenceTransformer, name: str, settings: Settings) -> SentenceTransformerEncoder:
    declared = declared_precision(settings.dtype, _CUDA)
    precision = declared or gpu_auto_precision(model)
    if choose_backend(settings.backend, _CUDA, precision) != "torch":
        log.warning("model %r: backend %s runs on CPU only; serving it with torch", name, settings.backend)
    reference = SentenceTransformerEncoder(model)
    if precision == "float32":
        return reference
    expected = probe_vectors(reference)

    def check() -> tuple[bool, str]:
        measured = agreement(expected, probe_vectors(SentenceTransformerEncoder(model, precision=precision)))
        return measured.within(TOLERANCES[precision]), f"{measured} to float32"

    served = _cast_checked(model, name, precision, declared=declared is not None, check=check)
    return SentenceTransformerEncoder(model, precision=served)


def place_reranker_on_gpu(model: CrossEncoder, name: str, settings: Settings) -> CrossEncoderReranker:
    declared = declared_precision(settings.dtype, _CUDA)
    precision = declared or gpu_auto_precision(model)
    reference = CrossEncoderReranker(model)
    if precision == "float32":
        return reference
    pairs = probe_pairs(reference)
    expected = reference.encode(pairs)

    def check() -> tuple[bool, str]:
        within, difference = reduced_logits_agree(expected, CrossEncoderReranker(model).encode(pairs))
        return within, f"logits {difference:.2g} of the largest float32 logit from float32's"

    served = _cast_checked(model, name, precision, declared=declared is not None, check=check)
    return CrossEncoderReranker(model, precision=served)


def gpu_auto_precision(model: SentenceTransformer | CrossEncoder) -> Precision:
    return cuda_auto_precision(bfloat16_supported=cuda_bf16_native(), model_type=model_type(model))


def model_type(model: SentenceTransformer | CrossEncoder) -> str:
    config = getattr(getattr(model[0], "auto_model", None), "config", None)
    return str(getattr(config, "model_type", ""))


def _cast_checked(
    model: torch.nn.Module, name: str, precision: Precision, *, declared: bool, check: Callable[[], tuple[bool, str]]
) -> Precision:
    """Cast ``model`` to ``precision`` and return it if ``check`` passes; else float32 restored (chosen precision)
    or a ServiceError (declared one)."""
    host_copy = (
        None if declared else {key: value.detach().to("cpu", copy=True) for key, value in model.state_dict().items()}
    )
    model.to(TORCH_DTYPES[precision])
    within, measured = check()
    if within:
        log.info("model %r runs on torch in %s (%s)", name, precision, measured)
        return precision
    if host_copy is None:
        log.error("model %r in %s: %s, outside its tolerance", name, precision, measured)
        raise ServiceError(
            ErrorKind.MODEL_NOT_FOUND, f"model {name!r} cannot be served in {precision}; serve it in float32", "model"
        )
    log.warning("model %r in %s: %s, outside its tolerance; serving it in float32", name, precision, measured)
    model.to(torch.float32)
    model.load_state_dict(host_copy)
    return "float32"
