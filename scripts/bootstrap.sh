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
# --compile-bytecode: this environment sets PYTHONDONTWRITEBYTECODE=1, so without it every
# process (CLI, Prefect server, istioctl stand-in) recompiles prefect and kubernetes on start.
uv sync --frozen --quiet --compile-bytecode
bash sandbox/build-kube.sh
# PostgreSQL for `meshflow sandbox up --database postgres` and the benchmarks (sandbox/postgres.py).
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  echo "bootstrap: installing PostgreSQL (Debian package)" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
# Chromium for the browser test of the Prefect UI (tests/test_ui_browser.py, tests/browser.py).
if ! command -v chromium >/dev/null 2>&1; then
  echo "bootstrap: installing Chromium (Debian package)" >&2
  # a clean image may have no package lists yet: fetch them once if the first try fails
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
fi
