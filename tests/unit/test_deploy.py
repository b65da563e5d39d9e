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


def test_worker_reserves_a_gpu_and_scales():
    deploy = compose()["services"]["worker"]["deploy"]
    assert deploy["replicas"] == "${WORKER_REPLICAS:-1}"
    device = deploy["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


def test_cpu_workers_are_the_worker_with_a_cpu_share_instead_of_a_gpu():
    services = compose()["services"]
    cpu, gpu = services["worker-cpu"], services["worker"]
    assert cpu["profiles"] == ["cpu"] and cpu["deploy"]["resources"] == {"limits": {"cpus": "${WORKER_CPUS:-2}"}}
    assert {k: v for k, v in cpu.items() if k not in ("profiles", "deploy")} == {
        k: v for k, v in gpu.items() if k != "deploy"
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


def test_worker_image_is_cuda_with_torch_from_its_lock():
    text = dockerfile("Dockerfile.worker")
    assert re.search(r"^FROM nvidia/cuda:\S+-runtime", text, re.M)
    assert "pip install --no-deps -r deploy/worker.lock" in text and '--no-deps ".[worker]"' in text
    assert locked("worker.lock")["torch"] == "2.13.0"


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
    assert cmd(dockerfile("Dockerfile.worker")) == ["python", "-m", "worker"]
    api = cmd(dockerfile("Dockerfile.api"))
    assert api[:3] == ["uvicorn", "api.main:create_app", "--factory"]
    run_script = (ROOT / "scripts" / "run-local.sh").read_text()
    assert "-m worker" in run_script and "api.main:create_app --factory" in run_script


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
        }:
            assert match.group(1).lower() in names, match.group(1)
