#!/bin/bash
# Issue 14, twentieth session: where a warm sb_b32_split50 run's time goes. Started by the last
# staging call (setsid) from a copy of the repository at $1 (main at 454c65e). Python's bytecode
# written first (as pip does at install); the run cold (fills the compile cache), then warm four
# times on that cache: W0 plain, W1 under py-spy (100 Hz, every process, idle threads too,
# collapsed stacks), W2 with TORCHINDUCTOR_COMPILE_THREADS=1 (no compile-worker pool), W3 with
# TORCH_WARM_POOL=0 (the pool started only when a kernel is compiled).
source scripts/device_job.sh start /root/r94 "$1"
O=$R/out
SP=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
PYTHONDONTWRITEBYTECODE= step PYC python3 -m compileall -q -j 16 $SP/torch $SP/sympy $PWD/src /tmp/site > $O/compileall.log 2>&1
export STEP_GRAPH=true MERGE=true SHRINK=true EVAL_BATCH=1319 COMPILE=true TORCHINDUCTOR_CACHE_DIR=/root/ic
export SCHEMABANK="python3 -m schemabank"
step C bash scripts/speed_study.sh run-cold $O/c
step W0 bash scripts/speed_study.sh run-warm $O/w0
SCHEMABANK="/tmp/site/bin/py-spy record -r 100 --nonblocking --subprocesses --idle -f raw -o $O/w1.raw -- python3 -m schemabank" step W1 bash scripts/speed_study.sh run-warm $O/w1
TORCHINDUCTOR_COMPILE_THREADS=1 step W2 bash scripts/speed_study.sh run-warm $O/w2
TORCH_WARM_POOL=0 step W3 bash scripts/speed_study.sh run-warm $O/w3
stat -c '%n %.9Y' $O/*/*/*/results.json > $R/results_mtimes.txt 2>&1
gzip $O/w1.raw 2>/dev/null
echo done > $R/done
