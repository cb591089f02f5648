#!/bin/bash
# Issue 14, GPU job of 2026-12-02 (third session). Started by the last staging call (setsid),
# from the repo copy at $1. Every timed step is a part of scripts/speed_study.sh.
set -u
R=/root/r22; O=$R/out; mkdir -p $O $R/peers
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
nvidia-smi > $R/nvidia-smi.txt 2>&1
python3 -c "import torch, transformers, peft, sys; print(sys.version.split()[0], torch.__version__, transformers.__version__, peft.__version__, torch.cuda.get_device_name())" > $R/versions.txt 2>&1
python3 -c "from schemabank.runtime import source_sha256; print('source_sha256', source_sha256())" >> $R/versions.txt 2>&1
git rev-parse HEAD > $R/commit.txt 2>&1; git status --porcelain >> $R/commit.txt 2>&1
# G0: the directly captured decoder step against the eager one, a real CUDA graph (tests/test_decode.py)
step G0 python3 -m pytest -q -rA -p no:cacheprovider tests/test_decode.py -k "cuda_graph or directly or compiled_step" > $O/pytest_gpu.log 2>&1
CAP=compile; grep -q "PASSED tests/test_decode.py::test_cuda_graph_step" $O/pytest_gpu.log && CAP=graph
echo "CAPTURE chosen: $CAP" >> $R/progress.txt
# P1: one batch of 1,319 prompts, 128 new tokens: HF, static eager, captured directly, compiled
EVAL_BATCH=1319 PROFILE_ARGS="--new 128 --profile-steps 16" step P1 bash scripts/speed_study.sh profile $O
# R1, R2: the whole run with packing, cold cache then warm
PACK=true CAPTURE=$CAP COMPILE=true EVAL_BATCH=1319 TORCH_LOGS=recompiles step R1 bash scripts/speed_study.sh run-cold $O
PACK=true CAPTURE=$CAP COMPILE=true EVAL_BATCH=1319 TORCH_LOGS=recompiles step R2 bash scripts/speed_study.sh run-warm $O
# B1: packed batches, layer scope, with both PEFT peers (timed one model after another)
PACK=true ONLY=train PEERS=all step B1 bash scripts/speed_study.sh bench-layers $R/peers
# B2: batch 192, length-grouped, packed
PACK=true step B2 bash scripts/speed_study.sh bench-b192 $O
# L1: the best LoRA on the fast path with packing (accuracy)
PACK=true CAPTURE=$CAP COMPILE=true EVAL_BATCH=1319 step L1 bash scripts/speed_study.sh lora $O
echo done > $R/done
