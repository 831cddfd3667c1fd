#!/usr/bin/env bash
# The test suite on a fresh machine: environment, lint, then pytest (tiny configs, CPU only).
# The web test drives a real headless Chromium; it is installed here when missing (Debian).
set -euo pipefail
cd "$(dirname "$0")/.."
. runs/env.sh "[test]"
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) \
        || echo "chromium not installed: the browser test will be skipped"
fi
ruff check nanoocr scripts tests
python -m pytest -q "$@"  # every test, the slow ones included; -m "not slow" for a quick run
