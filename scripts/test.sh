#!/usr/bin/env bash
# Set up .venv/ (idempotent) and run the test suite. Slow reproduction runs are excluded
# (-m "not slow"); run them with: .venv/bin/python -m pytest -m slow
# The numerical tests (marker `numerical`) run a second time under another OpenBLAS kernel
# (OPENBLAS_CORETYPE=Haswell), so a tolerance that holds on one CPU's BLAS kernel only fails here.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Headless Chromium renders the HTML report in one test (skipped where it is missing).
# Installed from Debian's packages where we may (root + apt); never fatal.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
        || echo "normscope: could not install chromium; the report-rendering test will be skipped" >&2
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/python -m pytest -m "not slow" -q "$@"
echo "normscope: numerical tests again under OPENBLAS_CORETYPE=Haswell"
OPENBLAS_CORETYPE=Haswell .venv/bin/python -m pytest -m "numerical and not slow" -q -p no:cacheprovider "$@"
