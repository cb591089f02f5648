#!/usr/bin/env bash
# lm-evaluation-harness's own gsm8k task (its defaults: 5-shot, 256 new tokens) on the first 200
# test problems, for the base model and the two runs that scripts/speed_study.sh's parts run-cold
# and lora trained: the figures in docs/usage.md ("Evaluate with lm-evaluation-harness").
# Usage: scripts/lm_eval_study.sh [OUT] [DATA_DIR]   (OUT: speed_study.sh's, default runs/speed;
# DATA_DIR holds gsm8k/{train,test}.jsonl, default ../shared/data). Needs the extra lm-eval.
# SCHEMABANK: the command (default schemabank; e.g. "python -m schemabank").
set -u
OUT=${1:-runs/speed}
DATA=${2:-../shared/data}
SBC=${SCHEMABANK:-schemabank}
mkdir -p "$OUT/lm_eval"
lme() {  # NAME MODEL-ARGS...: one model on gsm8k, lm-eval's JSON and samples under $OUT/lm_eval
  local name=$1
  shift
  $SBC lm-eval "$@" --tasks gsm8k --data-dir "$DATA" --no-builtin-tasks --limit 200 \
    --batch-size 32 --output "$OUT/lm_eval/$name.json" --log-samples > "$OUT/lm_eval/$name.log" 2>&1
  echo "$name rc=$?"
}
lme lm_base --base-model smollm2-135m-instruct
lme lm_sb --path "$OUT/cold/sb_b32_split50_seed42"
lme lm_lora --path "$OUT/lora/lora_b32_lr5e-4_r32_all_seed42"
