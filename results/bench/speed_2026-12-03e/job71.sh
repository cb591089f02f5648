#!/bin/bash
# Issue 14, fifteenth session, lease 2, started by the last staging call (setsid) from a copy of
# the repository at $1: branch issue14-combo (aa3482a: main with training.compile_combo_kernels).
# The batch-192 bench (multiples of 8, step captured, cuDNN's attention) with inductor's combo
# kernels (5 timed batches profiled again), the same without them (unprofiled), then the
# captured step's GPU tests (one compiled with combo kernels).
set -u
R=/root/r71; O=$R/out; mkdir -p $O
cd "$1"
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 SCHEMABANK_DATA_DIR=/root/data
step() {  # NAME CMD...: stamps.txt gets start, end (to the ns), rc
  local name=$1 s rc; shift; s=$(date +%s.%N)
  echo "$name start $s" >> $R/progress.txt
  timeout ${LIMIT:-600} "$@"; rc=$?
  echo "$name start=$s end=$(date +%s.%N) rc=$rc" | tee -a $R/stamps.txt >> $R/progress.txt
  return $rc
}
python3 -c "import torch, transformers, peft, sys; print(sys.version.split()[0], torch.__version__, transformers.__version__, peft.__version__, torch.cuda.get_device_name(), 'cudnn', torch.backends.cudnn.version())" > $R/versions.txt 2>&1
python3 -c "from schemabank.runtime import source_sha256; print('source_sha256', source_sha256())" >> $R/versions.txt 2>&1
export SCHEMABANK="python3 -m schemabank" STEP_GRAPH=true PAD=8 SDPA=cudnn
COMBO=true PROFILE=5 TORCHINDUCTOR_CACHE_DIR=/root/icK step PK bash scripts/speed_study.sh bench-b192 $O/pk
TORCHINDUCTOR_CACHE_DIR=/root/ic0 step P0 bash scripts/speed_study.sh bench-b192 $O/p0
TORCHINDUCTOR_CACHE_DIR=/root/icG step G python3 -m pytest -q -rA tests/test_capture.py -k cuda > $O/gpu_tests.log 2>&1
echo done > $R/done
