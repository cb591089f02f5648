#!/bin/bash
# Issue 14, eleventh session (2026-12-03), lease 2: this session's code against the code before
# it (bf7cf35, src from old_src.tgz) on one machine, warm: the new code cold (fills the compile
# cache both use: the layers' graphs are the same), the old code warm, the new code warm.
set -u
R=/root/r44; O=$R/out; mkdir -p $O /root/old
cd "$1"
tar xzf results/bench/speed_2026-12-03a/old_src.tgz -C /root/old
export PYTHONUNBUFFERED=1 SCHEMABANK_DATA_DIR=/root/data SCHEMABANK="python3 -m schemabank"
export MERGE=true SHRINK=true EVAL_BATCH=1319 COMPILE=true STEP_GRAPH=true TORCHINDUCTOR_CACHE_DIR=/root/icC
NEW=/tmp/site:$PWD/src OLD=/tmp/site:/root/old/src
step() {  # NAME CMD...: stamps.txt gets start, end (to the ns), rc
  local name=$1 s rc; shift; s=$(date +%s.%N)
  echo "$name start $s" >> $R/progress.txt
  timeout 900 "$@"; rc=$?
  echo "$name start=$s end=$(date +%s.%N) rc=$rc" | tee -a $R/stamps.txt >> $R/progress.txt
  return $rc
}
for p in $NEW $OLD; do PYTHONPATH=$p python3 -c "from schemabank.runtime import source_sha256; print('source_sha256', source_sha256())" >> $R/versions.txt 2>&1; done
python3 -c "import torch, transformers, peft, sys; print(sys.version.split()[0], torch.__version__, transformers.__version__, peft.__version__, torch.cuda.get_device_name())" >> $R/versions.txt 2>&1
PYTHONPATH=$NEW step N0 bash scripts/speed_study.sh run-cold $O/n0
PYTHONPATH=$OLD step O1 bash scripts/speed_study.sh run-warm $O/o1
PYTHONPATH=$NEW step N1 bash scripts/speed_study.sh run-warm $O/n1
echo done > $R/done
