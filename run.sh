#!/usr/bin/env bash
# One entry point that does all the set-up on a fresh machine, then runs what you ask for:
#   ./run.sh train [dvae train flags]   the main job: a DMM on Gymnasium's Pendulum-v1 (no downloads)
#   ./run.sh test  [pytest flags]       the test suite (slow tests excluded; `./run.sh test -m slow` runs them)
#   ./run.sh dvae ...                   any `dvae` command inside the environment
# Set-up: a virtual environment in .venv (or $DVAE_VENV) with this package installed in editable mode.
# PyTorch comes from $DVAE_TORCH_SPEC (default torch==2.13.0, the CPU wheel on the CI machines); set it to
# e.g. "torch" or a CUDA build of your choice. Nothing is pinned in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${DVAE_VENV:-.venv}"
PY="${PYTHON:-python3}"
STAMP="$VENV/.dvae-installed"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
    "$VENV/bin/python" -m pip install -q "${DVAE_TORCH_SPEC:-torch==2.13.0}"
  fi
  "$VENV/bin/python" -m pip install -q -e ".[test]"
  touch "$STAMP"
fi
export MPLBACKEND="${MPLBACKEND:-Agg}"
what="${1:-train}"
[ $# -gt 0 ] && shift
case "$what" in
  train) exec "$VENV/bin/dvae" train "$@" ;;
  test)  exec "$VENV/bin/python" -m pytest -q "$@" ;;
  dvae)  exec "$VENV/bin/dvae" "$@" ;;
  *) echo "usage: ./run.sh {train|test|dvae} [args...]" >&2; exit 2 ;;
esac
