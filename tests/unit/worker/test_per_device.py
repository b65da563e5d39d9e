"""worker.per_device: one worker process per GPU, pinned by CUDA_VISIBLE_DEVICES, restarted when it dies, with
the device list and the processes faked."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from worker import per_device
from worker.per_device import CONFIG_ERROR, Supervisor, devices, worker_environment


class FakeProcess:
    next_pid = 100

    def __init__(self, command: Sequence[str], env: dict[str, str]) -> None:
        FakeProcess.next_pid += 1
        self.pid = FakeProcess.next_pid
        self.command = list(command)
        self.env = env
        self.status: int | None = None
        self.signals: list[int] = []

    def poll(self) -> int | None:
        return self.status

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def supervisor(device_list: list[str], tmp_path: Path, **environ: str) -> tuple[Supervisor, list[FakeProcess], Clock]:
    spawned: list[FakeProcess] = []

    def spawn(command: Sequence[str], env: dict[str, str]) -> FakeProcess:
        process = FakeProcess(command, env)
        spawned.append(process)
        return process

    clock = Clock()
    env = {"READY_FILE": str(tmp_path / "ready"), "WORKER_METRICS_PORT": "9100", "PATH": "/bin", **environ}
    return Supervisor(device_list, env, spawn, clock=clock), spawned, clock


def test_every_gpu_nvml_counts_gets_a_worker():
    assert devices({}, lambda: 4) == ["0", "1", "2", "3"]
    assert devices({}, lambda: 0) == []


def test_cuda_visible_devices_narrows_the_list_and_keeps_uuids():
    assert devices({"CUDA_VISIBLE_DEVICES": "2, 3"}, lambda: 8) == ["2", "3"]
    assert devices({"CUDA_VISIBLE_DEVICES": "GPU-1a2b,GPU-3c4d"}, lambda: 8) == ["GPU-1a2b", "GPU-3c4d"]
    assert devices({"CUDA_VISIBLE_DEVICES": ""}, lambda: 8) == []
    assert devices({"CUDA_VISIBLE_DEVICES": "1,-1,2"}, lambda: 8) == ["1"]  # CUDA stops at an invalid entry


def test_nvml_without_a_driver_counts_none():
    assert per_device.nvml_device_count() == 0  # no libnvidia-ml on this machine


def test_each_worker_is_pinned_to_its_gpu_with_its_own_ready_file_and_port(tmp_path):
    sup, spawned, _ = supervisor(["0", "1", "2"], tmp_path)
    assert sup.step() is None
    assert [p.env["CUDA_VISIBLE_DEVICES"] for p in spawned] == ["0", "1", "2"]
    assert [p.env["READY_FILE"] for p in spawned] == [str(tmp_path / f"ready.{i}") for i in range(3)]
    assert [p.env["WORKER_METRICS_PORT"] for p in spawned] == ["9100", "9101", "9102"]
    assert all(p.command[-2:] == ["-m", "worker"] for p in spawned)
    assert worker_environment({"WORKER_METRICS_PORT": "0"}, "5", 1) == {
        "WORKER_METRICS_PORT": "0",
        "CUDA_VISIBLE_DEVICES": "5",
    }


def test_the_container_is_ready_while_every_worker_is(tmp_path):
    sup, spawned, clock = supervisor(["0", "1"], tmp_path)
    ready = tmp_path / "ready"
    sup.step()
    Path(spawned[0].env["READY_FILE"]).write_text("m\n")
    sup.step()
    assert not ready.exists()
    Path(spawned[1].env["READY_FILE"]).write_text("m\n")
    sup.step()
    assert ready.read_text() == "GPU 0, GPU 1\n"
    spawned[1].status = -9  # killed: not ready until it is back and has loaded its models
    sup.step()
    assert not ready.exists()
    # SIGKILL left no chance to remove its ready file: the launcher does, so its successor is not ready at once
    assert not Path(spawned[1].env["READY_FILE"]).exists()
    Path(spawned[1].env["READY_FILE"]).write_text("stale\n")
    for _ in range(10):
        sup.step()
        clock.now += 1
    assert len(spawned) == 3 and not ready.exists()
    Path(spawned[2].env["READY_FILE"]).write_text("m\n")
    sup.step()
    assert ready.exists()


def test_a_dead_worker_starts_again_with_a_growing_pause(tmp_path):
    sup, spawned, clock = supervisor(["0", "1"], tmp_path)
    sup.step()
    spawned[1].status = -9
    clock.now = 5.0
    sup.step()
    assert len(spawned) == 2  # waits MIN_BACKOFF_S... doubled, since it died young
    clock.now = 5.0 + per_device.MIN_BACKOFF_S * 2
    sup.step()
    assert len(spawned) == 3 and spawned[2].env["CUDA_VISIBLE_DEVICES"] == "1"
    spawned[2].status = 1
    clock.now += 1
    sup.step()
    clock.now += per_device.MIN_BACKOFF_S * 4 - 0.1
    sup.step()
    assert len(spawned) == 3
    clock.now += 0.2
    sup.step()
    assert len(spawned) == 4
    # one that ran a long time before dying comes back after the shortest pause
    clock.now += per_device.HEALTHY_RUN_S + 1
    spawned[3].status = -9
    sup.step()
    clock.now += per_device.MIN_BACKOFF_S
    sup.step()
    assert len(spawned) == 5


def test_a_worker_that_refuses_its_configuration_stops_the_container(tmp_path):
    sup, spawned, _ = supervisor(["0", "1"], tmp_path)
    sup.step()
    spawned[0].status = CONFIG_ERROR
    assert sup.step() is None
    assert spawned[1].signals == [per_device.signal.SIGTERM]
    spawned[1].status = 0
    assert sup.step() == CONFIG_ERROR
    assert len(spawned) == 2


def test_sigterm_reaches_every_worker_and_the_launcher_waits_for_them(tmp_path):
    sup, spawned, _ = supervisor(["0", "1"], tmp_path)
    sup.step()
    for process in spawned:
        Path(process.env["READY_FILE"]).write_text("m\n")
    sup.step()
    sup.stop()
    assert [p.signals for p in spawned] == [[per_device.signal.SIGTERM]] * 2
    spawned[0].status = 0
    assert sup.step() is None
    assert not (tmp_path / "ready").exists()  # leaving: no longer ready
    spawned[1].status = 0
    assert sup.step() == 0
    assert len(spawned) == 2  # nothing restarted while stopping


def test_no_gpu_runs_one_plain_worker(monkeypatch):
    calls = []
    monkeypatch.setattr(per_device, "nvml_device_count", lambda: 0)
    monkeypatch.setattr(per_device.os, "execv", lambda path, args: calls.append(args) or pytest.fail("exec"))
    with pytest.raises(pytest.fail.Exception):
        per_device.main({"PATH": "/bin"})
    assert calls and calls[0][1:] == ["-m", "worker"]
