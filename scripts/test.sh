#!/usr/bin/env bash
# Set up .venv/ (idempotent) and run the test suite. Slow reproduction runs are excluded
# (-m "not slow"); run them with: .venv/bin/python -m pytest -m slow
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -m "not slow" -q "$@"
