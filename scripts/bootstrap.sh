#!/usr/bin/env bash
# Install everything meshflow needs on a fresh machine, idempotently:
# uv (pinned), the locked Python environment (.venv), and the local Kubernetes binaries + etcd.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.8
if ! command -v uv >/dev/null 2>&1 || [[ $(uv --version | awk '{print $2}') != "$UV_VERSION" ]]; then
  echo "bootstrap: installing uv $UV_VERSION" >&2
  python3 -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
uv sync --frozen --quiet
bash sandbox/build-kube.sh
