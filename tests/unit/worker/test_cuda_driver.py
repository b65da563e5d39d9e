"""worker.cuda_driver: the start-up check that stops a worker whose CUDA cannot run, with torch's and the driver's
answers faked."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker import cuda_driver
from worker.cuda_driver import CudaProbe, CudaUnusable, problem, require_usable_cuda

GOOD = CudaProbe(torch_cuda="13.0", driver_cuda=13000, driver="580.65.06", available=True, device_count=2)
OLD_DRIVER = CudaProbe(torch_cuda="13.0", driver_cuda=12080, driver="570.133.20", available=False, device_count=0)
NO_GPU = CudaProbe(torch_cuda="13.0", driver_cuda=0, driver=None, available=False, device_count=0)
CPU_TORCH = CudaProbe(torch_cuda=None, driver_cuda=0, driver=None, available=False, device_count=0)


def test_a_new_enough_driver_with_a_device_passes():
    assert problem("cuda", GOOD) is None
    assert problem("auto", GOOD) is None
    require_usable_cuda("cuda", GOOD)


@pytest.mark.parametrize("device", ["cuda", "auto"])
def test_a_driver_too_old_for_torchs_cuda_is_one_clear_line_never_a_cpu_fallback(device):
    with pytest.raises(CudaUnusable) as raised:
        require_usable_cuda(device, OLD_DRIVER)
    message = str(raised.value)
    assert "\n" not in message
    assert "needs an NVIDIA driver >= 580.65.06" in message and "570.133.20" in message
    assert "TORCH_INDEX_URL" in message


def test_the_driver_cuda_version_alone_tells_a_driver_too_old():
    # no /proc/driver/nvidia/version (some runtimes hide it): cudaDriverGetVersion's 12.8 is below CUDA 13
    found = CudaProbe(torch_cuda="13.0", driver_cuda=12080, driver=None, available=False, device_count=0)
    assert "needs an NVIDIA driver >= 580" in (problem("cuda", found) or "")


def test_a_cuda_12_build_runs_on_a_525_driver():
    found = CudaProbe(torch_cuda="12.8", driver_cuda=12020, driver="535.54.03", available=True, device_count=1)
    assert problem("cuda", found) is None
    older = CudaProbe(torch_cuda="12.8", driver_cuda=11080, driver="520.61.05", available=False, device_count=0)
    assert ">= 525.60.13" in (problem("cuda", older) or "")


def test_cuda_asked_for_without_a_gpu_fails():
    reason = problem("cuda", NO_GPU)
    assert reason is not None and "no NVIDIA driver or GPU is visible" in reason


def test_a_driver_whose_gpu_torch_cannot_use_fails():
    found = CudaProbe(torch_cuda="13.0", driver_cuda=13000, driver="580.65.06", available=False, device_count=0)
    for device in ("cuda", "auto"):
        assert "sees no usable GPU" in (problem(device, found) or "")


def test_auto_without_any_nvidia_driver_is_the_cpu_as_asked():
    assert problem("auto", NO_GPU) is None
    assert problem("auto", CPU_TORCH) is None


def test_cuda_with_a_cpu_build_of_torch_fails():
    assert "CPU build" in (problem("cuda", CPU_TORCH) or "")
    found = CudaProbe(torch_cuda=None, driver_cuda=0, driver="580.65.06", available=False, device_count=0)
    assert problem("auto", found) is None  # the CPU image on a GPU host: runs on the CPU, as built


def test_device_cpu_is_never_checked(monkeypatch):
    monkeypatch.setattr(cuda_driver, "probe", lambda: pytest.fail("probed"))
    require_usable_cuda("cpu")


def test_the_driver_version_is_read_from_the_kernel_module(tmp_path: Path):
    version = tmp_path / "version"
    version.write_text(
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06  Sun Jul 27 06:54:38 UTC 2025\n"
        "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n"
    )
    assert cuda_driver._driver_version(version) == "580.65.06"
    assert cuda_driver._driver_version(tmp_path / "missing") is None


def test_the_real_probe_answers_on_this_machine():
    found = cuda_driver.probe()
    # whatever torch this is: a CPU build reports no CUDA; a CUDA build without a GPU reports none available
    assert found.available == (found.device_count > 0)
    if not found.available:
        assert problem("auto", found) is None or found.driver is not None
