#!/bin/bash
# Issue 14, second GPU job of 2026-12-02 (fourth session). Started by the last staging call
# (setsid), from the repo copy at $1. Every timed step is a part of scripts/speed_study.sh, but
# E2 (one schemabank eval of R2's checkpoint) and C2 (schemabank compare).
set -u
R=/root/r24; O=$R/out; mkdir -p $O
cd "$1"
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 SCHEMABANK="python3 -m schemabank"
export SCHEMABANK_DATA_DIR=/root/data TORCHINDUCTOR_CACHE_DIR=/root/ic
step() {  # NAME CMD...: stamps.txt gets start, end, rc
  local name=$1 s rc; shift; s=$(date +%s)
  echo "$name start $s" >> $R/progress.txt
  "$@"; rc=$?
  echo "$name start=$s end=$(date +%s) rc=$rc" | tee -a $R/stamps.txt >> $R/progress.txt
  return $rc
}
python3 -c "import torch, transformers, peft, sys; print(sys.version.split()[0], torch.__version__, transformers.__version__, peft.__version__, torch.cuda.get_device_name())" > $R/versions.txt 2>&1
python3 -c "from schemabank.runtime import source_sha256; print('source_sha256', source_sha256())" >> $R/versions.txt 2>&1
# R2: a whole run, layer scope, unpacked (padded batches without their attention mask now),
# empty compile cache; GSM8K in one batch of 1,319, captured step, shrinking, LoRA merged
MERGE=true SHRINK=true COMPILE=true EVAL_BATCH=1319 TORCH_LOGS=recompiles step R2 bash scripts/speed_study.sh run-cold $O
# E2: R2's checkpoint evaluated again, LoRA not merged (the rest the same); C2 compares
CK=$O/cold/sb_b32_split50_seed42
step E2 python3 -m schemabank eval --checkpoint $CK/checkpoint --set eval.merge_lora=false \
  --output $O/unmerged/results.json > $O/eval_unmerged.log 2>&1
step C2 python3 -m schemabank compare $CK/results.json $O/unmerged/results.json > $O/compare_merge.txt 2>&1
echo R2E2 > $R/mark
# B3: the bench on the same unpacked batches, layer scope, no peers, profiled (warmup: three
# visits of every shape now)
ONLY=train PEERS=none PROFILE=5 step B3 bash scripts/speed_study.sh bench-layers $O
echo B3 > $R/mark
# L2: the best LoRA on the fast path (accuracy), the same settings as R2
MERGE=true SHRINK=true COMPILE=true EVAL_BATCH=1319 step L2 bash scripts/speed_study.sh lora $O
echo done > $R/done
