#!/bin/bash
# Issue 14, first GPU job of 2026-12-02 (fifth session). Started by the last staging call
# (setsid), from the repo copy at $1. Every timed step is a part of scripts/speed_study.sh but G0.
set -u
R=/root/r25; O=$R/out; mkdir -p $O
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
nvidia-smi > $R/nvidia-smi.txt 2>&1
# G0: every GPU-only test (the changes since 20b2308 ran on the CPU only)
step G0 python3 -m pytest -q -rA tests/test_decode.py tests/test_runtime.py tests/test_bench.py -k cuda > $O/pytest_gpu.log 2>&1
echo G0 > $R/mark
# R3, R4: the whole run, layer scope, twice: empty caches, then warm (the issue's <= 90 s target)
MERGE=true SHRINK=true COMPILE=true EVAL_BATCH=1319 TORCH_LOGS=recompiles step R3 bash scripts/speed_study.sh run-cold $O
MERGE=true SHRINK=true COMPILE=true EVAL_BATCH=1319 TORCH_LOGS=recompiles step R4 bash scripts/speed_study.sh run-warm $O
echo R > $R/mark
# B4: bench, layer scope, no peers, profiled, with each block's time (why the baseline times slow)
ONLY=train PEERS=none PROFILE=5 step B4 bash scripts/speed_study.sh bench-layers $O
echo B4 > $R/mark
# B5: the same with the whole step compiled (step scope; causal attention without a mask now)
ONLY=train PEERS=none PROFILE=5 step B5 bash scripts/speed_study.sh bench-step $O
echo done > $R/done
