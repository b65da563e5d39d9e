"""Copies between host and device for a batch, the one place the encoders touch CUDA's copy machinery.

On a GPU (``CudaCopies``) a batch's inputs go through pinned host memory (torch's caching host allocator keeps the
pinned blocks for reuse, so they are buffers, not fresh pinnings) and are copied ``non_blocking`` on a stream of
their own, so the thread preparing batch N+1 never waits for the forward pass of batch N; the forward waits for
the copy with an event, on the device, not on the host. The output comes back ``non_blocking`` into pinned memory,
and one synchronize, the one a batch needs before its vectors are read, ends the batch.

On the CPU (``HostCopies``) nothing is copied or pinned: the arrays become tensors in place, as before.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch


class Copies(Protocol):
    def to_device(self, arrays: dict[str, np.ndarray]) -> tuple[dict[str, torch.Tensor], Any]:
        """The arrays as tensors on the device, and what ``wait`` needs to know the copy is done."""
        ...

    def wait(self, tensors: dict[str, torch.Tensor], ready: Any) -> None:
        """Make the forward pass (on the calling thread's stream) wait for ``to_device``'s copy."""
        ...

    def to_host(self, tensor: torch.Tensor) -> np.ndarray: ...


class HostCopies:
    def __init__(self, device: torch.device) -> None:
        self._device = device

    def to_device(self, arrays: dict[str, np.ndarray]) -> tuple[dict[str, torch.Tensor], Any]:
        return {key: torch.from_numpy(array).to(self._device) for key, array in arrays.items()}, None

    def wait(self, tensors: dict[str, torch.Tensor], ready: Any) -> None:
        pass

    def to_host(self, tensor: torch.Tensor) -> np.ndarray:
        array: np.ndarray = tensor.cpu().numpy()
        return array


def pinned(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array).pin_memory()


def pinned_empty(shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, pin_memory=True)


class CudaCopies:
    def __init__(self, device: torch.device) -> None:
        self._device = device
        self._stream = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]

    def to_device(self, arrays: dict[str, np.ndarray]) -> tuple[dict[str, torch.Tensor], Any]:
        host = {key: pinned(array) for key, array in arrays.items()}
        with torch.cuda.stream(self._stream):
            tensors = {key: tensor.to(self._device, non_blocking=True) for key, tensor in host.items()}
            ready = torch.cuda.Event()  # type: ignore[no-untyped-call]
            ready.record(self._stream)
        # the pinned sources must outlive the copy: they travel with the event
        return tensors, (ready, host)

    def wait(self, tensors: dict[str, torch.Tensor], ready: Any) -> None:
        event, _host = ready
        stream = torch.cuda.current_stream(self._device)
        stream.wait_event(event)
        for tensor in tensors.values():
            tensor.record_stream(stream)  # made on the copy stream, used on this one: not freed before it is done

    def to_host(self, tensor: torch.Tensor) -> np.ndarray:
        host = pinned_empty(tensor.shape, tensor.dtype)
        host.copy_(tensor, non_blocking=True)
        torch.cuda.current_stream(self._device).synchronize()
        array: np.ndarray = host.numpy()
        return array


def copies_for(device: torch.device) -> Copies:
    return CudaCopies(device) if device.type == "cuda" else HostCopies(device)
