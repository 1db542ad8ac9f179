#!/usr/bin/env bash
# One command for every GPU check, for the few minutes a GPU machine is lent (docs/gpu-suite.md).
#
#   benchmarks/gpu_suite.sh            on one H100/H200: <= 8 min (caps sum to 7.5), appends dated tables to docs/benchmarks.md
#   benchmarks/gpu_suite.sh --smoke    tiny shapes on CPU, nothing appended: seconds (tests/test_scripts.py)
#
# Parts, each with a time cap so that one slow or failing part cannot eat the lease; a failed part is
# reported and the next one runs; the exit status is 1 if any part failed.
#   1. bf16 parity with diffusers + MFU of Flux-dev-width blocks at stage-1 shapes, ours and diffusers
#   2. step time and peak memory per engine (fsdp2, and colossalai_zero2 / deepspeed_zero2 where installed)
#   3. selective activation checkpointing: peak memory at 768px x 129 frames for 1 + 2 blocks, AC off / on
#   4. clip decoding throughput on the machine's CPU cores (what feeds the GPU)
#   5. autoencoder encode/decode throughput and peak memory at a 256px stage-1 clip, every shipped AE
#   6. the data-stall fraction: the real loader decoding 720p clips into a stage-1-rate stand-in step
# PYTHON picks the interpreter (default python3); OSL_SUITE_CAP_S scales every cap (default 1).
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
SMOKE=0
[[ "${1:-}" == "--smoke" ]] && SMOKE=1
if [[ $SMOKE == 0 ]] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_suite: no CUDA device visible; run it on a GPU machine, or pass --smoke to check it on CPU" >&2
  exit 2
fi
FAILED=()
part() { # name, cap seconds (GPU mode), command...
  local name=$1 cap=$2 began=$SECONDS
  shift 2
  echo "== gpu_suite: $name"
  if [[ $SMOKE == 1 ]]; then
    "$PY" "$@" --smoke --no-append || FAILED+=("$name")
  else
    timeout "$(awk "BEGIN{print int($cap * ${OSL_SUITE_CAP_S:-1})}")" "$PY" "$@" || FAILED+=("$name")
  fi
  echo "== gpu_suite: $name took $((SECONDS - began)) s"
}
engines=(fsdp2)
for pkg in colossalai:colossalai_zero2 deepspeed:deepspeed_zero2; do  # the others where installed (GPU mode)
  [[ $SMOKE == 0 ]] && "$PY" -c "import ${pkg%%:*}" 2>/dev/null && engines+=("${pkg#*:}")
done
part "flux parity + MFU" 170 -m benchmarks.gpu_flux_checks
part "engine step time" 85 -m benchmarks.gpu_engine_step --engines "${engines[@]}"
if [[ $SMOKE == 1 ]]; then  # tiny: AC off is the engine step above
  part "AC memory, on" 30 -m benchmarks.gpu_engine_step --engines fsdp2 --ac 2
else  # 768px x 129 frames: 33 latent frames x 48 x 48 tokens after 2x2 patches of a 96 x 96 latent
  part "AC memory, off" 30 -m benchmarks.gpu_engine_step --engines fsdp2 --double 1 --single 2 --grid 33 48 48 --iters 3
  part "AC memory, on" 30 -m benchmarks.gpu_engine_step --engines fsdp2 --double 1 --single 2 --grid 33 48 48 --iters 3 --ac 2
fi
if [[ $SMOKE == 1 ]]; then
  echo "== gpu_suite: clip decoding"
  "$PY" -m benchmarks.bench_decode --clips 1 --windows 1 --seconds 3 --frames 9 --no-append || FAILED+=("clip decoding")
else
  part "clip decoding" 35 -m benchmarks.bench_decode --clips 1 --windows 4 --seconds 6
fi
# these two stop starting new rows past their budget, so the table comes out inside the cap (--smoke
# replaces the shapes with tiny ones)
part "autoencoders" 45 -m benchmarks.gpu_autoencoders --frames 33 --iters 2 --budget-s 30
part "data stall" 55 -m benchmarks.gpu_data_stall --budget-s 38
if ((${#FAILED[@]})); then
  echo "gpu_suite: failed parts: ${FAILED[*]}" >&2
  exit 1
fi
echo "gpu_suite: all parts ran in $SECONDS s"
