#!/usr/bin/env bash
# Create .venv and install pmrl-sci with its test tools. Safe to run again (it only adds what is missing).
#   TORCH_SPEC   the torch requirement to install first (default torch==2.13.0: a CPU build that is
#                on disk on the project's machines; use e.g. "torch" on a GPU cluster)
#   PYTHON       the interpreter that creates the environment (default python3)
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "$TORCH_SPEC"
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[all,test]"
