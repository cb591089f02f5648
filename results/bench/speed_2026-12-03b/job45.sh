#!/bin/bash
# Issue 14, twelfth session (2026-12-03), lease 1: the compiled loss head (this session's change)
# on the GPU: the GPU tests; the bench at the study's settings and at batch 192 with every
# kernel profiled, the loss compiled and eager (batch 192: padding multiples 64 and 16 too);
# the whole run cold and warm; the best LoRA. Started by the last staging call (setsid) from a copy of the repository at $1.
# Runs: parts of scripts/speed_study.sh, the benches through bench_patch.py (top 300 kernels in
# the profile; EAGER_CE=1: the loss eager, as before).
set -u
R=/root/r45; O=$R/out; mkdir -p $O
cd "$1"
J=$PWD/results/bench/speed_2026-12-03b
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 SCHEMABANK_DATA_DIR=/root/data
step() {  # NAME CMD...: stamps.txt gets start, end (to the ns), rc
  local name=$1 s rc; shift; s=$(date +%s.%N)
  echo "$name start $s" >> $R/progress.txt
  timeout ${LIMIT:-600} "$@"; rc=$?
  echo "$name start=$s end=$(date +%s.%N) rc=$rc" | tee -a $R/stamps.txt >> $R/progress.txt
  return $rc
}
mtime() { echo "$1 results_mtime=$(stat -c %.9Y $2/sb_b32_split50_seed42/results.json 2>/dev/null)" >> $R/stamps.txt; }
python3 -c "import torch, transformers, peft, sys; print(sys.version.split()[0], torch.__version__, transformers.__version__, peft.__version__, torch.cuda.get_device_name())" > $R/versions.txt 2>&1
python3 -c "from schemabank.runtime import source_sha256; print('source_sha256', source_sha256())" >> $R/versions.txt 2>&1
nvidia-smi > $R/nvidia-smi.txt 2>&1
TORCHINDUCTOR_CACHE_DIR=/root/icG step G python3 -m pytest -q -rA tests/test_capture.py tests/test_compile.py tests/test_training.py tests/test_bench.py -k "cuda or never_waits" > $O/gpu_tests.log 2>&1
export SCHEMABANK="python3 $J/bench_patch.py" STEP_GRAPH=true PROFILE=3
ONLY=train PEERS=eager TORCHINDUCTOR_CACHE_DIR=/root/icL step BL bash scripts/speed_study.sh bench-layers $O/bl
ONLY=train EAGER_CE=1 PEERS=none TORCHINDUCTOR_CACHE_DIR=/root/icL step BLE bash scripts/speed_study.sh bench-layers $O/ble
TORCHINDUCTOR_CACHE_DIR=/root/ic64 step P64 bash scripts/speed_study.sh bench-b192 $O/p64
EAGER_CE=1 TORCHINDUCTOR_CACHE_DIR=/root/ic64 step E64 bash scripts/speed_study.sh bench-b192 $O/e64
PAD=16 TORCHINDUCTOR_CACHE_DIR=/root/ic16 step P16 bash scripts/speed_study.sh bench-b192 $O/p16
unset PROFILE
export SCHEMABANK="python3 -m schemabank" MERGE=true SHRINK=true EVAL_BATCH=1319 COMPILE=true TORCHINDUCTOR_CACHE_DIR=/root/icC
step C1 bash scripts/speed_study.sh run-cold $O/c1; mtime C1 $O/c1/cold
step W1 bash scripts/speed_study.sh run-warm $O/w1; mtime W1 $O/w1/warm
step LR bash scripts/speed_study.sh lora $O/lr
echo done > $R/done
