#!/usr/bin/env bash
# Every GPU check in one command, for the few minutes a GPU machine is lent (docs/gpu-suite.md).
#
#   benchmarks/gpu_suite.sh                   on one H100/H200: <= 8 min with the wheel install
#   benchmarks/gpu_suite.sh --smoke           every part at tiny shapes on the CPU (tests/test_gpu_suite.py)
#   benchmarks/gpu_suite.sh --parts "training flux"   only these parts (a rerun of what failed)
#
# Parts, in order of value, each under a time cap so that one slow or failing part cannot eat the lease:
#   training      part 0: a two-stage curriculum in bf16 on CUDA, SIGTERM and resume, fsdp2 on one sharded rank
#   flux          bf16 parity with diffusers, then MFU of Flux-dev-width blocks (eager rows, then compiled)
#   engines       step time and peak memory per engine; activation checkpointing at 768px x 129 frames
#   autoencoders  encode/decode throughput and peak memory of every shipped autoencoder at a 256px clip
#   data_stall    the real loader decoding 720p clips into a stage-1-rate stand-in step
#   decoding      clip decoding throughput on one CPU core (what feeds the GPU)
# Each part publishes its rows as it measures them, to $OUT/tables.md and $OUT/rows.jsonl ($OUT: the device
# tool's folder of files that come back; default runs/gpu_suite-<time>), with the whole log in
# $OUT/suite.log and the summary (first line: part 0's pass or fail) in $OUT/summary.md. A part stopped by its cap keeps the rows
# it finished; rows a part cannot finish before its cap are not started. Nothing is appended to
# docs/benchmarks.md here: `python -m benchmarks.returned <folder>` does that with the returned files.
# .whl/ (benchmarks/carry_set.py) is installed first when present; the commit comes from $OSL_COMMIT, git
# where there is a .git, or .whl/COMMIT (benchlib.commit: the lent machine has no .git). PYTHON picks the
# interpreter (default python3); OSL_SUITE_CAP_S scales every cap (default 1). OSL_SUITE_BUDGET_S (on a
# GPU 455 by default, in --smoke none) is the whole run's: a part's cap is cut to what is left of it, and a
# part with under 10 s left is not run, so the suite ends, summary written, before the call's timeout_s
# (480). Exit status: 0 all parts passed, 1 a part failed, was stopped or not run, 2 no GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=0
PARTS="training flux engines autoencoders data_stall decoding"
while (($#)); do
  case "$1" in
    --smoke) SMOKE=1 ;;
    --parts) PARTS="$2"; shift ;;
    *) echo "gpu_suite: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
PY="${PYTHON:-python3}"
BUDGET="${OSL_SUITE_BUDGET_S:-}"
[[ -z $BUDGET && $SMOKE == 0 ]] && BUDGET=455
KILL_AFTER=10  # timeout's SIGKILL after its SIGTERM; with the record of the part, what a cap may overrun
OUT="${OUT:-runs/gpu_suite-$(date +%Y%m%d-%H%M%S)}"  # (runs/ is git-ignored)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

suite() {
  local began=$SECONDS
  if [[ $SMOKE == 0 ]] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_suite: no CUDA device visible; run it on a GPU machine, or pass --smoke to check it on CPU" >&2
    return 2
  fi
  if [[ $SMOKE == 0 && -d .whl ]] && compgen -G ".whl/*.whl" >/dev/null; then
    echo "== gpu_suite: installing $(ls .whl/*.whl | wc -l) carried wheels"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/osl-site \
      .whl/*.whl || { echo "gpu_suite: the carried wheels did not install" >&2; return 2; }
    export PYTHONPATH="$PYTHONPATH:/tmp/osl-site"  # (the repository first, then the carried versions)
    echo "== gpu_suite: wheels installed in $((SECONDS - began)) s"
  fi
  [[ $SMOKE == 0 ]] && { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true; }
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__)"
  local failed=0
  # name, cap seconds on a GPU, cap seconds in --smoke, command...
  part() {
    local name=$1 cap=$2 smoke_cap=$3 began=$SECONDS rc status
    shift 3
    [[ " $PARTS " == *" $name "* ]] || return 0
    [[ $SMOKE == 1 ]] && cap=$smoke_cap
    cap=$(awk "BEGIN{print int($cap * ${OSL_SUITE_CAP_S:-1} + 0.5)}")
    if [[ -n $BUDGET ]]; then  # (SECONDS: since this script started, the wheel install included)
      local left=$((BUDGET - SECONDS - KILL_AFTER - 5))
      if ((left < 10)); then
        "$PY" -m benchmarks.benchlib part "$name" "not run" 0 "$cap"
        echo "== gpu_suite: $name not run: $((BUDGET - SECONDS)) s left of the suite's $BUDGET s"
        failed=1
        return 0
      fi
      ((cap > left)) && cap=$left
    fi
    echo "== gpu_suite: $name (cap $cap s)"
    # the part's own deadline, a little before timeout's: it starts no row it cannot finish by then
    export OSL_SUITE_PART=$name OSL_PART_DEADLINE=$(($(date +%s) + cap - 3))
    local args=("$@")
    [[ $SMOKE == 1 ]] && args+=(--smoke)
    timeout --kill-after=$KILL_AFTER "$cap" "$PY" "${args[@]}" --no-append
    rc=$?
    unset OSL_SUITE_PART OSL_PART_DEADLINE
    case $rc in
      0) status=passed ;;
      124 | 137) status=stopped ;;
      *) status=failed ;;
    esac
    [[ $status == passed ]] || failed=1
    "$PY" -m benchmarks.benchlib part "$name" "$status" "$((SECONDS - began))" "$cap"
    echo "== gpu_suite: $name $status in $((SECONDS - began)) s"
  }
  local engines=(fsdp2)
  for pkg in colossalai:colossalai_zero2 deepspeed:deepspeed_zero2; do # where installed (GPU mode)
    [[ $SMOKE == 0 ]] && "$PY" -c "import ${pkg%%:*}" 2>/dev/null && engines+=("${pkg#*:}")
  done
  part training 180 240 -m benchmarks.gpu_training
  part flux 150 120 -m benchmarks.gpu_flux_checks
  part engines 75 120 -m benchmarks.gpu_engine_step --engines "${engines[@]}" --ac-rows
  part autoencoders 45 90 -m benchmarks.gpu_autoencoders --frames 33 --iters 2
  part data_stall 45 90 -m benchmarks.gpu_data_stall --steps 4
  part decoding 25 60 -m benchmarks.bench_decode --clips 1 --windows 3 --seconds 6
  echo "== gpu_suite: summary ($((SECONDS - began)) s)"
  [[ -f $OUT/summary.md ]] && cat "$OUT/summary.md"
  echo "gpu_suite: results in $OUT"
  return $failed
}

mkdir -p "$OUT"
export OUT
suite 2>&1 | tee -a "$OUT/suite.log"
exit "${PIPESTATUS[0]}"
