#!/bin/bash
# Issue 14, twelfth session, lease 1, third part: job45's LoRA run was not stopped with job45
# (timeout runs its command in a process group of its own) and ran beside job46's first bench
# (P64) to 1796273991, while P64's baseline was timed. Waits for job46's BL to end, stops job46
# and what it started, then runs P64 again (P64R), then BLE and P16, from a copy at $1.
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
until grep -q "^BL start=" $R/stamps.txt; do sleep 0.5; done
pkill -f job46.sh; pkill -f "speed_study.sh bench"; pkill -f "bench_patch.py bench"
sleep 3
echo "job46 stopped after BL $(date +%s.%N); left: $(pgrep -af 'bench_patch|speed_study' | wc -l)" >> $R/progress.txt
rm -rf $O/ble $O/p16
export SCHEMABANK="python3 $J/bench_patch.py" STEP_GRAPH=true PROFILE=3
TORCHINDUCTOR_CACHE_DIR=/root/ic64 step P64R bash scripts/speed_study.sh bench-b192 $O/p64r
ONLY=train EAGER_CE=1 PEERS=none TORCHINDUCTOR_CACHE_DIR=/root/icL step BLE bash scripts/speed_study.sh bench-layers $O/ble
PAD=16 TORCHINDUCTOR_CACHE_DIR=/root/ic16 step P16 bash scripts/speed_study.sh bench-b192 $O/p16
echo done > $R/done47
