"""``python -m worker.per_device``: one worker process per GPU this container was given, each pinned to its GPU.

The GPU image's entry point. Compose cannot give each replica of a service its own GPU (every replica of a
``count: 1`` reservation may get the same one: docker/compose#11863), so one container takes every GPU of the host
and this launcher runs one ``python -m worker`` per device with ``CUDA_VISIBLE_DEVICES`` set to that device: every
GPU is used, none is shared. In Kubernetes the device plugin gives each pod its own GPUs, and the same launcher
runs one worker per GPU of its pod.

- The devices: ``CUDA_VISIBLE_DEVICES`` if set (indexes or UUIDs), else the GPUs NVML counts. With none, the
  launcher becomes a single ``python -m worker`` (whose CUDA check says what is missing).
- Each worker gets its own ``READY_FILE`` (``<READY_FILE>.<n>``) and metrics port (``WORKER_METRICS_PORT + n``);
  the launcher writes ``READY_FILE`` while every worker is ready, so the container's health is all of them.
- A worker that dies is started again (after 1 s, doubling to 30 s while it keeps dying young). A worker that
  exits with status 2 refused its configuration (a CUDA driver too old, a precision the GPU lacks): restarting
  cannot help, so the launcher stops the others and exits 2, and the container's restart policy takes over.
- SIGTERM and SIGINT go to every worker; the launcher exits once they all have (each finishes its jobs within
  ``SHUTDOWN_GRACE_S``).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Protocol

log = logging.getLogger("worker.per_device")

#: a worker's exit status when it refuses its configuration (``worker.__main__``): not worth a restart
CONFIG_ERROR = 2
MIN_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
#: a worker that ran this long before dying starts again after the shortest pause
HEALTHY_RUN_S = 60.0


class Process(Protocol):
    pid: int

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...


Spawn = Callable[[Sequence[str], dict[str, str]], Process]


def nvml_device_count() -> int:
    """The GPUs the NVIDIA driver shows this container (NVML, from the driver's ``libnvidia-ml``); 0 without one."""
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return 0
    count = ctypes.c_uint(0)
    if nvml.nvmlInit_v2() != 0:
        return 0
    try:
        if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
            return 0
        return int(count.value)
    finally:
        nvml.nvmlShutdown()


def devices(environ: Mapping[str, str], count: Callable[[], int] | None = None) -> list[str]:
    """The devices to run a worker on each: ``CUDA_VISIBLE_DEVICES``' entries if it is set, else 0..count-1."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        listed = [entry.strip() for entry in visible.split(",") if entry.strip()]
        # CUDA stops at the first invalid entry; "-1" (or any negative index) hides every device after it
        valid = []
        for entry in listed:
            if entry.startswith("-"):
                break
            valid.append(entry)
        return valid
    return [str(index) for index in range((count or nvml_device_count)())]


def worker_environment(environ: Mapping[str, str], device: str, index: int) -> dict[str, str]:
    """The environment of the worker on ``device`` (the ``index``-th): pinned to it, with its own ready file and
    metrics port."""
    env = dict(environ)
    env["CUDA_VISIBLE_DEVICES"] = device
    if env.get("READY_FILE"):
        env["READY_FILE"] = f"{env['READY_FILE']}.{index}"
    port = int(env.get("WORKER_METRICS_PORT") or 0)
    if port:
        env["WORKER_METRICS_PORT"] = str(port + index)
    return env


@dataclass
class Slot:
    device: str
    env: dict[str, str]
    process: Process | None = None
    started_at: float = 0.0
    restart_at: float = 0.0
    backoff_s: float = MIN_BACKOFF_S


@dataclass
class Supervisor:
    """The workers of one container; ``step`` is one pass of the loop (start, reap, restart, readiness)."""

    device_list: list[str]
    environ: Mapping[str, str]
    spawn: Spawn
    clock: Callable[[], float] = time.monotonic
    command: Sequence[str] = (sys.executable, "-m", "worker")
    slots: list[Slot] = field(init=False)
    stopping: bool = False
    exit_status: int | None = None

    def __post_init__(self) -> None:
        self.slots = [
            Slot(device, worker_environment(self.environ, device, index))
            for index, device in enumerate(self.device_list)
        ]
        ready = self.environ.get("READY_FILE")
        self.ready_file = Path(ready) if ready else None

    def _forget_readiness(self, slot: Slot) -> None:
        """A worker killed (SIGKILL, OOM) could not remove its ready file: it must not count for its successor."""
        if slot.env.get("READY_FILE"):
            Path(slot.env["READY_FILE"]).unlink(missing_ok=True)

    def _start(self, slot: Slot) -> None:
        self._forget_readiness(slot)
        slot.process = self.spawn(self.command, slot.env)
        slot.started_at = self.clock()
        log.info("worker on GPU %s started (pid %d)", slot.device, slot.process.pid)

    def step(self) -> int | None:
        """Start what is due, reap what died; the launcher's exit status once it should exit, else None."""
        now = self.clock()
        for slot in self.slots:
            if slot.process is None:
                if not self.stopping and now >= slot.restart_at:
                    self._start(slot)
                continue
            status = slot.process.poll()
            if status is None:
                continue
            slot.process = None
            self._forget_readiness(slot)
            if self.stopping:
                continue
            if status == CONFIG_ERROR:
                log.error("worker on GPU %s refused its configuration (exit %d); stopping", slot.device, status)
                self.exit_status = CONFIG_ERROR
                self.stop()
                continue
            ran_s = now - slot.started_at
            slot.backoff_s = MIN_BACKOFF_S if ran_s >= HEALTHY_RUN_S else min(slot.backoff_s * 2, MAX_BACKOFF_S)
            slot.restart_at = now + slot.backoff_s
            log.warning(
                "worker on GPU %s exited with %d after %.0f s; starting it again in %.0f s",
                slot.device,
                status,
                ran_s,
                slot.backoff_s,
            )
        self._write_readiness()
        if self.stopping and all(slot.process is None for slot in self.slots):
            return self.exit_status if self.exit_status is not None else 0
        return None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Pass ``sig`` on to every running worker and exit once they are gone."""
        self.stopping = True
        for slot in self.slots:
            if slot.process is not None and slot.process.poll() is None:
                slot.process.send_signal(sig)

    def all_ready(self) -> bool:
        return all(
            slot.process is not None and Path(slot.env["READY_FILE"]).exists()
            for slot in self.slots
            if "READY_FILE" in slot.env
        )

    def _write_readiness(self) -> None:
        if self.ready_file is None:
            return
        if not self.stopping and self.slots and self.all_ready():
            if not self.ready_file.exists():
                self.ready_file.write_text(", ".join(f"GPU {slot.device}" for slot in self.slots) + "\n")
        else:
            self.ready_file.unlink(missing_ok=True)


def _popen(command: Sequence[str], env: dict[str, str]) -> Process:
    return subprocess.Popen(list(command), env=env)


def main(environ: Mapping[str, str] | None = None) -> int:
    environ = dict(os.environ) if environ is None else dict(environ)
    logging.basicConfig(
        level=environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    device_list = devices(environ)
    if not device_list:
        log.info("no GPU visible: running one worker")
        os.execv(sys.executable, [sys.executable, "-m", "worker"])
    log.info("one worker per GPU: %s", ", ".join(device_list))
    supervisor = Supervisor(device_list, environ, _popen)

    def on_signal(sig: int, _frame: FrameType | None) -> None:
        supervisor.stop(sig)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while True:
        status = supervisor.step()
        if status is not None:
            return status
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
