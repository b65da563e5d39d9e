"""Which attention implementation a model's transformer runs: chosen at load, checked, and named on its card.

- **sdpa** (``torch.nn.functional.scaled_dot_product_attention``) wherever transformers implements it for the
  architecture: on CUDA it dispatches to fused flash or memory-efficient kernels, on CPU to a fused kernel, and it
  is what sentence-transformers itself runs by default, so the vectors are ``encode``'s. A model whose config pins
  another implementation (``eager``) is switched to sdpa only if its probe vectors stay within float32 noise of the
  pinned one's; else it keeps it.
- **Not unpadded (variable-length) flash attention.** transformers 5 has it for BERT-like encoders as
  ``flash_attention_2`` (it strips the padding inside each layer), but it needs the ``flash-attn`` package (a CUDA
  build per torch version) or ``kernels`` fetching it from the hub at run time; neither fits an air-gapped worker
  built from PyPI wheels, and it runs in bfloat16/float16 only (float32, the default on every device, would go
  without it anyway). With sdpa a padded batch still computes its masked columns: the cost of padding stays.
- Models without a torch transformer (or whose class has no sdpa) keep what transformers chose: their card says
  which (``eager``), or nothing when there is no attention to name.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from worker.models.precision import TOLERANCES, agreement

log = logging.getLogger(__name__)

SDPA = "sdpa"


def transformer_of(model: Any) -> torch.nn.Module | None:
    """The Hugging Face model inside a sentence-transformers model's first module, if it holds one."""
    modules = list(model)
    transformer = getattr(modules[0], "auto_model", None) if modules else None
    return transformer if isinstance(transformer, torch.nn.Module) else None


def attention_of(model: Any) -> str | None:
    transformer = transformer_of(model)
    config = getattr(transformer, "config", None)
    implementation = getattr(config, "_attn_implementation", None)
    return str(implementation) if implementation else None


def choose_attention(model: Any, name: str, probe: Any) -> str | None:
    """Run ``model`` on sdpa where transformers supports it; the implementation it runs on. ``probe``: a function of
    the model giving float32 outputs (one row per probe input) that must not move beyond float32 noise."""
    current = attention_of(model)
    transformer = transformer_of(model)
    if current in (None, SDPA) or transformer is None or not getattr(transformer, "_supports_sdpa", False):
        return current
    before = probe(model)
    try:
        transformer.set_attn_implementation(SDPA)  # type: ignore[operator]
    except (ValueError, ImportError) as exc:
        log.info("model %r keeps %s attention: transformers refuses sdpa for it (%s)", name, current, exc)
        return current
    measured = agreement(before, probe(model))
    if not measured.within(TOLERANCES["float32"]):
        log.warning("model %r on sdpa: %s to its %s attention; keeping %s", name, measured, current, current)
        transformer.set_attn_implementation(current)  # type: ignore[operator]
        return current
    log.info("model %r runs sdpa attention instead of %s (%s)", name, current, measured)
    return SDPA
