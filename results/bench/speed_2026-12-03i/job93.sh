#!/bin/bash
# Issue 14, nineteenth session, started by the last staging call (setsid) from a copy of the
# repository at $1 (B: every group the run trains keeps requires_grad through the stages, each
# stage's backward pass stopping at its own groups, so compiled code serves every stage) and
# A's source (2baf776, main before the change: Dynamo reset at each stage) unpacked beside it.
# Python's bytecode written first (as pip does at install; the machines' image keeps none for
# torch and sympy); the GPU tests of B; then the whole sb_b32_split50 run cold for A and B, each
# on its own compile cache, then warm A, warm B, warm B, warm A (one machine for the A/B).
source scripts/device_job.sh start /root/r93 "$1"
O=$R/out
export SCHEMABANK="python3 -m schemabank"
rm -rf /root/repoA && cp -r "$1" /root/repoA && rm -rf /root/repoA/src && cp -r /root/asrc/src /root/repoA/src  # unpacked by the staging call
SP=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
PYTHONDONTWRITEBYTECODE= step PYC python3 -m compileall -q -j 16 $SP/torch $SP/sympy $PWD/src /root/repoA/src /tmp/site > $O/compileall.log 2>&1
export STEP_GRAPH=true MERGE=true SHRINK=true EVAL_BATCH=1319 COMPILE=true
a() { (cd /root/repoA && PYTHONPATH=/tmp/site:/root/repoA/src TORCHINDUCTOR_CACHE_DIR=/root/icA step "$@"); }
b() { TORCHINDUCTOR_CACHE_DIR=/root/icB step "$@"; }
a CA bash scripts/speed_study.sh run-cold $O/a1
b CB bash scripts/speed_study.sh run-cold $O/b1
b WB bash scripts/speed_study.sh run-warm $O/b1
a WA bash scripts/speed_study.sh run-warm $O/a1
stat -c '%n %.9Y' $O/*/*/*/results.json > $R/results_mtimes.txt 2>&1
echo done > $R/done
