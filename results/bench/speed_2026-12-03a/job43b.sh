#!/bin/bash
# Lease 1, after job43.sh: the machine's image keeps no bytecode for torch and sympy
# (PYTHONDONTWRITEBYTECODE=1, installed without .pyc), so every process compiles their source.
# Compile it once (compileall, as pip does at install), then the warm run again (W4).
set -u
R=/root/r43; O=$R/out
while [ ! -f $R/done ]; do sleep 2; done
cd "$1"
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 SCHEMABANK_DATA_DIR=/root/data
export SCHEMABANK="python3 -m schemabank"
SP=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
s=$(date +%s.%N)
PYTHONDONTWRITEBYTECODE= python3 -m compileall -q -j 8 $SP/torch $SP/sympy $PWD/src /tmp/site > $O/compileall.log 2>&1
echo "compileall rc=$? s=$(awk "BEGIN {print $(date +%s.%N) - $s}")" >> $R/stamps.txt
for k in 1 2; do s=$(date +%s.%N); python3 -c "import schemabank.training, schemabank.cli" 2>/dev/null; echo "import compiled $k $(awk "BEGIN {print $(date +%s.%N) - $s}")" >> $O/pyc_probe.txt; done
export MERGE=true SHRINK=true EVAL_BATCH=1319 COMPILE=true STEP_GRAPH=true TORCHINDUCTOR_CACHE_DIR=/root/icC
s=$(date +%s.%N); echo "W4 start $s" >> $R/progress.txt
bash scripts/speed_study.sh run-warm $O/w4; rc=$?
echo "W4 start=$s end=$(date +%s.%N) rc=$rc" | tee -a $R/stamps.txt >> $R/progress.txt
echo "W4 results_mtime=$(stat -c %.9Y $O/w4/warm/sb_b32_split50_seed42/results.json 2>/dev/null)" >> $R/stamps.txt
echo done > $R/done2
