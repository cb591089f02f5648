#!/bin/bash
# Issue 14, fourteenth session, lease 2, second job (started from a copy of the repository at
# $1 once the first job was stopped): Trainer finds the attention kernel when it is built (found
# lazily inside the step, it had been torch's choice in the first job's bench and run). The GPU
# tests; the batch-192 bench (multiples of 8, the default attention: cuDNN's), 20 timed batches
# profiled again; one whole sb_b32_split50 run (seed 42) on the fast path with the default
# attention (its compiled graphs new: cuDNN's attention is part of them).
set -u
R=/root/r61; O=$R/out; mkdir -p $O
cd "$1"
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 SCHEMABANK_DATA_DIR=/root/data
step() {  # NAME CMD...: stamps.txt gets start, end (to the ns), rc
  local name=$1 s rc; shift; s=$(date +%s.%N)
  echo "$name start $s" >> $R/progress.txt
  timeout ${LIMIT:-600} "$@"; rc=$?
  echo "$name start=$s end=$(date +%s.%N) rc=$rc" | tee -a $R/stamps.txt >> $R/progress.txt
  return $rc
}
python3 -c "from schemabank.runtime import source_sha256; print('source_sha256', source_sha256())" > $R/versions.txt 2>&1
TORCHINDUCTOR_CACHE_DIR=/root/icG step G python3 -m pytest -q -rA tests/test_capture.py tests/test_compile.py tests/test_training.py tests/test_bench.py -k "cuda or never_waits" > $O/gpu_tests.log 2>&1
SCHEMABANK="python3 $PWD/results/bench/speed_2026-12-03d/trace_patch.py" STEP_GRAPH=true PROFILE=20 PAD=8 TORCHINDUCTOR_CACHE_DIR=/root/ic8c step P8D bash scripts/speed_study.sh bench-b192 $O/p8d
SCHEMABANK="python3 -m schemabank" STEP_GRAPH=true MERGE=true SHRINK=true EVAL_BATCH=1319 COMPILE=true TORCHINDUCTOR_CACHE_DIR=/root/icC step R42 bash scripts/speed_study.sh run-cold $O/r42
echo done > $R/done
