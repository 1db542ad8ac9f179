#!/usr/bin/env bash
# Install opensora_lite (editable) into a virtual environment.
#
#   scripts/install.sh          core dependencies
#   scripts/install.sh dev      + test tools and every engine's package
#                               (extras: dev, lora, deepspeed, colossalai, slurm, parquet, curate, flash-attn; comma-separated)
#   scripts/install.sh lora     + peft, for LoRA stages (docs/lora.md)
#
# torch is installed first and only when the environment has none, so a CUDA build already present
# (a cluster's own) is never replaced. Settings:
#   OSL_VENV   the environment to use (default .venv; created if missing). Point it at an existing
#              environment to install beside its torch.
#   OSL_TORCH  what to install when torch is missing (default torch==2.13.0: on CPU-only machines
#              with a local CPU wheel that is what pip takes; elsewhere PyPI's default CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${OSL_VENV:-.venv}
extras=${1:-}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
fi
py="$venv/bin/python"
if have=$("$py" -c "import torch; print(torch.__version__)" 2>/dev/null); then
  echo "install: keeping torch $have"
else
  echo "install: ${OSL_TORCH:-torch==2.13.0}"
  "$py" -m pip install -q "${OSL_TORCH:-torch==2.13.0}"
fi
spec="."
[ -n "$extras" ] && spec=".[$extras]"
# (setuptools warns about editable installs of a flat layout in a framed block on every install; the
# package is imported from this folder by design, so that one warning is silenced)
PYTHONWARNINGS="ignore:Editable installation" "$py" -m pip install -q -e "$spec"
case ",$extras," in
  *,dev,*|*,colossalai,*)  # its declared pins (torch<=2.5.1, ...) would replace torch: install it alone
    "$py" -m pip install -q --no-deps "${OSL_COLOSSALAI:-colossalai==0.5.0}" ;;
esac
case ",$extras," in
  *,dev,*|*,curate,*)  # it declares the GUI opencv-python; the headless one (the curate extra) is what it runs on
    "$py" -m pip install -q --no-deps "${OSL_SCENEDETECT:-scenedetect==0.7.2}" ;;
esac
echo "install: done ($("$py" -c 'import torch; print("torch", torch.__version__)'))"
