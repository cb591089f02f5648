#!/bin/bash
set -u
R=/root/r26; O=$R/out; mkdir -p $O
cd /root/job
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 SCHEMABANK="python3 -m schemabank"
export SCHEMABANK_DATA_DIR=/root/data TORCHINDUCTOR_CACHE_DIR=/root/ic
step() { local name=$1 s rc; shift; s=$(date +%s); echo "$name start $s" >> $R/progress.txt; "$@"; rc=$?; echo "$name start=$s end=$(date +%s) rc=$rc" | tee -a $R/stamps.txt >> $R/progress.txt; return $rc; }
# B6: bench with both peers (layer scope, profiled); L3 (the best LoRA on the fast path) starts
# 170 s later, once our two models and the eager peer are timed, during the compiled peer's compilation
(sleep 170; MERGE=true SHRINK=true COMPILE=true EVAL_BATCH=1319 step L3 bash scripts/speed_study.sh lora $O; echo L3 > $R/mark3) &
ONLY=train PEERS=all PROFILE=5 step B6 bash scripts/speed_study.sh bench-layers $O
wait; echo done > $R/done
