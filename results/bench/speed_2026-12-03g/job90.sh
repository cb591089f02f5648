#!/bin/bash
# Issue 14, seventeenth session, started by the last staging call (setsid) from a copy of the
# repository at $1 (main). The GPU tests (with the captured step's new fuse_lora_a variant);
# batch 192 (multiples of 8, step captured, cuDNN's attention, combo kernels) with and without
# training.fuse_lora_a, on one machine; the same-machine warm A/B of the whole sb_b32_split50
# run without and with combo kernels (warm-ab); the run with combo kernels and fuse_lora_a,
# cold then warm on its own cache.
source scripts/device_job.sh start /root/r90 "$1"
O=$R/out
export SCHEMABANK="python3 -m schemabank"
TORCHINDUCTOR_CACHE_DIR=/root/icG step G python3 -m pytest -q -rA tests/test_capture.py tests/test_compile.py tests/test_training.py tests/test_bench.py -k "cuda or never_waits" > $O/gpu_tests.log 2>&1
(
  export STEP_GRAPH=true PAD=8 SDPA=cudnn COMBO=true
  FUSE=true TORCHINDUCTOR_CACHE_DIR=/root/icF step F192 bash scripts/speed_study.sh bench-b192 $O/b192
  TORCHINDUCTOR_CACHE_DIR=/root/icK step K192 bash scripts/speed_study.sh bench-b192 $O/b192
)
(
  export STEP_GRAPH=true MERGE=true SHRINK=true EVAL_BATCH=1319 COMPILE=true
  AB="--set training.compile_combo_kernels=true" CACHES=/root/ab LIMIT=900 step AB bash scripts/speed_study.sh warm-ab $O/ab
  export COMBO=true FUSE=true TORCHINDUCTOR_CACHE_DIR=/root/icCF
  step CF42 bash scripts/speed_study.sh run-cold $O/cf42
  step RF42 bash scripts/speed_study.sh run-warm $O/cf42
)
echo done > $R/done
