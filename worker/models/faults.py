"""Faults on demand, for tests over real processes: a slow model, a poisonous input, a crash, an out-of-memory, a
sticky device error (what torch raises after an illegal memory access on CUDA).

Enabled only by the ``FAULT_*`` settings; with none set, ``with_faults`` returns the encoder untouched.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from shared.settings import Settings
from worker.models.encoder_protocol import Encoder

log = logging.getLogger(__name__)

#: torch's message for CUDA's cudaErrorIllegalAddress, word for word
INJECTED_STICKY_ERROR = (
    "CUDA error: an illegal memory access was encountered\n"
    "CUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace below might be "
    "incorrect.\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1\n"
    "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.\n"
)


class FaultInjectingEncoder:
    def __init__(self, inner: Encoder, settings: Settings) -> None:
        self._inner = inner
        self._delay_s = settings.fault_encode_delay_s
        self._poison = settings.fault_poison_token
        self._crash = settings.fault_crash_token
        self._oom_above = settings.fault_oom_above
        self._sticky = settings.fault_sticky_token

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def encode(self, batch: Sequence[list[int]], prompt_length: int = 0) -> np.ndarray:
        time.sleep(self._delay_s)
        if _holds(batch, self._crash):
            log.error("injected crash")
            os._exit(137)
        if _holds(batch, self._poison):
            raise RuntimeError("injected poisonous input")
        if self._oom_above is not None and len(batch) > self._oom_above:
            raise torch.OutOfMemoryError("injected out of memory")
        if _holds(batch, self._sticky):
            raise torch.AcceleratorError(INJECTED_STICKY_ERROR)
        return self._inner.encode(batch, prompt_length)


def _holds(batch: Sequence[Any], token: int | None) -> bool:
    """Whether a text of ``batch`` holds ``token`` (an image holds no tokens)."""
    return token is not None and any(isinstance(ids, list) and token in ids for ids in batch)


def with_faults(encoder: Encoder, settings: Settings) -> Encoder:
    faults = (
        settings.fault_encode_delay_s or None,
        settings.fault_poison_token,
        settings.fault_crash_token,
        settings.fault_oom_above,
        settings.fault_sticky_token,
    )
    if all(fault is None for fault in faults):  # token 0 is a token: only an unset fault is off
        return encoder
    log.warning("fault injection is on: %s", faults)
    injecting: Encoder = FaultInjectingEncoder(encoder, settings)
    return injecting
