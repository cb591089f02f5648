#!/usr/bin/env bash
# Issue 14's figures on one GPU, part by part: every command behind a number in the README's
# Speed section. Usage: scripts/speed_study.sh PART [OUT]   (OUT defaults to runs/speed)
#   bench-eager    schemabank bench at the study's settings, eager step, with the PEFT peers
#   bench-layers   the same with training.compile (scope layers) and the compiled static decoder
#   bench-step     the same with training.compile (scope step)
#   run            the whole sb_b32_split50 run on the fast path, twice: cold caches, then warm
#   decoders       the run's checkpoint evaluated again with HF generate: answers compared
#   lora           the best LoRA (seed 42) on the fast path
# TORCH_LOGS=cudagraphs,recompiles shows why a step runs without CUDA graphs or recompiles.
set -u
PART=$1
OUT=${2:-runs/speed}
mkdir -p "$OUT"
SB=configs/gsm8k/sb_b32_split50.yaml
LORA=configs/gsm8k/lora_b32_lr5e-4_r32_all.yaml
DEC="--set eval.decoder=static --set eval.compile_decoder=true"
FAST="--set training.compile=true --set training.compile_scope=${SCOPE:-layers} $DEC"
BENCH="--steps 20 --warmup 15"
timed() {  # NAME COMMAND...: wall time of the command, appended to $OUT/times.txt
  local name=$1 t0 rc
  shift
  t0=$(date +%s.%N)
  "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  echo "$name rc=$rc wall_s=$(echo "$(date +%s.%N) - $t0" | bc)" | tee -a "$OUT/times.txt"
  return $rc
}
case $PART in
  bench-eager) timed bench_eager schemabank bench --config $SB $BENCH --output "$OUT/bench_eager.json" ;;
  bench-layers)
    timed bench_layers schemabank bench --config $SB $BENCH --set training.compile=true \
      --set training.compile_scope=layers $DEC --output "$OUT/bench_layers.json" ;;
  bench-step)
    timed bench_step schemabank bench --config $SB $BENCH --set training.compile=true \
      --set training.compile_scope=step $DEC --output "$OUT/bench_step.json" ;;
  run)
    timed run_cold schemabank train --config $SB $FAST --output-dir "$OUT/cold"
    timed run_warm schemabank train --config $SB $FAST --output-dir "$OUT/warm" ;;
  decoders)
    timed decoders_hf schemabank eval --checkpoint "$OUT/cold/sb_b32_split50_seed42/checkpoint" \
      --set eval.decoder=hf --output "$OUT/hf_eval_results.json"
    python - "$OUT/cold/sb_b32_split50_seed42/results.json" "$OUT/hf_eval_results.json" <<'PY'
import json, sys
a, b = (json.load(open(p))["gsm8k"] for p in sys.argv[1:])
pa, pb = ({x["index"]: x for x in g["problems"]} for g in (a, b))
diff = sum(pa[i]["flexible_pred"] != pb[i]["flexible_pred"] for i in pa)
print(f"static decoder: {a['strict']['correct']} strict correct; HF generate: "
      f"{b['strict']['correct']}; the extracted answers of {diff} of {len(pa)} problems differ")
PY
    ;;
  lora) timed lora schemabank train --config $LORA $FAST --output-dir "$OUT/lora" ;;
  *) echo "unknown part $PART" >&2; exit 2 ;;
esac
