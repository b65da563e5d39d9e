"""Start and stop the real processes: redis-server, workers and the API, all on 127.0.0.1.

Used by the integration tests and the benchmarks. Every process is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


#: ports handed out by this process: a port closed after the probe can come back from the OS at once, and two
#: servers of one stack (Redis and the API, picked before either starts) must not be given the same one
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def wait_for_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def stop(process: subprocess.Popen[bytes], timeout_s: float = 15) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def spawn(args: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _redis_server() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
    return binary


#: how the compose file and ``make run`` persist Redis: an append-only file written every second
PERSISTENT = ["--appendonly", "yes", "--appendfsync", "everysec"]
#: how they bound it: a cap, and never deleting keys to stay under it
MEMORY_BOUND = ["--maxmemory-policy", "noeviction"]


def start_redis(
    port: int,
    log_dir: Path,
    password: str | None = None,
    *,
    replica_of: int | None = None,
    persistent: bool = False,
    extra_args: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """A Redis on 127.0.0.1:``port``, persistent as deployed or not at all; with ``replica_of``, a replica of the one
    on that port; ``extra_args``: more settings (``--maxmemory 64mb``, ...)."""
    args = [_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    args += [*PERSISTENT, "--appenddirname", f"aof-{port}"] if persistent else ["--appendonly", "no"]
    # its own files, in the log folder: a replica writes the primary's data to disk, and a Redis started later in
    # the same folder would load it
    args += ["--daemonize", "no", "--dir", str(log_dir), "--dbfilename", f"redis-{port}.rdb"]
    if password is not None:
        args += ["--requirepass", password]
    if replica_of is not None:
        args += ["--replicaof", "127.0.0.1", str(replica_of)]
    args += extra_args
    process = spawn(args, log_dir / f"redis-{port}.log")
    wait_for_port(port, 10)
    return process


def start_sentinel(port: int, primary_port: int, log_dir: Path, master: str = "mymaster") -> subprocess.Popen[bytes]:
    """A Redis Sentinel on 127.0.0.1:``port`` watching the primary on ``primary_port``; quorum 2, fast failover."""
    config = log_dir / f"sentinel-{port}.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndaemonize no\ndir {log_dir}\n"
        f"sentinel monitor {master} 127.0.0.1 {primary_port} 2\n"
        f"sentinel down-after-milliseconds {master} 1000\n"
        f"sentinel failover-timeout {master} 5000\n"
        f"sentinel parallel-syncs {master} 1\n"
    )
    process = spawn([_redis_server(), str(config), "--sentinel"], log_dir / f"sentinel-{port}.log")
    wait_for_port(port, 10)
    return process


def sentinel_primary_port(sentinel_port: int, master: str = "mymaster") -> int | None:
    """The port of the primary the sentinel on ``sentinel_port`` names, if it answers."""
    import redis

    client = redis.Redis(port=sentinel_port, socket_timeout=1)
    try:
        address = client.sentinel_get_master_addr_by_name(master)
        return int(address[1]) if address else None
    except redis.RedisError:
        return None
    finally:
        client.close()


def sentinels_ready(replica_port: int, sentinel_port: int, master: str = "mymaster") -> bool:
    """The replica has synced and the sentinels know it and each other: a failover can happen."""
    import redis

    replica = redis.Redis(port=replica_port, socket_timeout=1)
    sentinel = redis.Redis(port=sentinel_port, socket_timeout=1)
    try:
        synced = replica.info("replication").get("master_link_status") == "up"
        state = sentinel.sentinel_master(master)
        return synced and state["num-slaves"] >= 1 and state["num-other-sentinels"] == 2
    except redis.RedisError:
        return False
    finally:
        replica.close()
        sentinel.close()


def python_env(redis_url: str, **extra: str) -> dict[str, str]:
    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    env.update(extra)
    return env


def start_worker(redis_url: str, log_path: Path, **env: str) -> subprocess.Popen[bytes]:
    return spawn([sys.executable, "-m", "worker"], log_path, python_env(redis_url, **env))


def start_api(redis_url: str, port: int, log_path: Path, **env: str) -> subprocess.Popen[bytes]:
    """The API as deployed (``python -m api``: ``API_WORKERS`` processes under uvicorn's supervisor, whose PID this
    is)."""
    args = ["-m", "api", "--host", "127.0.0.1", "--port", str(port)]
    return spawn([sys.executable, *args], log_path, python_env(redis_url, **env))


def wait_ready(base_url: str, processes: list[subprocess.Popen[bytes]], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args} exited with {process.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(base_url + "/readyz", timeout=1) as response:
            if response.status == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{base_url} did not become ready")


def served_card(base_url: str, model: str) -> dict[str, object]:
    """What ``GET /v1/models`` says of ``model``."""
    with urllib.request.urlopen(base_url + "/v1/models", timeout=30) as response:
        cards = json.load(response)["data"]
    card: dict[str, object] = next(card for card in cards if card["id"] == model)
    return card


class Stack:
    """Redis, workers and the API as separate processes, with the controls failure tests need."""

    def __init__(
        self,
        log_dir: Path,
        env: dict[str, str],
        redis_password: str | None = None,
        redis_args: Sequence[str] = (),
    ) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir = log_dir
        self.env = env
        self.redis_port = free_port()
        self.api_port = free_port()
        self.redis_password = redis_password
        self.redis_args = redis_args
        auth = f":{redis_password}@" if redis_password else ""
        self.redis_url = f"redis://{auth}127.0.0.1:{self.redis_port}/0"
        self.base_url = f"http://127.0.0.1:{self.api_port}"
        self.redis: subprocess.Popen[bytes] | None = None
        self.api: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []

    def start_redis(self, *, persistent: bool = False) -> None:
        self.redis = start_redis(
            self.redis_port, self.log_dir, self.redis_password, persistent=persistent, extra_args=self.redis_args
        )

    def stop_redis(self) -> None:
        if self.redis is not None:
            stop(self.redis)

    def start_worker(self) -> subprocess.Popen[bytes]:
        worker = start_worker(self.redis_url, self.log_dir / f"worker-{len(self.workers)}.log", **self.env)
        self.workers.append(worker)
        return worker

    def start_api(self) -> None:
        self.api = start_api(self.redis_url, self.api_port, self.log_dir / "api.log", **self.env)

    def wait_ready(self, timeout_s: float = 120) -> None:
        alive = [p for p in (self.redis, self.api) if p is not None]
        wait_ready(self.base_url, alive, timeout_s)

    def stop_all(self) -> None:
        for process in [self.api, *self.workers, self.redis]:
            if process is not None:
                stop(process)


@contextlib.contextmanager
def running_stack(
    log_dir: Path,
    *,
    workers: int = 1,
    redis_password: str | None = None,
    redis_args: Sequence[str] = (),
    ready: bool = True,
    **env: str,
) -> Iterator[Stack]:
    """Redis, ``workers`` workers and the API, ready to serve (with ``ready=False``: only listening, for a stack
    that refuses to be ready); everything stopped on exit."""
    stack = Stack(log_dir, env, redis_password, redis_args)
    try:
        stack.start_redis()
        for _ in range(workers):
            stack.start_worker()
        stack.start_api()
        if ready:
            stack.wait_ready()
        else:
            wait_for_port(stack.api_port, 60)
        yield stack
    finally:
        stack.stop_all()
