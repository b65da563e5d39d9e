"""Which failures to load a model are the client's (404) and which may pass (503); fault injection turns on for any
FAULT_* that is set, zero included."""

import huggingface_hub.constants
import huggingface_hub.errors as hub_errors
import pytest

from shared.errors import ErrorKind
from shared.settings import Settings
from tests.fakes import FakeEncoder
from worker.models.faults import FaultInjectingEncoder, with_faults
from worker.models.source import classify_load_failure


@pytest.mark.parametrize(
    ("failure", "kind"),
    [
        (hub_errors.HFValidationError("not a repo id"), ErrorKind.MODEL_NOT_FOUND),
        (FileNotFoundError("config.json"), ErrorKind.MODEL_NOT_FOUND),
        (ConnectionError("the hub is unreachable"), ErrorKind.MODEL_UNAVAILABLE),
        (TimeoutError("read timed out"), ErrorKind.MODEL_UNAVAILABLE),
        (RuntimeError("CUDA error: out of memory"), ErrorKind.MODEL_UNAVAILABLE),
    ],
)
def test_load_failures_are_classified(failure, kind):
    assert classify_load_failure(failure) is kind


def test_a_cause_deep_in_the_chain_counts():
    try:
        try:
            raise hub_errors.HFValidationError("not a repo id")
        except hub_errors.HFValidationError as inner:
            raise OSError("could not load") from inner
    except OSError as outer:
        assert classify_load_failure(outer) is ErrorKind.MODEL_NOT_FOUND


@pytest.mark.parametrize(("offline", "kind"), [(False, ErrorKind.MODEL_UNAVAILABLE), (True, ErrorKind.MODEL_NOT_FOUND)])
def test_a_hub_out_of_reach_is_unavailable_unless_offline(monkeypatch, offline, kind):
    # how huggingface_hub reports a refused connection: a LocalEntryNotFoundError, which is a FileNotFoundError
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)
    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except ConnectionRefusedError as refused:
            raise hub_errors.LocalEntryNotFoundError("cannot find the requested files") from refused
    except hub_errors.LocalEntryNotFoundError as failure:
        try:
            raise OSError("We couldn't connect to the hub") from failure
        except OSError as outer:
            assert classify_load_failure(outer) is kind


@pytest.mark.parametrize("setting", ["fault_poison_token", "fault_crash_token", "fault_sticky_token"])
def test_a_fault_on_token_zero_is_on(setting):
    encoder = FakeEncoder()
    assert isinstance(with_faults(encoder, Settings(_env_file=None, **{setting: 0})), FaultInjectingEncoder)


def test_no_fault_set_leaves_the_encoder_alone():
    encoder = FakeEncoder()
    assert with_faults(encoder, Settings(_env_file=None)) is encoder
