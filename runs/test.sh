#!/usr/bin/env bash
# The test suite on a fresh machine: environment, lint, then pytest (tiny configs, CPU only).
# The web test drives a real headless Chromium; it is installed here when missing (Debian).
set -euo pipefail
cd "$(dirname "$0")/.."
. runs/env.sh "[test]"
# the browser test drives chromium; `eval --compare tesseract` is tested against the real binary
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    need=()
    command -v chromium >/dev/null 2>&1 || need+=(chromium chromium-driver)
    command -v tesseract >/dev/null 2>&1 || need+=(tesseract-ocr)
    if [ ${#need[@]} -gt 0 ]; then
        (apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null) \
            || echo "not installed: ${need[*]}; the tests that need them will be skipped"
    fi
fi
ruff check nanoocr scripts tests dev
python -m pytest -q "$@"  # every test, the slow ones included; -m "not slow" for a quick run
