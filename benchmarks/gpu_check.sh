#!/usr/bin/env bash
# The GPU check (issue 23), one script, under 10 minutes on one H100/H200:
#   1. GPT-2 124M training, bf16 autocast, SDPA, torch.compile: tokens/s and MFU against the GPU's bf16 peak
#      (benchmarks/gpu_train.py);
#   2. the quality benchmark's GPU run (benchmarks/bench_quality.py, stdlib corpus, one seed: no network);
#   3. a 2-step FSDP2 run of `scratch-gpt train` on the one GPU (accelerate launch --config_file configs/fsdp.yaml
#      --num_processes 1), with a sharded checkpoint and the final folder loaded back;
# and writes one JSON document (default gpu_check.json; --out FILE).
#
#   bash benchmarks/gpu_check.sh                  # on a GPU machine
#   bash benchmarks/gpu_check.sh --dry-run        # the same steps CPU-sized (tiny shapes, fp32 FSDP), for CI
#
# Exit status: 0 when every step ran; otherwise the first failing step's, with its log tail in the JSON.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY=0
OUT="gpu_check.json"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --out) OUT="$2"; shift ;;
    --out=*) OUT="${1#--out=}" ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (use --dry-run, --out FILE)" >&2; exit 2 ;;
  esac
  shift
done
PY="${PYTHON:-python3}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export SCRATCH_GPT_MALLOC_TUNING=0 TOKENIZERS_PARALLELISM=false
STATUS=0

if [ "$DRY" = 0 ] && ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check.sh: no GPU visible to torch; run with --dry-run for the CPU-sized version" >&2
  exit 2
fi

# step NAME CMD...: run CMD with its log in $WORK/NAME.log and its time in $WORK/NAME.ms
step() {
  local name="$1"; shift
  local t0; t0=$(date +%s%N)
  echo "[gpu_check] $name: $*" >&2
  "$@" >"$WORK/$name.log" 2>&1
  local rc=$?
  echo $(( ($(date +%s%N) - t0) / 1000000 )) >"$WORK/$name.ms"
  echo "$rc" >"$WORK/$name.rc"
  if [ "$rc" != 0 ]; then
    echo "[gpu_check] $name failed ($rc):" >&2; tail -n 20 "$WORK/$name.log" >&2
    [ "$STATUS" = 0 ] && STATUS=$rc
  fi
}

# 1. 124M bf16 + SDPA + compile (dry: a tiny model, eager, a few steps)
if [ "$DRY" = 1 ]; then
  step train "$PY" "$ROOT/benchmarks/gpu_train.py" --dry-run --out "$WORK/train.json"
else
  step train "$PY" "$ROOT/benchmarks/gpu_train.py" --out "$WORK/train.json"
fi

# 2. the quality benchmark on the GPU (dry: its small shape, a few steps, a slice of the corpus, on the CPU)
if [ "$DRY" = 1 ]; then
  step quality "$PY" "$ROOT/benchmarks/bench_quality.py" --corpus stdlib --seeds 1 --small --steps 2 \
    --chars 20000 --device cpu --out "$WORK/quality.json"
else
  step quality "$PY" "$ROOT/benchmarks/bench_quality.py" --corpus stdlib --seeds 1 --out "$WORK/quality.json"
fi

# 3. 2 FSDP2 steps through `accelerate launch` with the shipped config, one process (one GPU), on a small
#    local text corpus; a checkpoint after each step (sharded), the final folder written with save_pretrained
"$PY" "$ROOT/benchmarks/gpu_check_parts.py" corpus "$WORK/corpus"
PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
PRECISION=bf16; [ "$DRY" = 1 ] && PRECISION=no
step fsdp "$PY" -m accelerate.commands.launch --config_file "$ROOT/configs/fsdp.yaml" --num_processes 1 \
  --main_process_port "$PORT" -m scratch_gpt_cli train --dataset "$WORK/corpus" --vocab-size 512 \
  --block-size 64 --per-device-batch-size 8 --hidden-size 64 --num-hidden-layers 2 --num-attention-heads 2 \
  --max-steps 2 --checkpoint-every 1 --eval-batches 1 --num-samples 0 --mixed-precision "$PRECISION" \
  --output-dir "$WORK/fsdp_run"

"$PY" "$ROOT/benchmarks/gpu_check_parts.py" report "$WORK" "$OUT" --dry-run "$DRY" || { [ "$STATUS" = 0 ] && STATUS=1; }
exit "$STATUS"
