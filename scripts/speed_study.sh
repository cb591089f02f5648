#!/usr/bin/env bash
# The speed figures on one GPU, part by part: every command behind a number in
# docs/performance.md. Usage: scripts/speed_study.sh PART [OUT]   (OUT defaults to runs/speed)
#   bench-eager    schemabank bench at the study's settings, eager step, with the PEFT peers
#   bench-layers   the same with training.compile (scope layers) and the compiled static decoder
#   bench-step     the same with training.compile (scope step); ONLY, PEERS as bench-layers
#   bench-eval     the GSM8K evaluation alone with the compiled static decoder (timed twice)
#   bench-b192     bench-layers' training part at batch 192, length-grouped, without the peers
#                  (PEERS=all adds them: plain PEFT eager ran out of the H200's memory there)
#   profile        scripts/profile_decoder.py: one batch decoded by HF generate, the static
#                  decoder eager, captured directly and compiled, with a torch.profiler table
#                  (ATTN picks the decoder's attention, EVAL_BATCH the batch)
#   run            the whole sb_b32_split50 run on the fast path, twice: cold caches, then warm
#   run-cold, run-warm   one of the two
#   run-plain      schemabank train --config sb_b32_split50.yaml with no --set at all (on one CUDA
#                  device its defaults are the fast path: training.compile, capture_step, the
#                  static decoder captured, shrinking, merged LoRA; the issue's own command)
#   warm-ab        a same-machine A/B of the run: cold then warm without AB (more arguments,
#                  e.g. AB="--set training.fuse_lora_a=true"), then cold then warm with
#                  it, each pair on its own empty cache under CACHES (default /tmp/sb_ab; A in
#                  a/, B in b/)
#   cache-check    the run twice (start from an empty TORCHINDUCTOR_CACHE_DIR), each under
#                  TORCH_LOGS naming every compiled graph's cache hit, miss or bypass, then
#                  scripts/cache_report.py: each run's counts (the second should hit everywhere)
#                  and, for each miss of the second, what in its cache key differs from the
#                  first's (CACHE_LOGS: the TORCH_LOGS, default at debug level, which logs the keys'
#                  parts)
#   decoders       the run's checkpoint evaluated again with HF generate, compared with
#                  schemabank compare (A: the static decoder, B: HF generate)
#   lora           the best LoRA (seed 42) on the fast path
# Environment: COMPILE (training.compile of the runs, default true), SCOPE
# (training.compile_scope, default layers), COMPILE_DECODER (eval.compile_decoder, default true),
# CAPTURE (eval.decoder_capture: graph, the default, or compile), ONLY (bench-layers: train or
# eval), SHRINK=true (eval.decoder_shrink: finished rows leave the decoder's batch), MERGE=true
# (eval.merge_lora: the LoRA weights merged into the base weights while GSM8K is generated), ATTN
# (eval.decoder_attention,
# default grouped, the static decoder's own; model: its SDPA), EVAL_BATCH (eval.batch_size, default the config's),
# MICRO (training.micro_batch_size of the benches and runs: each batch's examples sorted by length
# and cut into micro-batches of MICRO, each padded to its own longest; the same gradient, fewer
# padded tokens; slower with compiled layers on the H200, see docs/performance.md), PAD
# (training.pad_to_multiple_of), PACK=true (training.packing: several examples a row), MODE
# (training.compile_mode of the benches and runs: e.g. default, compiled without CUDA graphs, so
# nothing recorded for each new length), REGION (training.compile_region_layers: that many
# consecutive layers compiled as one region, fewer graphs to replay and record), STEP_GRAPH=true
# (training.capture_step: the whole step captured as one CUDA graph per stage and length), SDPA
# (training.attention_backend: the SDPA kernel of the training batches' attention), COMBO
# (training.compile_combo_kernels: inductor's combo kernels, small independent kernels as one;
# on by default, COMBO=false turns them off, COMBO=true names them in the benches' file names),
# FUSE (training.fuse_lora_a: q/k/v's and gate/up's LoRA A as one matmul each; on by default
# with compile, FUSE=false turns it off, FUSE=true names it in the benches' file names), PEERS
# (bench-layers and bench-b192: --peers; bench-layers defaults to all, bench-b192 to none),
# PROFILE (the training benches: --profile-steps, that many steps of each model profiled after the
# timed ones: the GPU's busy time, the host's launches, the top operations), PROFILE_RUN (the runs:
# schemabank train --profile-steps, one per window, e.g. "53:2 811:5": those steps of the run
# profiled, in its profile.json; a profiled run's compiled graphs have other cache keys, so give
# run-cold and run-warm the same PROFILE_RUN, or none, for a warm run to be warm), EXTRA (more
# arguments for the runs, e.g. "--set training.total_steps=48" for a short run).
# SCHEMABANK: the command (default schemabank; e.g. "python -m schemabank").
# TORCH_LOGS=recompiles shows why a step recompiles;
# TORCH_LOGS=torch._inductor.codecache,torch._functorch._aot_autograd.autograd_cache shows each
# compiled graph's cache hit, miss or bypass, and why (a warm run should hit). Leave out
# TORCH_LOGS=cudagraphs with the layers
# scope: its debug logging makes torch 2.11 fail an assertion when a graph is re-recorded
# (results/bench/speed_2026-12-01b/README.md).
set -u
PART=$1
OUT=${2:-runs/speed}
mkdir -p "$OUT"
SBC=${SCHEMABANK:-schemabank}
SB=configs/gsm8k/sb_b32_split50.yaml
LORA=configs/gsm8k/lora_b32_lr5e-4_r32_all.yaml
DEC="--set eval.decoder=static --set eval.compile_decoder=${COMPILE_DECODER:-true} --set eval.decoder_attention=${ATTN:-grouped}"
[ -n "${CAPTURE:-}" ] && DEC="$DEC --set eval.decoder_capture=$CAPTURE"
DEC="$DEC --set eval.decoder_shrink=${SHRINK:-false}"  # unset: off, as before the CUDA defaults
DEC="$DEC --set eval.merge_lora=${MERGE:-false}"
[ -n "${EVAL_BATCH:-}" ] && DEC="$DEC --set eval.batch_size=$EVAL_BATCH"
# the eager step and HF generate, which a CUDA device's defaults (the fast path) no longer are
EAGER="--set training.compile=false --set training.capture_step=false --set eval.decoder=hf --set eval.merge_lora=false"
TRAIN=""
[ -n "${MICRO:-}" ] && TRAIN="$TRAIN --set training.micro_batch_size=$MICRO"
[ -n "${PAD:-}" ] && TRAIN="$TRAIN --set training.pad_to_multiple_of=$PAD"
[ -n "${PACK:-}" ] && TRAIN="$TRAIN --set training.packing=$PACK"
[ -n "${MODE:-}" ] && TRAIN="$TRAIN --set training.compile_mode=$MODE"
[ -n "${REGION:-}" ] && TRAIN="$TRAIN --set training.compile_region_layers=$REGION"
TRAIN="$TRAIN --set training.capture_step=${STEP_GRAPH:-false}"
[ -n "${SDPA:-}" ] && TRAIN="$TRAIN --set training.attention_backend=$SDPA"
[ -n "${COMBO:-}" ] && TRAIN="$TRAIN --set training.compile_combo_kernels=$COMBO"
[ -n "${FUSE:-}" ] && TRAIN="$TRAIN --set training.fuse_lora_a=$FUSE"
case "${COMBO:-}" in true) CS=_combo ;; false) CS=_nocombo ;; *) CS="" ;; esac
case "${FUSE:-}" in true) FS=_fuse ;; false) FS=_nofuse ;; *) FS="" ;; esac
SUFFIX="${MICRO:+_micro$MICRO}${PAD:+_pad$PAD}${PACK:+_pack}${MODE:+_$MODE}${REGION:+_region$REGION}${STEP_GRAPH:+_captured}${SDPA:+_$SDPA}$CS$FS"  # the benches' file names say their settings
FAST="--set training.compile=${COMPILE:-true} --set training.compile_scope=${SCOPE:-layers} $DEC $TRAIN"
for w in ${PROFILE_RUN:-}; do FAST="$FAST --profile-steps $w"; done
FAST="$FAST ${EXTRA:-}"
BENCH="--steps 20 --warmup 15${PROFILE:+ --profile-steps $PROFILE}"
timed() {  # NAME COMMAND...: wall time of the command, appended to $OUT/times.txt
  local name=$1 t0 rc
  shift
  t0=$(date +%s.%N)
  "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  echo "$name rc=$rc wall_s=$(awk "BEGIN {print $(date +%s.%N) - $t0}")" | tee -a "$OUT/times.txt"
  return $rc
}
case $PART in
  bench-eager) timed bench_eager $SBC bench --config $SB $BENCH $EAGER --output "$OUT/bench_eager.json" ;;
  bench-layers)
    timed "bench_layers$SUFFIX" $SBC bench --config $SB $BENCH --set training.compile=true \
      --set training.compile_scope=layers $DEC $TRAIN ${ONLY:+--only $ONLY} --peers ${PEERS:-all} \
      --output "$OUT/bench_layers$SUFFIX.json" ;;
  bench-step)
    timed "bench_step$SUFFIX" $SBC bench --config $SB $BENCH --set training.compile=true \
      --set training.compile_scope=step $DEC $TRAIN ${ONLY:+--only $ONLY} --peers ${PEERS:-all} \
      --output "$OUT/bench_step$SUFFIX.json" ;;
  bench-eval)
    timed "bench_eval_${ATTN:-grouped}_${EVAL_BATCH:-256}${CAPTURE:+_$CAPTURE}" $SBC bench --config $SB --only eval $DEC \
      --output "$OUT/bench_eval_${ATTN:-grouped}_${EVAL_BATCH:-256}${CAPTURE:+_$CAPTURE}.json" ;;
  bench-b192)
    timed "bench_b192$SUFFIX" $SBC bench --config $SB $BENCH --only train --set training.compile=true \
      --set training.compile_scope=${SCOPE:-layers} --set training.batch_size=192 \
      --set training.group_by_length=true $TRAIN --peers ${PEERS:-none} --output "$OUT/bench_b192$SUFFIX.json" ;;
  profile)
    timed "profile_${ATTN:-grouped}_${EVAL_BATCH:-256}" ${PYTHON:-python3} scripts/profile_decoder.py --config $SB \
      --batch "${EVAL_BATCH:-256}" --attention "${ATTN:-grouped}" \
      --output "$OUT/profile_${ATTN:-grouped}_${EVAL_BATCH:-256}.json" ${PROFILE_ARGS:-} ;;
  run)
    timed run_cold $SBC train --config $SB $FAST --output-dir "$OUT/cold"
    timed run_warm $SBC train --config $SB $FAST --output-dir "$OUT/warm" ;;
  run-cold) timed run_cold $SBC train --config $SB $FAST --output-dir "$OUT/cold" ;;
  run-warm) timed run_warm $SBC train --config $SB $FAST --output-dir "$OUT/warm" ;;
  run-plain) timed run_plain $SBC train --config $SB --output-dir "$OUT/plain" ;;  # the defaults alone
  warm-ab)
    : "${AB:?AB: the arguments of run B, e.g. --set training.fuse_lora_a=true}"
    for v in a b; do
      X=""
      [ $v = b ] && X="$AB"
      rm -rf "${CACHES:-/tmp/sb_ab}/$v"
      TORCHINDUCTOR_CACHE_DIR="${CACHES:-/tmp/sb_ab}/$v" timed "ab_${v}_cold" $SBC train --config $SB $FAST $X --output-dir "$OUT/$v/cold"
      TORCHINDUCTOR_CACHE_DIR="${CACHES:-/tmp/sb_ab}/$v" timed "ab_${v}_warm" $SBC train --config $SB $FAST $X --output-dir "$OUT/$v/warm"
    done ;;
  cache-check)
    export TORCH_LOGS=${CACHE_LOGS:-+torch._inductor.codecache,+torch._functorch._aot_autograd.autograd_cache}
    timed cache_first $SBC train --config $SB $FAST --output-dir "$OUT/cache_first"
    timed cache_second $SBC train --config $SB $FAST --output-dir "$OUT/cache_second"
    ${PYTHON:-python3} scripts/cache_report.py "$OUT/cache_first.log" "$OUT/cache_second.log" | tee "$OUT/cache_report.txt" ;;
  decoders)
    timed decoders_hf $SBC eval --checkpoint "$OUT/cold/sb_b32_split50_seed42/checkpoint" \
      --set eval.decoder=hf --set eval.compile_decoder=false --set eval.decoder_attention=null --output "$OUT/hf_eval_results.json"
    $SBC compare "$OUT/cold/sb_b32_split50_seed42/results.json" "$OUT/hf_eval_results.json"
    ;;
  lora) timed lora $SBC train --config $LORA $FAST --output-dir "$OUT/lora" ;;
  *) echo "unknown part $PART" >&2; exit 2 ;;
esac
