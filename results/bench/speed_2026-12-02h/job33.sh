#!/bin/bash
# Issue 14, eighth session, second machine: why did the seventh session's warm runs compile
# again? Two chains at the same time, each its own empty cache, short runs, debug cache logs:
# X: the cold run under --profile-steps (as the seventh session's cold runs were), then warm;
# Y: the GPU tests first in the same cache (as the seventh session's G1 was), then cold, warm.
set -u
R=/root/r33; O=$R/out; mkdir -p $O/x $O/y
cd "$1"
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 SCHEMABANK_DATA_DIR=/root/data
export SCHEMABANK="python3 -m schemabank"
export MERGE=true SHRINK=true COMPILE=true EVAL_BATCH=1319
SHORT="--set training.total_steps=60 --set training.stages.stage1_router_pretrain.steps=10 --set training.stages.stage2_schema_train.steps=25 --set training.stages.stage3_joint_finetune.steps=25 --set eval.limit=64"
python3 -c "from schemabank.runtime import source_sha256; print('source_sha256', source_sha256())" > $R/versions.txt 2>&1
LOGS=+torch._inductor.codecache,+torch._functorch._aot_autograd.autograd_cache
st() { echo "$1 start=$2 end=$(date +%s)" >> $R/stamps.txt; }
(
  s=$(date +%s); TORCHINDUCTOR_CACHE_DIR=/root/icX TORCH_LOGS=$LOGS EXTRA="$SHORT" PROFILE_RUN="41:5" bash scripts/speed_study.sh run-cold $O/x; st X1 $s
  s=$(date +%s); TORCHINDUCTOR_CACHE_DIR=/root/icX TORCH_LOGS=$LOGS EXTRA="$SHORT" bash scripts/speed_study.sh run-warm $O/x; st X2 $s
  python3 scripts/cache_report.py $O/x/run_cold.log $O/x/run_warm.log > $O/x/cache_report.txt 2>&1
) &
(
  s=$(date +%s); TORCHINDUCTOR_CACHE_DIR=/root/icY python3 -m pytest -q -rA tests/test_decode.py tests/test_runtime.py tests/test_bench.py tests/test_training.py tests/test_compile.py -k "cuda or never_waits" > $O/y/pytest_gpu.log 2>&1; st Y0 $s
  s=$(date +%s); TORCHINDUCTOR_CACHE_DIR=/root/icY TORCH_LOGS=$LOGS EXTRA="$SHORT" bash scripts/speed_study.sh run-cold $O/y; st Y1 $s
  s=$(date +%s); TORCHINDUCTOR_CACHE_DIR=/root/icY TORCH_LOGS=$LOGS EXTRA="$SHORT" bash scripts/speed_study.sh run-warm $O/y; st Y2 $s
  python3 scripts/cache_report.py $O/y/run_cold.log $O/y/run_warm.log > $O/y/cache_report.txt 2>&1
) &
wait
echo done > $R/done
