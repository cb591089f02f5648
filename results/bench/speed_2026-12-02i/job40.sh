#!/bin/bash
# Issue 14, ninth session (2026-12-02): training.capture_step on the H200. Started by the last
# staging call (setsid), from the repo copy at $1. Every run is a part of scripts/speed_study.sh.
set -u
R=/root/r40; O=$R/out; mkdir -p $O
cd "$1"
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 SCHEMABANK_DATA_DIR=/root/data
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
nvidia-smi > $R/nvidia-smi.txt 2>&1
export MERGE=true SHRINK=true COMPILE=true EVAL_BATCH=1319  # the runs' fast paths
export TORCH_LOGS=torch._inductor.codecache,torch._functorch._aot_autograd.autograd_cache
mkdir -p $O/cap $O/trees $O/b192
TORCHINDUCTOR_CACHE_DIR=/root/icd step D env -u TORCH_LOGS python3 -m pytest -q -s -rA tests/test_zz_diag.py tests/test_capture.py -k "diag or cuda" > $O/diag.log 2>&1
# G (GPU tests, own cache) beside C1 (captured step, empty cache); then C2 warm, alone

STEP_GRAPH=true TORCHINDUCTOR_CACHE_DIR=/root/icC step C1 bash scripts/speed_study.sh run-cold $O/cap

STEP_GRAPH=true TORCHINDUCTOR_CACHE_DIR=/root/icC step C2 bash scripts/speed_study.sh run-warm $O/cap
unset TORCH_LOGS
STEP_GRAPH=true TORCHINDUCTOR_CACHE_DIR=/root/icC step B1 bash scripts/speed_study.sh bench-b192 $O/b192
TORCHINDUCTOR_CACHE_DIR=/root/icT step B2 bash scripts/speed_study.sh bench-b192 $O/b192
export TORCH_LOGS=torch._inductor.codecache,torch._functorch._aot_autograd.autograd_cache


echo done > $R/done
