"""A sticky device error ends the worker: it leaves readiness and exits, so its supervisor restarts it and the jobs
it held run again on other workers once their leases lapse (``JOB_LEASE_S``; at most ``MAX_JOB_ATTEMPTS`` times).

Sticky errors poison the CUDA context: after one, every later kernel launch in the process fails, so a worker that
carried on would stay ready and fail every batch. They are CUDA's "sticky" error codes (the runtime API docs: the
process must terminate): an illegal address, a device-side assert, an illegal or misaligned instruction or address,
an unspecified launch failure, a launch timeout, an uncorrectable ECC or NVLink error, an unknown error. torch (2.8
and later) raises them as ``torch.AcceleratorError``, a RuntimeError whose message is CUDA's ("CUDA error: an
illegal memory access was encountered"); older torch raised a plain RuntimeError with the same message, and cuBLAS
or cuDNN calls after one may fail on their own. The classification reads the code where torch gives one and the
message otherwise, across the exception's causes.

Not sticky: out of memory (the batcher halves the batch; torch raises ``torch.OutOfMemoryError``), a launch out of
resources, an invalid argument, or any error of one input: those fail a batch, not the device.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import numpy as np
import torch

from shared.settings import Settings
from worker.models.encoder_protocol import Model

log = logging.getLogger(__name__)

#: the exit status of a worker that met a sticky device error (EX_TEMPFAIL: restart it)
STICKY_DEVICE_FAULT_EXIT = 75

#: cudaError_t values the CUDA runtime documents as sticky (leaving the context unusable)
STICKY_CUDA_CODES = frozenset({214, 220, 700, 702, 710, 714, 715, 716, 717, 718, 719, 999})
#: their messages, as cudaGetErrorString gives them (lower case)
STICKY_MESSAGES = (
    "an illegal memory access was encountered",  # 700
    "the launch timed out and was terminated",  # 702
    "device-side assert triggered",  # 710
    "hardware stack error",  # 714
    "an illegal instruction was encountered",  # 715
    "misaligned address",  # 716
    "operation not supported on global/shared address space",  # 717
    "invalid program counter",  # 718
    "unspecified launch failure",  # 719
    "uncorrectable ecc error encountered",  # 214
    "uncorrectable nvlink error",  # 220
    "cuda error: unknown error",  # 999
)

M = TypeVar("M", bound=Model)
T = TypeVar("T")


def is_sticky(exc: BaseException) -> bool:
    """Whether ``exc``, or an exception it was raised from, is a sticky CUDA error."""
    seen: BaseException | None = exc
    for _ in range(32):
        if seen is None:
            return False
        if _sticky_itself(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _sticky_itself(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError) or not isinstance(exc, RuntimeError):
        return False
    code = getattr(exc, "error_code", None)
    if isinstance(code, int) and code in STICKY_CUDA_CODES:
        return True
    message = str(exc).lower()
    return any(fragment in message for fragment in STICKY_MESSAGES)


def leave(settings: Settings, exc: BaseException) -> None:
    """Leave readiness and end the process at once: no other batch, no shutdown that would touch the device."""
    log.critical(
        "sticky device error: this worker leaves readiness and exits with %d so it is restarted; its jobs run "
        "again elsewhere after their lease",
        STICKY_DEVICE_FAULT_EXIT,
        exc_info=exc,
    )
    if settings.ready_file is not None:
        try:
            settings.ready_file.unlink(missing_ok=True)
        except OSError:
            log.exception("could not remove the ready file %s", settings.ready_file)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(STICKY_DEVICE_FAULT_EXIT)


class DeviceFaultGuard:
    """A model whose ``encode`` ends the worker on a sticky device error; everything else passes through."""

    def __init__(self, inner: Model, settings: Settings) -> None:
        self._inner = inner
        self._settings = settings

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def encode(self, batch: Sequence[Any], *args: Any, **kwargs: Any) -> np.ndarray:
        return self._guarded(self._inner.encode, batch, *args, **kwargs)

    def _guarded(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            if is_sticky(exc):
                leave(self._settings, exc)
            raise


class StagedDeviceFaultGuard(DeviceFaultGuard):
    """The guard of a model whose class splits ``encode`` into ``collate`` and ``run`` (``worker.batcher.Stages``),
    so the batcher can still overlap the two halves: each is guarded."""

    def collate(self, *args: Any, **kwargs: Any) -> Any:
        return self._guarded(self._inner.collate, *args, **kwargs)  # type: ignore[union-attr]

    def run(self, *args: Any, **kwargs: Any) -> np.ndarray:
        result: np.ndarray = self._guarded(self._inner.run, *args, **kwargs)  # type: ignore[union-attr]
        return result


def guard_device_faults(model: M, settings: Settings) -> M:
    """``model``, ending the worker on a sticky device error in any of its passes."""
    staged = all(callable(getattr(type(model), name, None)) for name in ("collate", "run"))
    guard = StagedDeviceFaultGuard(model, settings) if staged else DeviceFaultGuard(model, settings)
    return cast(M, guard)
