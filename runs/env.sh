#!/usr/bin/env bash
# Creates/updates the project's virtual environment (.venv) on a fresh machine. Sourced by the run scripts.
# Installs the CPU wheel of torch first: a bare `torch` from PyPI would pull a multi-GB CUDA build.
# On a GPU machine, install the CUDA torch you want into .venv beforehand; it is kept.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${NANOOCR_VENV:-$ROOT/.venv}"
EXTRAS="${1:-}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -c "import torch" 2>/dev/null || pip install -q torch==2.13.0
pip install -q -e "$ROOT${EXTRAS}" 2>&1 | grep -v -i "warning" || true
python -c "import nanoocr, torch; print(f'nanoocr ready: torch {torch.__version__}')"
