#!/bin/bash
# Issue 14, tenth session (2026-12-02), second lease: the captured step with the LM loss on the answer positions (padded to 512), cold
# and warm; the bench at the study's settings and at batch 192; the GPU tests. Started by the
# last staging call (setsid), from a copy of the repository at $1. Runs: scripts/speed_study.sh.
set -u
R=/root/r42; O=$R/out; mkdir -p $O
cd "$1"
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 SCHEMABANK_DATA_DIR=/root/data
export SCHEMABANK="python3 -m schemabank"
step() {  # NAME CMD...: stamps.txt gets start, end, rc
  local name=$1 s rc; shift; s=$(date +%s)
  echo "$name start $s" >> $R/progress.txt
  timeout 900 "$@"; rc=$?
  echo "$name start=$s end=$(date +%s) rc=$rc" | tee -a $R/stamps.txt >> $R/progress.txt
  return $rc
}
python3 -c "import torch, transformers, peft, sys; print(sys.version.split()[0], torch.__version__, transformers.__version__, peft.__version__, torch.cuda.get_device_name())" > $R/versions.txt 2>&1
python3 -c "from schemabank.runtime import source_sha256; print('source_sha256', source_sha256())" >> $R/versions.txt 2>&1
nvidia-smi > $R/nvidia-smi.txt 2>&1
export MERGE=true SHRINK=true EVAL_BATCH=1319  # the runs' fast evaluation
TORCHINDUCTOR_CACHE_DIR=/root/icG step G python3 -m pytest -q -rA tests/test_capture.py tests/test_compile.py tests/test_training.py -k "cuda or never_waits" > $O/gpu_tests.log 2>&1
STEP_GRAPH=true PEERS=eager PROFILE=3 TORCHINDUCTOR_CACHE_DIR=/root/icL step BL bash scripts/speed_study.sh bench-layers $O/bench
STEP_GRAPH=true TORCHINDUCTOR_CACHE_DIR=/root/icB step B1 bash scripts/speed_study.sh bench-b192 $O/bench
COMPILE=true STEP_GRAPH=true TORCHINDUCTOR_CACHE_DIR=/root/icC step C1 bash scripts/speed_study.sh run-cold $O/cap
COMPILE=true STEP_GRAPH=true TORCHINDUCTOR_CACHE_DIR=/root/icC step C2 bash scripts/speed_study.sh run-warm $O/cap
echo done > $R/done
