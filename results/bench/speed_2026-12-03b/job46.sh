#!/bin/bash
# Issue 14, twelfth session, lease 1, second part: job45.sh's benches failed at once (this
# folder's kernels.py, first on bench_patch.py's path, shadowed the "kernels" package that
# transformers imports; renamed kernel_kinds.py). Waits for job45's warm run (W1) to end, stops
# job45 before its LoRA run (the device time left), then runs the benches from a copy at $1.
set -u
R=/root/r45; O=$R/out
cd "$1"
J=$PWD/results/bench/speed_2026-12-03b
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 SCHEMABANK_DATA_DIR=/root/data
step() {  # NAME CMD...: stamps.txt gets start, end (to the ns), rc
  local name=$1 s rc; shift; s=$(date +%s.%N)
  echo "$name start $s" >> $R/progress.txt
  timeout ${LIMIT:-600} "$@"; rc=$?
  echo "$name start=$s end=$(date +%s.%N) rc=$rc" | tee -a $R/stamps.txt >> $R/progress.txt
  return $rc
}
until grep -q "^W1 start=" $R/stamps.txt; do sleep 0.5; done
pg=$(ps -o pgid= -p "$(pgrep -f job45.sh | head -1)" | tr -d ' ')
[ -n "$pg" ] && kill -- -"$pg"
echo "job45 stopped after W1 (group $pg) $(date +%s.%N)" >> $R/progress.txt
sleep 2
rm -rf $O/bl $O/ble $O/p64 $O/e64 $O/p16
export SCHEMABANK="python3 $J/bench_patch.py" STEP_GRAPH=true PROFILE=3
TORCHINDUCTOR_CACHE_DIR=/root/ic64 step P64 bash scripts/speed_study.sh bench-b192 $O/p64
EAGER_CE=1 TORCHINDUCTOR_CACHE_DIR=/root/ic64 step E64 bash scripts/speed_study.sh bench-b192 $O/e64
ONLY=train PEERS=eager TORCHINDUCTOR_CACHE_DIR=/root/icL step BL bash scripts/speed_study.sh bench-layers $O/bl
ONLY=train EAGER_CE=1 PEERS=none TORCHINDUCTOR_CACHE_DIR=/root/icL step BLE bash scripts/speed_study.sh bench-layers $O/ble
PAD=16 TORCHINDUCTOR_CACHE_DIR=/root/ic16 step P16 bash scripts/speed_study.sh bench-b192 $O/p16
echo done > $R/done46
