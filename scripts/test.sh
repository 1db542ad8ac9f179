#!/usr/bin/env bash
# Install the dev dependencies and run the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh dev
exec .venv/bin/python -m pytest -q "$@"
