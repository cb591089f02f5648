#!/bin/bash
# Issue 14, sixteenth session, started by the last staging call (setsid) from a copy of the
# repository at $1 (main). The GPU tests; batch 192 (multiples of 8, step captured, cuDNN's
# attention) with inductor's combo kernels: as they are (K8), with up to 32 kernels a combo
# kernel (K32; inductor's default 8), and that with cuBLASLt for the matmuls (K32L);
# whole sb_b32_split50 runs on the fast path with combo kernels: seed 42 with an empty cache, the
# same warm, seeds 43 and 44 on seed 42's cache.
source scripts/device_job.sh start /root/r80 "$1"
O=$R/out
export SCHEMABANK="python3 -m schemabank"
PATCH="python3 $PWD/results/bench/speed_2026-12-03f/inductor_patch.py"
TORCHINDUCTOR_CACHE_DIR=/root/icG step G python3 -m pytest -q -rA tests/test_capture.py tests/test_compile.py tests/test_training.py tests/test_bench.py -k "cuda or never_waits" > $O/gpu_tests.log 2>&1
(
  export STEP_GRAPH=true PAD=8 SDPA=cudnn COMBO=true
  TORCHINDUCTOR_CACHE_DIR=/root/ic8 step K8 bash scripts/speed_study.sh bench-b192 $O/k8
  SCHEMABANK="$PATCH" INDUCTOR_SET=combo_kernel_max_num_nodes=32 TORCHINDUCTOR_CACHE_DIR=/root/ic32 step K32 bash scripts/speed_study.sh bench-b192 $O/k32
)
(
  export STEP_GRAPH=true MERGE=true SHRINK=true EVAL_BATCH=1319 COMPILE=true COMBO=true TORCHINDUCTOR_CACHE_DIR=/root/icC
  step C42 bash scripts/speed_study.sh run-cold $O/c42
  step R42 bash scripts/speed_study.sh run-warm $O/r42
  EXTRA="--set experiment.seed=43" step W43 bash scripts/speed_study.sh run-warm $O/w43
)
STEP_GRAPH=true PAD=8 SDPA=cudnn COMBO=true SCHEMABANK="$PATCH" INDUCTOR_SET=combo_kernel_max_num_nodes=32 TORCH_BLAS_PREFER_CUBLASLT=1 TORCHINDUCTOR_CACHE_DIR=/root/ic32L step K32L bash scripts/speed_study.sh bench-b192 $O/k32l
STEP_GRAPH=true MERGE=true SHRINK=true EVAL_BATCH=1319 COMPILE=true COMBO=true TORCHINDUCTOR_CACHE_DIR=/root/icC EXTRA="--set experiment.seed=44" step W44 bash scripts/speed_study.sh run-warm $O/w44
echo done > $R/done
