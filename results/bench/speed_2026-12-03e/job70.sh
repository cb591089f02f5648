#!/bin/bash
# Issue 14, fifteenth session (2026-12-03), lease 1, started by the last staging call (setsid)
# from a copy of the repository at $1: branch issue14-next (cuDNN's SDPA kernel the default on
# the H200 for batches in few shapes; the captured step's gradients made inside each graph).
# The GPU tests; the batch-192 bench (multiples of 8, the default attention, 20 timed batches
# profiled again); whole sb_b32_split50 runs on the fast path (default attention): seed 42 cold,
# seed 43 on seed 42's cache, seed 42 warm, seed 44; then the batch-192 bench with flash
# attention (unprofiled) for the same machine's comparison.
set -u
R=/root/r70; O=$R/out; mkdir -p $O
cd "$1"
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 SCHEMABANK_DATA_DIR=/root/data
step() {  # NAME CMD...: stamps.txt gets start, end (to the ns), rc
  local name=$1 s rc; shift; s=$(date +%s.%N)
  echo "$name start $s" >> $R/progress.txt
  timeout ${LIMIT:-600} "$@"; rc=$?
  echo "$name start=$s end=$(date +%s.%N) rc=$rc" | tee -a $R/stamps.txt >> $R/progress.txt
  return $rc
}
python3 -c "import torch, transformers, peft, sys; print(sys.version.split()[0], torch.__version__, transformers.__version__, peft.__version__, torch.cuda.get_device_name(), 'cudnn', torch.backends.cudnn.version())" > $R/versions.txt 2>&1
python3 -c "from schemabank.runtime import source_sha256; print('source_sha256', source_sha256())" >> $R/versions.txt 2>&1
TORCHINDUCTOR_CACHE_DIR=/root/icG step G python3 -m pytest -q -rA tests/test_capture.py tests/test_compile.py tests/test_training.py tests/test_bench.py -k "cuda or never_waits" > $O/gpu_tests.log 2>&1
SCHEMABANK="python3 $PWD/results/bench/speed_2026-12-03d/trace_patch.py" STEP_GRAPH=true PROFILE=20 PAD=8 TORCHINDUCTOR_CACHE_DIR=/root/ic8 step P8 bash scripts/speed_study.sh bench-b192 $O/p8
(
  export SCHEMABANK="python3 -m schemabank" STEP_GRAPH=true MERGE=true SHRINK=true EVAL_BATCH=1319 COMPILE=true TORCHINDUCTOR_CACHE_DIR=/root/icC
  step C42 bash scripts/speed_study.sh run-cold $O/c42
  EXTRA="--set experiment.seed=43" step W43 bash scripts/speed_study.sh run-warm $O/w43
  step R42 bash scripts/speed_study.sh run-warm $O/r42
  EXTRA="--set experiment.seed=44" step W44 bash scripts/speed_study.sh run-warm $O/w44
)
SCHEMABANK="python3 -m schemabank" STEP_GRAPH=true PAD=8 SDPA=flash TORCHINDUCTOR_CACHE_DIR=/root/ic8f step P8F bash scripts/speed_study.sh bench-b192 $O/p8f
echo done > $R/done
