#!/bin/bash
# Issue 14, thirteenth session (2026-12-03), lease 1, started by the last staging call (setsid)
# from a copy of the repository at $1: the GPU tests (training.attention_backend's among them);
# the batch-192 bench with lengths padded to multiples of 16 and 8 (64 before), each on torch's
# attention kernel (flash) and on cuDNN's (training.attention_backend: cudnn); the whole run
# cold and warm; the batch-32 bench on cuDNN's kernel and on torch's; a second warm run.
# Each part is one of scripts/speed_study.sh's; the benches through ../speed_2026-12-03b/
# bench_patch.py (the profile's top 300 kernels kept).
set -u
R=/root/r50; O=$R/out; mkdir -p $O
cd "$1"
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 SCHEMABANK_DATA_DIR=/root/data
step() {  # NAME CMD...: stamps.txt gets start, end (to the ns), rc
  local name=$1 s rc; shift; s=$(date +%s.%N)
  echo "$name start $s" >> $R/progress.txt
  timeout ${LIMIT:-600} "$@"; rc=$?
  echo "$name start=$s end=$(date +%s.%N) rc=$rc" | tee -a $R/stamps.txt >> $R/progress.txt
  return $rc
}
mtime() { echo "$1 results_mtime=$(stat -c %.9Y $2/sb_b32_split50_seed42/results.json 2>/dev/null)" >> $R/stamps.txt; }
python3 -c "import torch, transformers, peft, sys; print(sys.version.split()[0], torch.__version__, transformers.__version__, peft.__version__, torch.cuda.get_device_name(), 'cudnn', torch.backends.cudnn.version())" > $R/versions.txt 2>&1
python3 -c "from schemabank.runtime import source_sha256; print('source_sha256', source_sha256())" >> $R/versions.txt 2>&1
nvidia-smi > $R/nvidia-smi.txt 2>&1
TORCHINDUCTOR_CACHE_DIR=/root/icG step G python3 -m pytest -q -rA tests/test_capture.py tests/test_compile.py tests/test_training.py tests/test_bench.py -k "cuda or never_waits" > $O/gpu_tests.log 2>&1
export SCHEMABANK="python3 $PWD/results/bench/speed_2026-12-03b/bench_patch.py" STEP_GRAPH=true PROFILE=3
PAD=16 TORCHINDUCTOR_CACHE_DIR=/root/ic16 step P16 bash scripts/speed_study.sh bench-b192 $O/p16
PAD=16 SDPA=cudnn TORCHINDUCTOR_CACHE_DIR=/root/ic16c step P16C bash scripts/speed_study.sh bench-b192 $O/p16c
(
  unset PROFILE
  export SCHEMABANK="python3 -m schemabank" MERGE=true SHRINK=true EVAL_BATCH=1319 COMPILE=true TORCHINDUCTOR_CACHE_DIR=/root/icC
  step C1 bash scripts/speed_study.sh run-cold $O/c1; mtime C1 $O/c1/cold
  step W1 bash scripts/speed_study.sh run-warm $O/w1; mtime W1 $O/w1/warm
)
PAD=8 TORCHINDUCTOR_CACHE_DIR=/root/ic16 step P8 bash scripts/speed_study.sh bench-b192 $O/p8
PAD=8 SDPA=cudnn TORCHINDUCTOR_CACHE_DIR=/root/ic16c step P8C bash scripts/speed_study.sh bench-b192 $O/p8c
ONLY=train PEERS=none SDPA=cudnn TORCHINDUCTOR_CACHE_DIR=/root/icLc step BLC bash scripts/speed_study.sh bench-layers $O/blc
ONLY=train PEERS=none TORCHINDUCTOR_CACHE_DIR=/root/icL step BL bash scripts/speed_study.sh bench-layers $O/bl
(
  unset PROFILE
  export SCHEMABANK="python3 -m schemabank" MERGE=true SHRINK=true EVAL_BATCH=1319 COMPILE=true TORCHINDUCTOR_CACHE_DIR=/root/icC
  step W2 bash scripts/speed_study.sh run-warm $O/w2; mtime W2 $O/w2/warm
)
echo done > $R/done
