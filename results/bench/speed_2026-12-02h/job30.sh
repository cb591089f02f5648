#!/bin/bash
# Issue 14, GPU job of 2026-12-02 (eighth session). Started by the last staging call (setsid),
# from the repo copy at $1. Every run is a part of scripts/speed_study.sh.
set -u
R=/root/r30; O=$R/out; mkdir -p $O
cd "$1"
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
export SCHEMABANK_DATA_DIR=/root/data
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
python3 -c "from schemabank.runtime import source_sha256; print('source_sha256 HEAD', source_sha256())" >> $R/versions.txt 2>&1
mkdir -p /root/ae && tar xzf /root/st/ae83510_src.tar.gz -C /root/ae
PYTHONPATH=/tmp/site:/root/ae/src python3 -c "from schemabank.runtime import source_sha256; print('source_sha256 ae83510', source_sha256())" >> $R/versions.txt 2>&1
nvidia-smi > $R/nvidia-smi.txt 2>&1
export MERGE=true SHRINK=true COMPILE=true EVAL_BATCH=1319  # the runs' fast paths
SHORT="--set training.total_steps=60 --set training.stages.stage1_router_pretrain.steps=10 --set training.stages.stage2_schema_train.steps=25 --set training.stages.stage3_joint_finetune.steps=25 --set eval.limit=64"
# P1 (HEAD) and P2 (ae83510's src), at the same time, each its own empty cache: a short run
# twice under debug cache logs, then cache_report.py
mkdir -p $O/head $O/ae
( TORCHINDUCTOR_CACHE_DIR=/root/icA EXTRA="$SHORT" step P1 bash scripts/speed_study.sh cache-check $O/head ) &
( PYTHONPATH=/tmp/site:/root/ae/src TORCHINDUCTOR_CACHE_DIR=/root/icB EXTRA="$SHORT" step P2 bash scripts/speed_study.sh cache-check $O/ae ) &
wait
echo P12 > $R/mark
# G1: every GPU-only test, own cache
TORCHINDUCTOR_CACHE_DIR=/root/ict step G1 python3 -m pytest -q -rA tests/test_decode.py tests/test_runtime.py tests/test_bench.py tests/test_training.py tests/test_compile.py -k "cuda or never_waits" > $O/pytest_gpu.log 2>&1
# R1/R2: the whole run, empty cache then warm, alone, info-level cache logs
mkdir -p $O/full
export TORCH_LOGS=torch._inductor.codecache,torch._functorch._aot_autograd.autograd_cache
TORCHINDUCTOR_CACHE_DIR=/root/icR step R1 bash scripts/speed_study.sh run-cold $O/full
TORCHINDUCTOR_CACHE_DIR=/root/icR step R2 bash scripts/speed_study.sh run-warm $O/full
unset TORCH_LOGS
python3 scripts/cache_report.py $O/full/run_cold.log $O/full/run_warm.log > $O/full/cache_report.txt 2>&1
echo done > $R/done
