#!/usr/bin/env bash
# make images-test: build every image from the repo's Dockerfiles, bring docker-compose.yml up with podman-compose
# (its CPU profile), send the README's requests through the proxy and check every vector against
# SentenceTransformer.encode, kill a worker container in the middle of a job, scale the workers to two, take it
# all down (down -v) and check nothing is left. Prints each image's size and each step's time.
#
# As root on Debian 12 with the repo's venv (make install); installs what it lacks: podman, buildah, runc and
# mmdebstrap (apt), podman-compose (PyPI, in its own venv under IMAGES_TEST_STATE). podman's settings for this
# machine kind (runc; ulimits) go in a containers.conf of its own (CONTAINERS_CONF), not in /etc.
# Where the real base images cannot be pulled (no registry), it builds stand-ins from Debian packages and passes
# them as build args / REDIS_IMAGE / PROXY_IMAGE; a user's build with the defaults is unchanged.
#
#   IMAGES_TEST_STANDINS=auto|yes|no    stand-in bases: auto (when python:3.11-slim cannot be pulled), or forced
#   IMAGES_TEST_GPU=yes|no              build the GPU image too (yes; it is the slowest step)
#   IMAGES_TEST_STATE=/var/tmp/...      tools and the stand-in base's tarball, kept between runs
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PROJECT=embeddings-images-test
STATE=${IMAGES_TEST_STATE:-/var/tmp/embeddings-images-test}
STANDINS=${IMAGES_TEST_STANDINS:-auto}
BUILD_GPU=${IMAGES_TEST_GPU:-yes}
PODMAN_COMPOSE_VERSION=1.6.0
PYTHON=$ROOT/.venv/bin/python
WORK=$(mktemp -d /var/tmp/images-test.XXXXXX)
TIMINGS=$WORK/timings
COMPOSE_DIR=$WORK/compose
: >"$TIMINGS"

STEP_NAME="" STEP_START=$SECONDS START=$SECONDS
step() {
    local now=$SECONDS
    if [ -n "$STEP_NAME" ]; then
        printf '%5ds  %s\n' $((now - STEP_START)) "$STEP_NAME" >>"$TIMINGS"
    fi
    STEP_NAME=${1:-} STEP_START=$now
    if [ -n "$STEP_NAME" ]; then
        echo "== [$((now - START))s] $STEP_NAME"
    fi
}
fail() {
    echo "FAIL: $*" >&2
    exit 1
}

compose() {
    (cd "$COMPOSE_DIR" && "$STATE/venv/bin/podman-compose" -p "$PROJECT" "$@")
}
containers_of() {  # the project's containers of a service, by name
    podman ps -a --filter "label=io.podman.compose.project=$PROJECT" --filter "label=com.docker.compose.service=$1" \
        --format '{{.Names}}' | sort
}

remove_leftovers() {  # whatever a failed run (this one or an earlier one) left of the project
    [ -f "$COMPOSE_DIR/docker-compose.yml" ] || { mkdir -p "$COMPOSE_DIR" && cp docker-compose.yml "$COMPOSE_DIR/"; }
    REDIS_PASSWORD=${REDIS_PASSWORD:-unused} compose --profile cpu down -v -t 5 >/dev/null 2>&1
    local label="label=io.podman.compose.project=$PROJECT"
    podman rm -f --depend -t 5 $(podman ps -aq --filter "$label") >/dev/null 2>&1
    podman volume rm -f $(podman volume ls -q --filter "$label") >/dev/null 2>&1
    podman network rm -f $(podman network ls --format '{{.Name}}' | grep "^${PROJECT}_") >/dev/null 2>&1
    return 0
}

GPU_BUILD_PID=""
cleanup() {
    local status=$?
    set +e
    step ""
    if [ -n "$GPU_BUILD_PID" ] && kill -0 "$GPU_BUILD_PID" 2>/dev/null; then
        kill $(pgrep -P "$GPU_BUILD_PID") "$GPU_BUILD_PID" 2>/dev/null  # the build's podman, then its shell
        wait "$GPU_BUILD_PID" 2>/dev/null
    fi
    if [ "$status" -ne 0 ] && [ -d "$COMPOSE_DIR" ]; then
        echo "== logs of the failed run"
        for name in $(podman ps -a --filter "label=io.podman.compose.project=$PROJECT" --format '{{.Names}}'); do
            echo "--- $name"
            podman logs --tail 30 "$name" 2>&1
        done
        remove_leftovers
    fi
    echo "== timings (seconds)"
    cat "$TIMINGS"
    echo "total: $((SECONDS - START)) s"
    rm -rf "$WORK"
    [ "$status" -eq 0 ] && echo "images-test: passed" || echo "images-test: FAILED" >&2
    exit "$status"
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------------------------
step "tools: podman, buildah, runc, mmdebstrap, podman-compose"
[ "$(id -u)" -eq 0 ] || fail "run as root (podman builds and runs rootful here)"
[ -x "$PYTHON" ] || fail "no $PYTHON: run make install first (make images-test does)"
missing=()
for tool in podman buildah runc mmdebstrap; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
mkdir -p "$STATE"
# crun (podman's default) fails on this kernel (hybrid cgroups); the ulimits podman would set need CAP_SYS_RESOURCE
cat >"$STATE/containers.conf" <<'EOF'
[engine]
runtime = "runc"

[containers]
default_ulimits = ["nofile=20000:20000", "nproc=1000:1000"]
EOF
export CONTAINERS_CONF=$STATE/containers.conf
if ! "$STATE/venv/bin/podman-compose" version 2>/dev/null | grep -q "$PODMAN_COMPOSE_VERSION"; then
    python3 -m venv "$STATE/venv"
    "$STATE/venv/bin/pip" install -q "podman-compose==$PODMAN_COMPOSE_VERSION"
fi
podman --version
# a run that failed half-way (killed) left its stack: take it down first
if [ -n "$(podman ps -aq --filter "label=io.podman.compose.project=$PROJECT")$(podman volume ls -q --filter "label=io.podman.compose.project=$PROJECT")$(podman network ls --format '{{.Name}}' | grep "^${PROJECT}_")" ]; then
    echo "removing what an earlier run left"
    remove_leftovers
fi

# ---------------------------------------------------------------------------------------------------------------
step "base images"
BUILD_ARGS=()
CPU_TORCH_ARGS=()
if [ "$STANDINS" = auto ]; then
    if timeout 120 podman pull -q docker.io/library/python:3.11-slim >/dev/null 2>&1; then
        STANDINS=no
    else
        STANDINS=yes
        echo "python:3.11-slim cannot be pulled: building stand-ins from Debian packages"
    fi
fi
if [ "$STANDINS" = yes ]; then
    # Debian 12's python3 is 3.11, the images' Python; the host's CA bundle (its TLS proxy's CA) for pip
    if ! podman image exists localhost/standin-python:3.11; then
        if [ ! -f "$STATE/standin-python.tar" ] || [ ! -s "$STATE/standin-python.tar" ]; then
            rm -rf "$STATE/standin-python.tar"
            mmdebstrap --quiet --variant=minbase \
                --include=python3,python3-venv,python-is-python3,passwd,ca-certificates \
                --customize-hook='copy-in /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs' \
                --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
                bookworm "$STATE/standin-python.partial.tar"  # mmdebstrap: the name's extension says the format
            mv "$STATE/standin-python.partial.tar" "$STATE/standin-python.tar"
        fi
        podman import -q --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' --change 'CMD ["python3"]' \
            "$STATE/standin-python.tar" localhost/standin-python:3.11 >/dev/null
    fi
    BUILD_ARGS=(--build-arg PYTHON_IMAGE=localhost/standin-python:3.11)
    # download.pytorch.org is out of reach: the CPU torch wheel pip takes here lies in pip's find-links folder
    find_links=${PIP_FIND_LINKS:-$("$PYTHON" -m pip config get global.find-links 2>/dev/null || true)}
    if [ -n "$find_links" ] && ls "$find_links"/torch-*+cpu-*.whl >/dev/null 2>&1; then
        CPU_TORCH_ARGS=(--volume "$find_links:/wheels:ro" --build-arg TORCH_FIND_LINKS=/wheels
            --build-arg TORCH_INDEX_URL=https://pypi.org/simple)
    fi
    standins=$WORK/standins
    mkdir -p "$standins"
    cat >"$standins/Containerfile.redis" <<'EOF'
# a stand-in for redis:7.2-alpine: Debian's redis-server, run from /data as the redis user
ARG BASE
FROM ${BASE}
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server >/dev/null \
    && rm -rf /var/lib/apt/lists/* && mkdir -p /data && chown redis:redis /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["redis-server"]
EOF
    cat >"$standins/Containerfile.nginx" <<'EOF'
# a stand-in for nginx:1.27-alpine: Debian's nginx, with the official image's templates step (envsubst of
# /etc/nginx/templates/*.template into /etc/nginx/conf.d/, defined variables only)
ARG BASE
FROM ${BASE}
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends nginx gettext-base >/dev/null \
    && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/default \
    && ln -sf /dev/stdout /var/log/nginx/access.log && ln -sf /dev/stderr /var/log/nginx/error.log
COPY entrypoint.sh /entrypoint.sh
ENTRYPOINT ["/entrypoint.sh"]
CMD ["nginx", "-g", "daemon off;"]
EOF
    cat >"$standins/entrypoint.sh" <<'EOF'
#!/bin/sh
set -e
defined=$(printf '${%s} ' $(env | cut -d= -f1))
for template in /etc/nginx/templates/*.template; do
    [ -e "$template" ] || continue
    envsubst "$defined" <"$template" >"/etc/nginx/conf.d/$(basename "$template" .template)"
done
exec "$@"
EOF
    chmod +x "$standins/entrypoint.sh"
    for service in redis nginx; do
        podman build -q --network host --build-arg BASE=localhost/standin-python:3.11 \
            -f "$standins/Containerfile.$service" -t "localhost/standin-$service:latest" "$standins" >/dev/null
    done
    REDIS_IMAGE=localhost/standin-redis:latest PROXY_IMAGE=localhost/standin-nginx:latest
else
    REDIS_IMAGE=redis:7.2-alpine PROXY_IMAGE=nginx:1.27-alpine
fi

# ---------------------------------------------------------------------------------------------------------------
# docker format: keeps SHELL (pipefail) as Docker does; --network host: pip through the host's proxy
build() {  # build DOCKERFILE TAG [ARGS...]
    local file=$1 tag=$2
    shift 2
    podman build --format docker --network host "${BUILD_ARGS[@]}" "$@" -f "$file" -t "$tag" .
}
if [ "$BUILD_GPU" = yes ]; then
    # the GPU image downloads gigabytes: built alongside the others and the stack's checks, waited for at the end
    build Dockerfile.worker localhost/embeddings-worker:latest >"$WORK/gpu-build.log" 2>&1 &
    GPU_BUILD_PID=$!
    GPU_BUILD_START=$SECONDS
fi
step "build Dockerfile.api"
build Dockerfile.api localhost/embeddings-api:latest >"$WORK/api-build.log" 2>&1 || { tail -30 "$WORK/api-build.log"; fail "Dockerfile.api"; }
step "build Dockerfile.worker-cpu"
build Dockerfile.worker-cpu localhost/embeddings-worker-cpu:latest "${CPU_TORCH_ARGS[@]}" >"$WORK/cpu-build.log" 2>&1 \
    || { tail -30 "$WORK/cpu-build.log"; fail "Dockerfile.worker-cpu"; }

step "fixture models (offline, from the bundled MiniLM)"
FIXTURES=$WORK/fixtures
mkdir -p "$FIXTURES"
"$PYTHON" scripts/images_check.py fixtures "$FIXTURES"

# ---------------------------------------------------------------------------------------------------------------
step "compose up: --profile cpu up -d --scale worker=0 (README)"
mkdir -p "$COMPOSE_DIR/deploy/kubernetes/base"
cp docker-compose.yml "$COMPOSE_DIR/"
cp deploy/kubernetes/base/api-proxy.conf.template "$COMPOSE_DIR/deploy/kubernetes/base/"
API_PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
API_KEY=sk-images-test-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
# the README's first step: cp .env.example .env, then set REDIS_PASSWORD and API_KEYS
sed "s/^REDIS_PASSWORD=.*/REDIS_PASSWORD=$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')/" .env.example \
    >"$COMPOSE_DIR/.env"
cat >>"$COMPOSE_DIR/.env" <<EOF
API_KEYS=$API_KEY
API_PORT=$API_PORT
WORKER_CPUS=1
JOB_CHUNK_SIZE=64
HF_HUB_OFFLINE=1
MODEL_PATHS=test/minilm-dot=/models/fixtures/minilm-dot,test/minilm-gemma-prompts=/models/fixtures/minilm-gemma,test/clip=/models/fixtures/clip
REDIS_IMAGE=$REDIS_IMAGE
PROXY_IMAGE=$PROXY_IMAGE
EOF
compose --profile cpu up -d --scale worker=0 >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; fail "compose up"; }
[ -z "$(containers_of worker)" ] || fail "a GPU worker container was created"
# the fixture models go into the models volume, as an operator copies folders there
models=$(podman volume inspect --format '{{.Mountpoint}}' "${PROJECT}_models")
mkdir -p "$models/fixtures"
cp -r "$FIXTURES"/. "$models/fixtures/"
chown -R 10001:10001 "$models/fixtures"

export IMAGES_TEST_URL=http://127.0.0.1:$API_PORT IMAGES_TEST_API_KEY=$API_KEY IMAGES_TEST_FIXTURES=$FIXTURES

# podman runs healthchecks from systemd timers, and there is no systemd here: this runs each container's own
# healthcheck (podman healthcheck run) until all of them pass
wait_healthy() {  # wait_healthy TIMEOUT_S
    local deadline=$((SECONDS + $1)) name pending
    while :; do
        pending=()
        for name in $(podman ps -a --filter "label=io.podman.compose.project=$PROJECT" --format '{{.Names}}'); do
            if [ "$(podman inspect --format '{{.State.Running}}' "$name")" != true ]; then
                pending+=("$name(not running)")
            elif [ "$(podman inspect --format '{{if .Config.Healthcheck}}yes{{end}}' "$name")" = yes ] \
                && ! podman healthcheck run "$name" >/dev/null 2>&1; then
                pending+=("$name")
            fi
        done
        [ ${#pending[@]} -eq 0 ] && return 0
        [ $SECONDS -lt $deadline ] || fail "not healthy after $1 s: ${pending[*]}"
        sleep 2
    done
}
step "every healthcheck healthy (redis, api, worker-cpu)"
wait_healthy 240
podman ps --filter "label=io.podman.compose.project=$PROJECT" --format '{{.Names}}  {{.Status}}'

step "README requests through the proxy, checked against SentenceTransformer.encode"
"$PYTHON" scripts/images_check.py examples

step "the images: non-root, read-only outside the volumes"
api=$(containers_of api)
worker=$(containers_of worker-cpu)
for name in "$api" "$worker"; do
    [ "$(podman exec "$name" id -u)" = 10001 ] || fail "$name runs as $(podman exec "$name" id -u)"
    for path in /app /opt/venv /etc; do
        ! podman exec "$name" touch "$path/.write-test" 2>/dev/null || fail "$name can write $path"
    done
done
podman exec "$worker" sh -c 'touch /models/.write-test && rm /models/.write-test' || fail "the models volume is not writable"
podman exec "$worker" test -f /tmp/ready || fail "no READY_FILE"
[ -z "$(podman exec "$worker" find /models ! -user 10001)" ] || fail "files in /models the workers cannot write"

# ---------------------------------------------------------------------------------------------------------------
step "kill the worker container during an asynchronous job"
job=$("$PYTHON" scripts/images_check.py job-start)
"$PYTHON" scripts/images_check.py job-running "$job"
restarts=$(podman inspect --format '{{.RestartCount}}' "$worker")
kill -9 "$(podman inspect --format '{{.State.Pid}}' "$worker")"
deadline=$((SECONDS + 60))
until [ "$(podman inspect --format '{{.RestartCount}}' "$worker")" -gt "$restarts" ] \
    && [ "$(podman inspect --format '{{.State.Running}}' "$worker")" = true ]; do
    [ $SECONDS -lt $deadline ] || fail "$worker was not restarted"
    sleep 1
done
echo "$worker restarted (restart policy); its job's chunks run again once their leases lapse"
"$PYTHON" scripts/images_check.py job-finish "$job"
wait_healthy 120

step "scale the CPU workers to 2: WORKER_REPLICAS=2 (README)"
# podman-compose reads deploy.replicas only without --scale: the running worker stays, a second one joins
echo "WORKER_REPLICAS=2" >>"$COMPOSE_DIR/.env"
compose --profile cpu up -d --no-recreate worker-cpu >"$WORK/scale.log" 2>&1 || { cat "$WORK/scale.log"; fail "scale"; }
[ "$(containers_of worker-cpu | wc -l)" -eq 2 ] || fail "not two worker-cpu containers: $(containers_of worker-cpu)"
wait_healthy 240
deadline=$((SECONDS + 30))
until curl -sf "$IMAGES_TEST_URL/readyz" | grep -q '"workers":2'; do
    [ $SECONDS -lt $deadline ] || fail "/readyz: $(curl -s "$IMAGES_TEST_URL/readyz")"
    sleep 1
done
curl -s "$IMAGES_TEST_URL/readyz"
echo
"$PYTHON" scripts/images_check.py examples

# ---------------------------------------------------------------------------------------------------------------
step "compose down -v: nothing left"
compose --profile cpu down -v >"$WORK/down.log" 2>&1 || { cat "$WORK/down.log"; fail "down"; }
left=$(podman ps -aq --filter "label=io.podman.compose.project=$PROJECT")
left+=$(podman volume ls -q --filter "label=io.podman.compose.project=$PROJECT")
left+=$(podman volume ls -q | grep "^${PROJECT}_" || true)
left+=$(podman network ls -q --filter "label=io.podman.compose.project=$PROJECT")
left+=$(podman network ls --format '{{.Name}}' | grep "^${PROJECT}_" || true)
left+=$(podman pod ls -q --filter "name=$PROJECT")
[ -z "$left" ] || fail "left after down -v: $left"
echo "no container, volume, network or pod of $PROJECT left"

# ---------------------------------------------------------------------------------------------------------------
if [ -n "$GPU_BUILD_PID" ]; then
    step "build Dockerfile.worker (GPU; started at the beginning, waited for here)"
    wait "$GPU_BUILD_PID" || { GPU_BUILD_PID=""; tail -30 "$WORK/gpu-build.log"; fail "Dockerfile.worker"; }
    GPU_BUILD_PID=""
    echo "built in $((SECONDS - GPU_BUILD_START)) s (alongside the steps above)"
    step "GPU image without a GPU: one CUDA stack, a clear refusal, non-root"
    gpu=localhost/embeddings-worker:latest
    podman run --rm --read-only "$gpu" python -c "
import torch, importlib.metadata as md
stacks = sorted({d.metadata['Name'] for d in md.distributions() if d.metadata['Name'].startswith(('nvidia-', 'cuda-'))})
print('torch', torch.__version__, 'CUDA', torch.version.cuda, '|', len(stacks), 'CUDA wheels, e.g.', ', '.join(stacks[:3]))
"
    [ "$(podman run --rm "$gpu" id -u)" = 10001 ] || fail "the GPU image runs as root"
    [ -z "$(podman run --rm --entrypoint sh "$gpu" -c 'ls -d /usr/local/cuda* 2>/dev/null')" ] || fail "a CUDA toolkit outside torch's wheels"
    set +e
    refusal=$(podman run --rm --read-only "$gpu" python -m worker.cuda_driver 2>&1)
    status=$?
    set -e
    echo "$refusal"
    [ "$status" -eq 2 ] && grep -q "no NVIDIA driver or GPU is visible" <<<"$refusal" || fail "no clear CUDA refusal"

    step "GPU image's launcher: one worker per device (two pretend GPUs, stub encoder), a killed one comes back"
    # no GPU here: CUDA_VISIBLE_DEVICES=0,1 names two, DEVICE=cpu and ENCODER=stub let their workers start anyway
    pod=${PROJECT}-launcher
    podman pod rm -f "$pod" >/dev/null 2>&1 || true
    podman pod create --name "$pod" >/dev/null
    podman run -d --pod "$pod" --name "$pod-redis" "$REDIS_IMAGE" redis-server --save "" >/dev/null
    podman run -d --pod "$pod" --name "$pod-worker" --read-only --tmpfs /tmp -e REDIS_URL=redis://127.0.0.1:6379/0 \
        -e CUDA_VISIBLE_DEVICES=0,1 -e DEVICE=cpu -e ENCODER=stub -e WORKER_METRICS_PORT=9100 "$gpu" >/dev/null
    ready_in() {  # ready_in SECONDS: the container's READY_FILE names both GPUs' workers
        local deadline=$((SECONDS + $1))
        until [ "$(podman exec "$pod-worker" cat /tmp/ready 2>/dev/null)" = "GPU 0, GPU 1" ]; do
            [ $SECONDS -lt $deadline ] || { podman logs --tail 20 "$pod-worker"; fail "the launcher's workers not ready"; }
            sleep 1
        done
    }
    ready_in 120
    pinned=$(podman exec "$pod-worker" sh -c 'for e in /proc/[0-9]*/environ; do tr "\0" "\n" <"$e" | grep "^CUDA_VISIBLE_DEVICES=" || true; done' | sort | uniq -c | tr -s ' ')
    echo "processes by CUDA_VISIBLE_DEVICES:"
    echo "$pinned"
    grep -q "^ 1 CUDA_VISIBLE_DEVICES=0$" <<<"$pinned" && grep -q "^ 1 CUDA_VISIBLE_DEVICES=1$" <<<"$pinned" \
        || fail "not one worker per device: $pinned"
    child=$(podman exec "$pod-worker" python -c "
import os
for pid in os.listdir('/proc'):
    if pid.isdigit() and pid != '1' and b'CUDA_VISIBLE_DEVICES=1\0' in open(f'/proc/{pid}/environ', 'rb').read():
        print(pid)" | head -1)
    podman exec "$pod-worker" python -c "import os, signal; os.kill($child, signal.SIGKILL)"
    sleep 1.5
    [ "$(podman exec "$pod-worker" cat /tmp/ready 2>/dev/null)" = "" ] || fail "still ready with a worker killed"
    ready_in 60
    podman logs "$pod-worker" 2>&1 | grep "worker.per_device" | tail -2
    podman stop -t 30 "$pod-worker" >/dev/null
    [ "$(podman inspect --format '{{.State.ExitCode}}' "$pod-worker")" = 0 ] || fail "the launcher did not stop cleanly"
    podman pod rm -f "$pod" >/dev/null
fi

step "image sizes"
for image in localhost/embeddings-api localhost/embeddings-worker-cpu localhost/embeddings-worker \
    "$REDIS_IMAGE" "$PROXY_IMAGE" localhost/standin-python:3.11; do
    podman image exists "$image" || continue
    printf '%-42s %6d MB\n' "$image" $(($(podman image inspect --format '{{.Size}}' "$image") / 1000000))
done | tee -a "$TIMINGS.sizes"
step ""
cat "$TIMINGS.sizes" >>"$TIMINGS"
