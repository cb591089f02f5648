#!/bin/bash
# Issue 14, GPU job of 2026-12-02 (seventh session). Started by the last staging call (setsid),
# from the repo copy at $1. Every timed step but G1 is a part of scripts/speed_study.sh.
set -u
R=/root/r29; O=$R/out; mkdir -p $O
cd "$1"
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
export SCHEMABANK_DATA_DIR=/root/data TORCHINDUCTOR_CACHE_DIR=/root/ic
export SCHEMABANK="python3 -m schemabank"
step() {  # NAME CMD...: stamps.txt gets start, end, rc
  local name=$1 s rc; shift; s=$(date +%s)
  echo "$name start $s" >> $R/progress.txt
  timeout 900 "$@"; rc=$?
  echo "$name start=$s end=$(date +%s) rc=$rc" | tee -a $R/stamps.txt >> $R/progress.txt
  echo $name > $R/mark
  return $rc
}
python3 -c "import torch, transformers, peft, sys; print(sys.version.split()[0], torch.__version__, transformers.__version__, peft.__version__, torch.cuda.get_device_name())" > $R/versions.txt 2>&1
python3 -c "from schemabank.runtime import source_sha256; print('source_sha256', source_sha256())" >> $R/versions.txt 2>&1
git log --oneline -1 >> $R/versions.txt 2>&1
nvidia-smi > $R/nvidia-smi.txt 2>&1
# G1: every GPU-only test (the new regions' one included)
step G1 python3 -m pytest -q -rA tests/test_decode.py tests/test_runtime.py tests/test_bench.py tests/test_training.py tests/test_compile.py -k "cuda or never_waits" > $O/pytest_gpu.log 2>&1
export MERGE=true SHRINK=true COMPILE=true EVAL_BATCH=1319  # the runs' fast paths (bench-b192 reads none)
# R3/R4: layers compiled in regions of 10 (3 regions): empty caches with steps 811-815 profiled, then warm
mkdir -p $O/region10
REGION=10 PROFILE_RUN="811:5" step R3 bash scripts/speed_study.sh run-cold $O/region10
REGION=10 step R4 bash scripts/speed_study.sh run-warm $O/region10
# R1/R2: each layer compiled on its own (as before), since the sync fix (1c7db38): cold with the profile, warm without
mkdir -p $O/layers
PROFILE_RUN="811:5" step R1 bash scripts/speed_study.sh run-cold $O/layers
step R2 bash scripts/speed_study.sh run-warm $O/layers
# B5: batch 192, length-grouped, layers one by one, 5 steps of each model profiled
PROFILE=5 step B5 bash scripts/speed_study.sh bench-b192 $O
# R6: warm, torch.compile without CUDA graphs (nothing recorded at a new length)
mkdir -p $O/default
MODE=default step R6 bash scripts/speed_study.sh run-warm $O/default
# R7: the whole decoder as one region, empty caches for it
mkdir -p $O/region30
REGION=30 step R7 bash scripts/speed_study.sh run-cold $O/region30
REGION=30 step R8 bash scripts/speed_study.sh run-warm $O/region30
echo done > $R/done
