#!/bin/bash
# Issue 14, twentieth session: two more warm runs on job95.sh's machine and caches, B then A, run
# in the foreground by one device call after job95.sh had ended
# (cd /root/repo && LIMIT=150 bash /root/job96.sh /root/repo).
source scripts/device_job.sh start /root/r95 "$1"
O=$R/out
export SCHEMABANK="python3 -m schemabank" STEP_GRAPH=true MERGE=true SHRINK=true EVAL_BATCH=1319 COMPILE=true
a() { (cd /root/repoA && PYTHONPATH=/tmp/site:/root/repoA/src TORCHINDUCTOR_CACHE_DIR=/root/icA step "$@"); }
b() { TORCHINDUCTOR_CACHE_DIR=/root/icB step "$@"; }
b WB2 bash scripts/speed_study.sh run-warm $O/b2
a WA2 bash scripts/speed_study.sh run-warm $O/a2
stat -c '%n %.9Y' $O/*/*/*/results.json > $R/results_mtimes.txt 2>&1
