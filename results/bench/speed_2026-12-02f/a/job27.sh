#!/bin/bash
# Issue 14, GPU job of 2026-12-02 (sixth session). Started by the last staging call (setsid), from
# the repo copy at $1. Every timed step is a part of scripts/speed_study.sh but G0.
set -u
R=/root/r27; O=$R/out; mkdir -p $O
cd "$1"
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
export SCHEMABANK_DATA_DIR=/root/data TORCHINDUCTOR_CACHE_DIR=/root/ic
SB="python3 -m schemabank"
SAMPLE="python3 /root/st/job/stack_sampler.py"
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
python3 -X importtime -c "import schemabank.training, schemabank.cli" 2> $O/importtime.txt
# G0: every GPU-only test
step G0 python3 -m pytest -q -rA tests/test_decode.py tests/test_runtime.py tests/test_bench.py -k cuda > $O/pytest_gpu.log 2>&1
echo G0 > $R/mark
export MERGE=true SHRINK=true COMPILE=true EVAL_BATCH=1319  # the runs' fast paths (bench-b192 reads none)
# R5: the whole run, empty caches, under the stack sampler (where the slow steps' time goes)
PROFILE_RUN="811:5" SCHEMABANK="$SAMPLE $O/stacks_cold.json.gz 0.005 -m schemabank" step R5 bash scripts/speed_study.sh run-cold $O
echo R5 > $R/mark
# R6: the same, warm caches, no sampler: the issue's <= 90 s figure
PROFILE_RUN="811:5" SCHEMABANK="$SB" step R6 bash scripts/speed_study.sh run-warm $O
echo R6 > $R/mark
# B7: batch 192, length-grouped, unpacked, layer scope (the >= 350k tok/s target)
SCHEMABANK="$SB" step B7 bash scripts/speed_study.sh bench-b192 $O
echo B7 > $R/mark
# R8: the warm run with lengths padded to multiples of 128 (fewer shapes, more padding)
mkdir -p $O/pad128
PAD=128 PROFILE_RUN="811:5" SCHEMABANK="$SB" step R8 bash scripts/speed_study.sh run-warm $O/pad128
echo R8 > $R/mark
# R7: warm, sampler, with a new length's step (53) under torch.profiler too
mkdir -p $O/r7
PROFILE_RUN="53:1 811:5" SCHEMABANK="$SAMPLE $O/stacks_warm.json.gz 0.005 -m schemabank" step R7 bash scripts/speed_study.sh run-warm $O/r7
echo done > $R/done
