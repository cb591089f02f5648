#!/bin/bash
# Issue 14, eighteenth session, started by the last staging call (setsid) from a copy of the
# repository at $1 (main with training.fuse_lora_a on by default with compile). The GPU tests;
# batch 192 at the new defaults (multiples of 8, step captured, cuDNN's attention); the whole
# sb_b32_split50 run cold then warm on its own cache; the same warm run again after Python's
# bytecode of torch, sympy, the source and the staged packages was written once (as pip does at
# install: the machines' image keeps none); the best LoRA, cold on its own cache.
source scripts/device_job.sh start /root/r91 "$1"
O=$R/out
export SCHEMABANK="python3 -m schemabank"
TORCHINDUCTOR_CACHE_DIR=/root/icG step G python3 -m pytest -q -rA tests/test_capture.py tests/test_compile.py tests/test_training.py tests/test_bench.py -k "cuda or never_waits" > $O/gpu_tests.log 2>&1
(
  export STEP_GRAPH=true PAD=8 SDPA=cudnn
  TORCHINDUCTOR_CACHE_DIR=/root/icB step B192 bash scripts/speed_study.sh bench-b192 $O/b192
)
(
  export STEP_GRAPH=true MERGE=true SHRINK=true EVAL_BATCH=1319 COMPILE=true
  export TORCHINDUCTOR_CACHE_DIR=/root/icD
  step C42 bash scripts/speed_study.sh run-cold $O/d42
  step W42 bash scripts/speed_study.sh run-warm $O/d42
  SP=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  PYTHONDONTWRITEBYTECODE= step PYC python3 -m compileall -q -j 16 $SP/torch $SP/sympy $PWD/src /tmp/site > $O/compileall.log 2>&1
  step W42pyc bash scripts/speed_study.sh run-warm $O/d42pyc
  TORCHINDUCTOR_CACHE_DIR=/root/icL step L42 bash scripts/speed_study.sh lora $O/l42
)
echo done > $R/done
