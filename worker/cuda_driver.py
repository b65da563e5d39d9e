"""Whether CUDA is usable by this process, checked once at worker start, before any model loads.

The GPU image carries one CUDA stack: PyPI's torch and the ``nvidia-*`` wheels it depends on (CUDA 13.0 for torch
2.13.0). The host supplies only the driver, and a CUDA build runs only on a driver at least as new as that CUDA
version needs (``MIN_DRIVER``). With an older driver ``torch.cuda.is_available()`` is just False, and a worker left
to ``DEVICE=auto`` would quietly encode on the CPU at a fraction of the speed. So: where CUDA was asked for
(``DEVICE=cuda``, what the GPU image sets), or where a GPU is present but torch cannot use it, the worker refuses
to start with one line that says why (``CudaUnusable``), and is never ready. With no NVIDIA driver at all and
``DEVICE=auto``, the CPU is what was asked for.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

#: the oldest Linux driver each CUDA major version runs on (CUDA's release notes; 12.x and 11.x through its
#: minor-version compatibility; 13.0's own driver is 580)
MIN_DRIVER: dict[int, str] = {13: "580.65.06", 12: "525.60.13", 11: "450.80.02"}

_PROC_VERSION = Path("/proc/driver/nvidia/version")


class CudaUnusable(RuntimeError):
    """CUDA was asked for (or a GPU is there) but this process cannot use it; the message says why."""


@dataclass(frozen=True)
class CudaProbe:
    """What torch and the host say: ``torch_cuda`` is ``torch.version.cuda`` (None for a CPU build),
    ``driver_cuda`` the CUDA version the driver supports (``cudaDriverGetVersion``: 13000 is 13.0; 0 without a
    driver), ``driver`` the kernel module's version (``/proc/driver/nvidia/version``; None without one)."""

    torch_cuda: str | None
    driver_cuda: int
    driver: str | None
    available: bool
    device_count: int


def _driver_version(path: Path = _PROC_VERSION) -> str | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    # "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06  Sun Jul 27 ..."
    for word in text.split():
        parts = word.split(".")
        if len(parts) >= 2 and all(part.isdigit() for part in parts):
            return word
    return None


def probe() -> CudaProbe:
    """Ask torch and the kernel module. Calls only what reports a driver's state: creates no CUDA context."""
    import torch

    torch_cuda = torch.version.cuda
    driver_cuda = 0
    get_driver_version = getattr(torch._C, "_cuda_getDriverVersion", None)
    if torch_cuda is not None and get_driver_version is not None:
        try:
            driver_cuda = int(get_driver_version())
        except RuntimeError:
            driver_cuda = 0
    available = torch_cuda is not None and torch.cuda.is_available()
    return CudaProbe(
        torch_cuda=torch_cuda,
        driver_cuda=driver_cuda,
        driver=_driver_version(),
        available=available,
        device_count=torch.cuda.device_count() if available else 0,
    )


def _as_version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".") if part.isdigit())


def problem(device: str, found: CudaProbe) -> str | None:
    """Why this worker cannot run as configured (``device``: the ``DEVICE`` setting), or None."""
    gpu_present = found.driver is not None or found.driver_cuda > 0
    if device == "cpu" or (device == "auto" and not gpu_present):
        return None
    if found.torch_cuda is None:
        if device == "cuda":
            return "DEVICE=cuda but this torch is a CPU build (use the GPU image, or DEVICE=cpu)"
        return None  # auto with a CPU torch: the CPU image on a GPU host runs on the CPU, as built
    major = int(found.torch_cuda.split(".")[0])
    needed = MIN_DRIVER.get(major)
    driver = found.driver or "unknown"
    driver_cuda = f"{found.driver_cuda // 1000}.{found.driver_cuda % 1000 // 10}" if found.driver_cuda else None
    too_old = (needed is not None and found.driver is not None and _as_version(found.driver) < _as_version(needed)) or (
        driver_cuda is not None and _as_version(driver_cuda)[:1] < (major,)
    )
    if too_old:
        return (
            f"torch {found.torch_cuda} (CUDA {found.torch_cuda}) needs an NVIDIA driver >= {needed or '?'}; this "
            f"host's driver is {driver} (CUDA {driver_cuda or '?'}): upgrade the driver, or build the image with "
            "TORCH_INDEX_URL for an older CUDA"
        )
    if not found.available or found.device_count == 0:
        if not gpu_present:
            return (
                f"DEVICE={device} but no NVIDIA driver or GPU is visible in this container (give it a GPU: "
                "compose's device reservation, --gpus, or nvidia.com/gpu in Kubernetes)"
            )
        return (
            f"DEVICE={device}: NVIDIA driver {driver} is present but torch (CUDA {found.torch_cuda}) sees no usable "
            "GPU (check CUDA_VISIBLE_DEVICES and the container's device access)"
        )
    return None


def require_usable_cuda(device: str, found: CudaProbe | None = None) -> None:
    """Raise ``CudaUnusable`` where ``problem`` finds one; the caller logs it and exits, so the worker never
    becomes ready (and never falls back to the CPU in silence)."""
    if device == "cpu":
        return
    if found is None and device == "auto" and _driver_version() is None:
        return  # no NVIDIA driver: the CPU, as asked, and torch need not be imported to say so
    reason = problem(device, found if found is not None else probe())
    if reason is not None:
        raise CudaUnusable(reason)


def main() -> int:
    """``python -m worker.cuda_driver``: whether this container can run the worker on CUDA (``DEVICE``, default
    cuda here); exit status 2 with the reason if not."""
    import os

    device = os.environ.get("DEVICE", "cuda")
    found = probe()
    print(
        f"torch CUDA {found.torch_cuda or 'none (CPU build)'}; driver {found.driver or 'none'} "
        f"(CUDA {found.driver_cuda // 1000}.{found.driver_cuda % 1000 // 10}); GPUs usable: {found.device_count}"
    )
    reason = problem(device, found) if device != "cpu" else None
    if reason is not None:
        print(f"CUDA unusable: {reason}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
