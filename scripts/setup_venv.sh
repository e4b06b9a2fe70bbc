#!/usr/bin/env bash
# Create .venv in the repository and install fhi_al with everything it needs (CPU torch first).
# Idempotent: does nothing when the venv already matches requirements.txt and pyproject.toml.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
python=${PYTHON:-python3}
stamp=.venv/.fhi_al-installed
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, on its own, so that nothing later pulls a CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q --no-deps -e .
.venv/bin/python - <<'PY'
import torch
assert torch.__version__.startswith("2.13.0"), torch.__version__
assert not torch.version.cuda, "a CUDA build of torch was installed; fhi_al expects the CPU wheel"
PY
echo "$want" > "$stamp"
