#!/usr/bin/env bash
# Set up .venv/ (idempotent) and run the main job: the normalization-geometry report on the
# packaged default models. Output: results/report-<timestamp>/report.html (+ stats.json, tables).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
out="results/report-$(date +%Y%m%d-%H%M%S)"
exec .venv/bin/normscope report --out "$out" "$@"
