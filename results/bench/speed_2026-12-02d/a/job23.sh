#!/bin/bash
# Issue 14, GPU job of 2026-12-02 (fourth session). Started by the last staging call (setsid),
# from the repo copy at $1. Every timed step is a part of scripts/speed_study.sh, but E1 (one
# schemabank eval of R1's checkpoint) and C1 (schemabank compare).
set -u
R=/root/r23; O=$R/out; mkdir -p $O $R/peers
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
# G0: the three GPU-only tests (direct capture; the shrinking decoder on real CUDA graphs)
step G0 python3 -m pytest -q -rA -p no:cacheprovider tests/test_decode.py -k cuda > $O/pytest_gpu.log 2>&1
# R1: a whole run, layer scope, unpacked, empty compile cache; GSM8K in one batch of 1,319,
# the decoder's step captured directly, finished rows leaving the batch
SHRINK=true COMPILE=true EVAL_BATCH=1319 TORCH_LOGS=recompiles step R1 bash scripts/speed_study.sh run-cold $O
# E1: R1's checkpoint evaluated again with the same decoder, every row kept to the end; C1 compares
CK=$O/cold/sb_b32_split50_seed42
step E1 python3 -m schemabank eval --checkpoint $CK/checkpoint --set eval.decoder=static \
  --set eval.compile_decoder=true --set eval.decoder_attention=grouped --set eval.batch_size=1319 \
  --output $O/noshrink/results.json > $O/eval_noshrink.log 2>&1
step C1 python3 -m schemabank compare $CK/results.json $O/noshrink/results.json > $O/compare_shrink.txt 2>&1
echo R1E1 > $R/mark
# B1: unpacked batches, layer scope, both PEFT peers, 5 profiled steps of each model
ONLY=train PEERS=all PROFILE=5 step B1 bash scripts/speed_study.sh bench-layers $R/peers
echo B1 > $R/mark
# B2: the same batches, step scope, no peers, profiled
ONLY=train PEERS=none PROFILE=5 step B2 bash scripts/speed_study.sh bench-step $O
echo done > $R/done
