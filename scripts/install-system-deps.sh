#!/usr/bin/env bash
# Debian/Ubuntu packages the project needs: redis-server, nginx (the tests run the compose file's proxy config),
# chromium (the tests render /docs in it, headless) and venv support for Python, plus any named as arguments (the
# benchmark asks for wrk). Installs only what is missing.
set -euo pipefail
PYTHON=${PYTHON:-python3}
missing=()
for package in "$@"; do
    command -v "$package" >/dev/null || missing+=("$package")
done
command -v redis-server >/dev/null || missing+=(redis-server)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v chromium >/dev/null || missing+=(chromium)
"$PYTHON" -c "import ensurepip, venv" 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
