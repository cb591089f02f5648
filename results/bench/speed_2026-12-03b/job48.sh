#!/bin/bash
# Issue 14, twelfth session, lease 1, fourth part: job47 waited for a "BL start=" line that
# job45's failed BL had already written, so it stopped job46's BL at once ("schemabank:
# interrupted"). Waits for job47's BLE to end (the second "BLE start=" line), stops job47
# before P16 (no device time for it), then runs BL again (BLR), from a copy at $1.
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
until [ "$(grep -c '^BLE start=' $R/stamps.txt)" -ge 2 ]; do sleep 0.3; done
pkill -f job47.sh; pkill -f "speed_study.sh bench"; pkill -f "bench_patch.py bench"
sleep 2
echo "job47 stopped after BLE $(date +%s.%N); left: $(pgrep -af 'bench_patch|speed_study' | wc -l)" >> $R/progress.txt
export SCHEMABANK="python3 $J/bench_patch.py" STEP_GRAPH=true PROFILE=3
ONLY=train PEERS=eager TORCHINDUCTOR_CACHE_DIR=/root/icL step BLR bash scripts/speed_study.sh bench-layers $O/blr
echo done > $R/done48
