#!/usr/bin/env bash
# The quickstart: install, build the Shapes dataset, run the tiny curriculum on CPU
# (image pretraining -> 16px text-to-video -> image-to-video -> 24px), print the evaluator's figures.
# Extra arguments are Hydra overrides, e.g.  scripts/quickstart.sh run.name=second_try
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
scripts/install.sh
.venv/bin/osl-data out=data/shapes
.venv/bin/osl-curriculum experiment=tiny_cpu "$@"
echo "quickstart: finished in $(( $(date +%s) - start ))s"
