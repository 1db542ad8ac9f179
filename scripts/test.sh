#!/usr/bin/env bash
# Install the dev dependencies, lint, and run the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh dev
.venv/bin/ruff check opensora_lite tests benchmarks        # lint (rules in pyproject.toml)
.venv/bin/ruff format --check opensora_lite tests benchmarks
exec .venv/bin/python -m pytest -q "$@"
