"""A served model's numeric precision: declared by ``DTYPE``, computed natively or refused, checked at load.

- CPU: ``auto`` is float32, the same vectors on every host. ``bfloat16`` (or ``float16``) runs only where the CPU
  computes it natively (``avx512_bf16``/``amx_bf16``, ``avx512_fp16``/``amx_fp16``); elsewhere the worker refuses
  to start rather than emulate it or quietly serve float32.
- CUDA: ``auto`` is bfloat16 where the GPU computes it natively (``cuda_bf16_native``: never emulated), else
  float16 (float32 for models that overflow in float16).
- float32 is pinned, not left to the libraries: torch's oneDNN may run float32 matmuls in bfloat16 or TF32 when
  told so, and OpenVINO's CPU plugin computes in bfloat16 by default on CPUs that have it.

A model moved to a runtime other than torch float32, or to a reduced precision on any device, is served only if its
vectors for the probe texts agree with torch float32's within that precision's tolerance (``TOLERANCES``). float32
means float32 whatever dtype the checkpoint is stored in: every model is cast to float32 once it is loaded.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Literal

import numpy as np
import torch

Precision = Literal["float32", "bfloat16", "float16"]

TORCH_DTYPES: dict[Precision, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

#: the CPU flags that mean a precision is computed natively
_NATIVE_CPU_FLAGS: dict[Precision, tuple[str, ...]] = {
    "bfloat16": ("avx512_bf16", "amx_bf16"),
    "float16": ("avx512_fp16", "amx_fp16"),
}
#: model types documented to overflow in float16 (activations past its range): bfloat16 or float32 only
_FLOAT16_OVERFLOWS = {"gemma2", "gemma3", "gemma3_text", "t5", "mt5"}

_CPUINFO = Path("/proc/cpuinfo")


class PrecisionUnavailable(ValueError):
    """The device cannot compute the precision ``DTYPE`` asks for natively."""


@dataclasses.dataclass(frozen=True, slots=True)
class Tolerance:
    #: the lowest cosine between a probe text's vector and torch float32's
    min_cosine: float
    #: the largest difference of any value, relative to the reference vector's length (None: not checked)
    max_relative_error: float | None = None


TOLERANCES: dict[Precision, Tolerance] = {
    "float32": Tolerance(min_cosine=0.999999, max_relative_error=1e-5),
    "bfloat16": Tolerance(min_cosine=0.9999),
    "float16": Tolerance(min_cosine=0.9999),
}
#: int8 weights (ONNX Runtime, QUANTIZE=int8) change the vectors visibly: about 0.98 on MiniLM
INT8_TOLERANCE = Tolerance(min_cosine=0.95)


@dataclasses.dataclass(frozen=True, slots=True)
class Agreement:
    cosine: float
    max_relative_error: float

    def within(self, tolerance: Tolerance) -> bool:
        if not self.cosine >= tolerance.min_cosine:  # not "<": a NaN (an overflow) must fail
            return False
        return tolerance.max_relative_error is None or self.max_relative_error <= tolerance.max_relative_error

    def __str__(self) -> str:
        return f"cosine {self.cosine:.7f}, max relative error {self.max_relative_error:.2e}"


def agreement(expected: np.ndarray, actual: np.ndarray) -> Agreement:
    """How close ``actual``'s rows are to ``expected``'s: the lowest cosine and the largest value error."""
    expected, actual = expected.astype(np.float64), actual.astype(np.float64)
    lengths = np.maximum(np.linalg.norm(expected, axis=1), 1e-12)
    cosines = np.sum(expected * actual, axis=1) / (lengths * np.maximum(np.linalg.norm(actual, axis=1), 1e-12))
    errors = np.max(np.abs(expected - actual), axis=1) / lengths
    return Agreement(float(np.min(cosines)), float(np.max(errors)))


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The flags of this machine's CPU (empty where ``/proc/cpuinfo`` does not exist)."""
    try:
        for line in _CPUINFO.read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_on_cpu(precision: Precision, flags: frozenset[str] | None = None) -> bool:
    if precision == "float32":
        return True
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in _NATIVE_CPU_FLAGS[precision])


def cuda_bf16_native() -> bool:
    """Whether this GPU computes bfloat16 in hardware (Ampere and later). torch's own check counts a GPU that only
    emulates it (``including_emulation=True``, its default), which would make ``auto`` pick a slow bfloat16."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def native_on_cuda(precision: Precision) -> bool:
    if not torch.cuda.is_available():
        return False
    return precision != "bfloat16" or cuda_bf16_native()


def declared_precision(setting: str, device: str, *, flags: frozenset[str] | None = None) -> Precision | None:
    """The precision every model of this worker runs at, or None where it depends on the model (CUDA, ``auto``);
    PrecisionUnavailable when the device does not compute it natively."""
    if setting == "auto":
        return "float32" if device == "cpu" else None
    precision: Precision = setting  # type: ignore[assignment]
    native = native_on_cpu(precision, flags) if device == "cpu" else native_on_cuda(precision)
    if not native:
        needs = " or ".join(_NATIVE_CPU_FLAGS.get(precision, ())) if device == "cpu" else "a GPU that computes it"
        raise PrecisionUnavailable(
            f"DTYPE={precision}: this {device.upper()} does not compute {precision} natively (it needs {needs}); "
            "use DTYPE=float32 or auto"
        )
    return precision


def cuda_auto_precision(*, bfloat16_supported: bool, model_type: str) -> Precision:
    if bfloat16_supported:
        return "bfloat16"
    return "float32" if model_type in _FLOAT16_OVERFLOWS else "float16"


def pin_float32_math() -> None:
    """float32 matmuls and convolutions in full float32 (IEEE), not TF32 or bfloat16, whatever the defaults."""
    torch.set_float32_matmul_precision("highest")
    mkldnn = torch.backends.mkldnn
    for backend in (getattr(mkldnn, "matmul", None), getattr(mkldnn, "conv", None)):
        if backend is not None and hasattr(backend, "fp32_precision"):
            backend.fp32_precision = "ieee"
