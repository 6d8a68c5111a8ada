#!/usr/bin/env bash
# One-step set-up on a fresh machine: virtual environment, CPU torch first, the project, data, browser.
# Idempotent: a second run only checks. Override the interpreter with PYTHON=..., the folder with VENV=...
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip -q --disable-pip-version-check "$@" 2>&1 | grep -v "is ignored" || true; }
# torch first, pinned to the CPU build: an unpinned torch pulls several GB of CUDA packages.
"$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null \
  || pip install "torch==2.13.0"
pip install -e ".[test]"
"$VENV/bin/python" -c "import torch, torch_pruning, ray, optuna, stable_baselines3" \
  || { echo "setup: the Python dependencies did not install (see pip's messages above)" >&2; exit 1; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi; }
apt_install() {  # Debian packages the project uses; skipped with a message where apt is not available
  command -v apt-get >/dev/null || return 1
  as_root apt-get install -y -qq "$@" >/dev/null 2>&1 \
    || { as_root apt-get update -qq >/dev/null 2>&1 && as_root apt-get install -y -qq "$@" >/dev/null 2>&1; }
}

FMNIST=${PRUNEPILOT_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}
if [ ! -f "$FMNIST/train-images-idx3-ubyte.gz" ] && [ ! -f "$FMNIST/train-images-idx3-ubyte" ]; then
  apt_install dataset-fashion-mnist \
    || echo "setup: Fashion-MNIST is not installed and apt could not install it (dataset-fashion-mnist);" \
            "configs that use it will say so; configs/demo.yaml uses scikit-learn's digits and still runs." >&2
fi
# a PostgreSQL server for the test that records a search in PostgreSQL (the test starts its own, on loopback)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || apt_install postgresql \
  || echo "setup: Debian's postgresql could not be installed; the PostgreSQL storage test will be skipped" >&2
# headless Chromium: the dashboard test renders optuna-dashboard in a real browser
command -v chromium >/dev/null || apt_install chromium \
  || echo "setup: Debian's chromium could not be installed; the dashboard browser test will be skipped" >&2
echo "setup: ready ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
