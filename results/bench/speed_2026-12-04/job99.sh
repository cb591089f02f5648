#!/bin/bash
# Started (setsid) while job98.sh's batch-32 bench ran, to put the GPU tests before the rest: once
# that bench ended, stop job98.sh (its batch-192 bench and LoRA run), then the GPU tests (with
# 3a2c5b4's training.py and tests/test_compile.py copied over d627f73's) and the batch-192 bench.
# (Its pkill of job98.sh also stopped the device call that started it, whose command named it.)
while ! grep -q "B32 start=" /root/r98/progress.txt; do sleep 1; done
pkill -f job98.sh; pkill -f "speed_study.sh bench-b192"; pkill -f "schemabank bench"; sleep 2
source scripts/device_job.sh start /root/r99 "$1"
O=$R/out
export SCHEMABANK="python3 -m schemabank"
TORCHINDUCTOR_CACHE_DIR=/root/icG LIMIT=400 step GPUT python3 -m pytest -q -rA -p no:cacheprovider tests/test_capture.py tests/test_compile.py tests/test_training.py tests/test_bench.py tests/test_resume.py -k "cuda or never_waits or host_whole" > $O/gpu_tests.log 2>&1
(
  export STEP_GRAPH=true PAD=8 SDPA=cudnn TORCHINDUCTOR_CACHE_DIR=/root/icB192
  step B192 bash scripts/speed_study.sh bench-b192 $O/b192
)
echo done > $R/done
