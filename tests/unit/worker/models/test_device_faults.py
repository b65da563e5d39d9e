"""Which device errors are sticky (the CUDA context is lost) and what a worker does on one: leave readiness and exit
with its own status, at once, from a batch or from a load; every other error is the batch's, passed on."""

import logging

import numpy as np
import pytest
import torch

from shared.settings import Settings
from tests.fakes import FakeEncoder
from worker.models import device_faults, source
from worker.models.device_faults import (
    STICKY_DEVICE_FAULT_EXIT,
    DeviceFaultGuard,
    StagedDeviceFaultGuard,
    guard_device_faults,
    is_sticky,
)
from worker.models.faults import INJECTED_STICKY_ERROR, FaultInjectingEncoder, with_faults

STICKY_TOKEN = 30002


def cuda_error(message: str) -> str:
    """A CUDA error as torch words it."""
    return f"CUDA error: {message}\nCUDA kernel errors might be asynchronously reported at some other API call"


@pytest.mark.parametrize(
    "message",
    [
        "an illegal memory access was encountered",
        "device-side assert triggered",
        "unspecified launch failure",
        "uncorrectable ECC error encountered",
        "misaligned address",
        "an illegal instruction was encountered",
        "the launch timed out and was terminated",
        "unknown error",
    ],
)
def test_cudas_sticky_errors_are_sticky_as_torch_raises_them_now_and_did_before(message):
    assert is_sticky(torch.AcceleratorError(cuda_error(message)))
    assert is_sticky(RuntimeError(cuda_error(message)))  # torch before 2.8


@pytest.mark.parametrize(
    "error",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        torch.AcceleratorError(cuda_error("out of memory")),
        torch.AcceleratorError(cuda_error("invalid argument")),
        torch.AcceleratorError(cuda_error("too many resources requested for launch")),
        RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasGemmEx( handle, ...)`"),
        RuntimeError("injected poisonous input"),
        ValueError("an illegal memory access was encountered"),  # not an error torch raises
    ],
)
def test_errors_of_a_batch_or_of_memory_are_not_sticky(error):
    assert not is_sticky(error)


def test_a_sticky_error_counts_anywhere_in_the_chain():
    try:
        try:
            raise torch.AcceleratorError(cuda_error("an illegal memory access was encountered"))
        except torch.AcceleratorError as inner:
            raise RuntimeError("the forward pass failed") from inner
    except RuntimeError as outer:
        assert is_sticky(outer)


def test_a_sticky_code_counts_whatever_the_message():
    error = torch.AcceleratorError("CUDA error")
    error.error_code = 700  # cudaErrorIllegalAddress
    assert is_sticky(error)
    error.error_code = 2  # cudaErrorMemoryAllocation
    assert not is_sticky(error)


class Exited(Exception):
    pass


@pytest.fixture
def exits(monkeypatch) -> list[int]:
    """os._exit as the guard calls it, stopping the test instead of the process."""
    statuses: list[int] = []

    def fake_exit(status: int) -> None:
        statuses.append(status)
        raise Exited

    monkeypatch.setattr(device_faults.os, "_exit", fake_exit)
    return statuses


class FailingEncoder(FakeEncoder):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def encode(self, batch, prompt_length=0):
        raise self.error


def test_a_sticky_error_in_a_batch_leaves_readiness_and_exits(tmp_path, exits, caplog):
    ready = tmp_path / "ready"
    ready.write_text("model\n")
    error = torch.AcceleratorError(INJECTED_STICKY_ERROR)
    guarded = guard_device_faults(FailingEncoder(error), Settings(_env_file=None, ready_file=ready))
    with caplog.at_level(logging.CRITICAL, logger="worker.models.device_faults"), pytest.raises(Exited):
        guarded.encode([[1, 2]])
    assert exits == [STICKY_DEVICE_FAULT_EXIT]
    assert not ready.exists()
    assert "sticky device error" in caplog.text


def test_any_other_error_is_the_batchs_and_the_worker_stays(tmp_path, exits):
    ready = tmp_path / "ready"
    ready.write_text("model\n")
    for error in (torch.OutOfMemoryError("CUDA out of memory"), RuntimeError("injected poisonous input")):
        guarded = guard_device_faults(FailingEncoder(error), Settings(_env_file=None, ready_file=ready))
        with pytest.raises(type(error)):
            guarded.encode([[1, 2]])
    assert exits == [] and ready.exists()


class StagedEncoder(FakeEncoder):
    """An encoder whose class splits encode in two, as the real one does (``worker.batcher.Stages``)."""

    def __init__(self, error: Exception | None = None) -> None:
        super().__init__()
        self.error = error

    def collate(self, batch, prompt_length=0):
        return batch, prompt_length

    def run(self, collated):
        if self.error is not None:
            raise self.error
        return super().encode(*collated)


def test_the_guard_keeps_a_staged_encoder_staged_and_guards_each_stage(exits):
    settings = Settings(_env_file=None)
    assert type(guard_device_faults(FakeEncoder(), settings)) is DeviceFaultGuard
    healthy = guard_device_faults(StagedEncoder(), settings)
    assert type(healthy) is StagedDeviceFaultGuard
    assert isinstance(healthy.run(healthy.collate([[1, 2]], 0)), np.ndarray)
    failing = guard_device_faults(StagedEncoder(torch.AcceleratorError(INJECTED_STICKY_ERROR)), settings)
    with pytest.raises(Exited):
        failing.run(failing.collate([[1, 2]], 0))
    assert exits == [STICKY_DEVICE_FAULT_EXIT]
    # a fault-injecting wrapper has encode only: the batcher must go through it, so it is not staged
    faulty = guard_device_faults(with_faults(StagedEncoder(), Settings(_env_file=None, fault_sticky_token=5)), settings)
    assert type(faulty) is DeviceFaultGuard


def test_the_injected_sticky_fault_is_what_torch_raises_and_is_sticky():
    encoder = with_faults(FakeEncoder(), Settings(_env_file=None, fault_sticky_token=STICKY_TOKEN))
    assert isinstance(encoder, FaultInjectingEncoder)
    encoder.encode([[101, 102]])
    with pytest.raises(torch.AcceleratorError) as raised:
        encoder.encode([[101, STICKY_TOKEN, 102]])
    assert is_sticky(raised.value)


def test_a_sticky_error_while_a_model_loads_exits_too(tmp_path, monkeypatch, exits):
    ready = tmp_path / "ready"
    ready.write_text("model\n")

    def lost_device(*args, **kwargs):
        raise torch.AcceleratorError(INJECTED_STICKY_ERROR)

    monkeypatch.setattr(source, "place", lost_device)
    settings = Settings(_env_file=None, ready_file=ready, device="cpu")
    with pytest.raises(Exited):
        source.load_model("sentence-transformers/all-MiniLM-L6-v2", settings)
    assert exits == [STICKY_DEVICE_FAULT_EXIT] and not ready.exists()
