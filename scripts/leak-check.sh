#!/usr/bin/env bash
# Fail if any process started by meshflow's sandbox or tests is still running.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python - <<'PY'
import sys
from sandbox.processes import running_marked
left = running_marked()
if left:
    print(f"leak-check: {len(left)} meshflow processes still running: {left}", file=sys.stderr)
    sys.exit(1)
print("leak-check: no meshflow process left running")
PY
