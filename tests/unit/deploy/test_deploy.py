"""What can be checked here of the Docker side: the compose file and Dockerfiles name the right things."""

import re

import yaml

from shared.settings import Settings
from tests.stack import MEMORY_BOUND, PERSISTENT, ROOT


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def dockerfile(name: str) -> str:
    return (ROOT / name).read_text()


def test_compose_services():
    services = compose()["services"]
    assert set(services) == {"redis", "proxy", "api", "worker", "worker-cpu"}
    assert "ports" not in services["api"]  # clients reach it through the proxy
    assert services["proxy"]["ports"] == ["${API_BIND:-127.0.0.1}:${API_PORT:-8000}:8080"]  # loopback by default
    template = services["proxy"]["volumes"][0].split(":")[0]
    assert (ROOT / template).exists() and services["proxy"]["environment"]["PROXY_UPSTREAM"] == "api:8000"
    command = " ".join(services["redis"]["command"])
    assert " ".join(PERSISTENT) in command and "redis-data:/data" in services["redis"]["volumes"]
    assert " ".join(PERSISTENT) in (ROOT / "scripts" / "run-local.sh").read_text().replace("\\\n", "")
    run_local = (ROOT / "scripts" / "run-local.sh").read_text()
    assert "--maxmemory" in services["redis"]["command"] and " ".join(MEMORY_BOUND) in command
    assert '--maxmemory "${REDIS_MAXMEMORY:-' in run_local and " ".join(MEMORY_BOUND) in run_local
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    assert "--requirepass" in services["redis"]["command"]
    for name in ("api", "worker"):
        assert services[name]["environment"]["REDIS_URL"] == "redis://:${REDIS_PASSWORD}@redis:6379/0"
        assert services[name]["env_file"][0]["path"] == ".env"


def test_the_gpu_worker_takes_every_gpu_and_runs_one_process_per_gpu():
    # compose gives every replica of a count: 1 reservation the same GPU (docker/compose#11863): one container
    # takes them all and worker.per_device runs one worker per GPU, pinned by CUDA_VISIBLE_DEVICES
    gpu = compose()["services"]["worker"]
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"] and device["count"] == "all"
    assert "replicas" not in gpu["deploy"]
    assert cmd(dockerfile("Dockerfile.worker")) == ["python", "-m", "worker.per_device"]


def test_cpu_workers_are_the_worker_with_a_cpu_share_instead_of_a_gpu():
    services = compose()["services"]
    cpu, gpu = services["worker-cpu"], services["worker"]
    assert cpu["profiles"] == ["cpu"]
    assert cpu["deploy"] == {
        "mode": "replicated",  # podman-compose reads replicas only with it
        "replicas": "${WORKER_REPLICAS:-1}",
        "resources": {"limits": {"cpus": "${WORKER_CPUS:-2}"}},
    }
    assert cpu["build"]["dockerfile"] == "Dockerfile.worker-cpu" and gpu["build"]["dockerfile"] == "Dockerfile.worker"
    own = ("profiles", "deploy", "image", "build")
    assert {k: v for k, v in cpu.items() if k not in own} == {k: v for k, v in gpu.items() if k not in own}


def test_workers_are_healthy_when_their_ready_file_is_there_and_write_only_their_volumes():
    services = compose()["services"]
    for name in ("worker", "worker-cpu"):
        service = services[name]
        assert service["healthcheck"]["test"] == ["CMD", "test", "-f", "/tmp/ready"]
        assert service["read_only"] is True and service["tmpfs"] == ["/tmp"] and service["restart"] == "unless-stopped"
    for name in ("Dockerfile.worker", "Dockerfile.worker-cpu"):
        assert "READY_FILE=/tmp/ready" in dockerfile(name)
    worker = (ROOT / "deploy" / "kubernetes" / "base" / "worker.yaml").read_text()
    assert 'command: ["test", "-f", "/tmp/ready"]' in worker and "value: /tmp/ready" in worker
    assert services["api"]["read_only"] is True


def test_redis_and_the_proxy_images_can_be_swapped_and_default_to_the_official_ones():
    services = compose()["services"]
    assert services["redis"]["image"] == "${REDIS_IMAGE:-redis:7.2-alpine}"
    assert services["proxy"]["image"] == "${PROXY_IMAGE:-nginx:1.27-alpine}"
    assert {services[name]["image"] for name in ("api", "worker", "worker-cpu")} == {
        "embeddings-api",
        "embeddings-worker",
        "embeddings-worker-cpu",
    }


def locked(name: str) -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", (ROOT / "deploy" / name).read_text(), re.M)
    return {package.lower(): version for package, version in pins}


def test_api_image_has_no_torch():
    text = dockerfile("Dockerfile.api")
    assert not re.search(r"pip install[^\n]*torch", text)
    assert "'torch' not in sys.modules" in text  # the build itself checks the import
    assert "pip install --no-deps -r deploy/api.lock" in text and '--no-deps ".[api]"' in text
    assert not {"torch", "onnxruntime", "openvino", "tiktoken"} & set(locked("api.lock"))


def test_the_gpu_image_has_one_cuda_stack_pypis_torch_and_its_cuda_wheels():
    text = dockerfile("Dockerfile.worker")
    assert not re.search(r"^(FROM|ARG)\b.*nvidia/cuda", text, re.M)  # a CUDA base would be a second stack
    assert re.search(r"^ARG PYTHON_IMAGE=python:3.11-slim$", text, re.M)
    assert "pip install --no-deps -r deploy/worker.lock" in text and '--no-deps ".[worker]"' in text
    assert re.search(r"^ARG TORCH_INDEX_URL=$", text, re.M) and re.search(r"^ARG TORCH_VERSION=2.13.0$", text, re.M)
    pins = locked("worker.lock")
    assert pins["torch"] == "2.13.0"
    assert pins["nvidia-cudnn-cu13"] and not any(name.endswith("-cu12") for name in pins)  # CUDA 13 only
    assert "DEVICE=cuda" in text  # a GPU image never falls back to the CPU in silence (worker.cuda_driver)


def test_the_cpu_image_has_torchs_cpu_build_the_cpu_runtimes_and_no_cuda():
    text = dockerfile("Dockerfile.worker-cpu")
    assert re.search(r"^ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu$", text, re.M)
    assert '"torch==${TORCH_VERSION}+cpu"' in text and "DEVICE=cpu" in text
    assert "grep -v -E '^(torch|triton|nvidia-[a-z0-9-]+|cuda-[a-z-]+)=='" in text
    pins = locked("worker.lock")
    assert {"onnxruntime", "openvino"} <= set(pins)
    assert cmd(text) == ["python", "-m", "worker"]


def test_the_locks_are_compiled_for_the_python_the_images_run():
    makefile = (ROOT / "Makefile").read_text()
    assert "IMAGE_PYTHON := 3.11" in makefile and makefile.count("--python-version $(IMAGE_PYTHON)") == 2
    for lock in ("api.lock", "worker.lock"):
        assert "--python-version 3.11 " in (ROOT / "deploy" / lock).read_text().splitlines()[1]
    for name in ("Dockerfile.api", "Dockerfile.worker", "Dockerfile.worker-cpu"):
        assert "ARG PYTHON_IMAGE=python:3.11-slim" in dockerfile(name)


def test_the_locks_hold_the_projects_pins():
    pyproject = (ROOT / "pyproject.toml").read_text()
    for lock in ("api.lock", "worker.lock"):
        pins = locked(lock)
        assert pins["arq"] == "0.28.0" and '"arq==0.28.0"' in pyproject
        assert {"redis", "msgpack", "orjson", "pydantic"} <= set(pins)


def cmd(text: str) -> list[str]:
    match = re.search(r"^CMD (\[.*\])$", text, re.M)
    assert match
    return yaml.safe_load(match.group(1))


def test_images_run_the_same_entry_points_as_the_local_stack():
    assert cmd(dockerfile("Dockerfile.worker-cpu")) == ["python", "-m", "worker"]
    assert cmd(dockerfile("Dockerfile.worker")) == ["python", "-m", "worker.per_device"]  # which runs -m worker
    api = cmd(dockerfile("Dockerfile.api"))
    assert api[:3] == ["python", "-m", "api"]
    run_script = (ROOT / "scripts" / "run-local.sh").read_text()
    assert "-m worker" in run_script and "-m api " in run_script


def opentelemetry_variables() -> set[str]:
    """The variables OpenTelemetry's API and SDK read (``shared.tracing`` leaves them to it)."""
    import opentelemetry.environment_variables as api
    import opentelemetry.sdk.environment_variables as sdk

    return {value for module in (api, sdk) for name, value in vars(module).items() if name.startswith("OTEL_")}


def test_env_example_names_only_real_settings():
    names = set(Settings.model_fields)
    otel = opentelemetry_variables()
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = re.match(r"#?\s*([A-Z_]+)=", line)
        if match and match.group(1) in otel:
            continue
        # compose's own variables, and huggingface_hub's
        if match and match.group(1) not in {
            "WORKER_REPLICAS",
            "WORKER_CPUS",
            "API_PORT",
            "API_BIND",
            "REDIS_PASSWORD",
            "REDIS_MAXMEMORY",
            "HF_HUB_OFFLINE",
            "REDIS_IMAGE",
            "PROXY_IMAGE",
            "CUDA_VISIBLE_DEVICES",
        }:
            assert match.group(1).lower() in names, match.group(1)
