#!/bin/bash
# Issue 14, twentieth session, A/B on one machine, started by the last staging call (setsid) from
# a copy of the repository at $1 (B: the captured step's answer positions padded to a multiple
# of 1,024 instead of 512, 24 step shapes in the run instead of 35, and the training state's
# tensors copied to the host with one wait) and A's source (454c65e, main before) unpacked
# beside it by the staging call. Python's bytecode written first (as pip does at install); the
# whole sb_b32_split50 run cold for A and B, each on its own compile cache, then warm B, warm
# A; then B's GPU tests.
source scripts/device_job.sh start /root/r95 "$1"
O=$R/out
export SCHEMABANK="python3 -m schemabank"
rm -rf /root/repoA && cp -r "$1" /root/repoA && rm -rf /root/repoA/src && cp -r /root/asrc/src /root/repoA/src
(cd /root/repoA && PYTHONPATH=/tmp/site:/root/repoA/src python3 -c "from schemabank.runtime import source_sha256; print('A source_sha256', source_sha256())" >> $R/versions.txt 2>&1)
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
LIMIT=300 step GPUT python3 -m pytest -q -rA -p no:cacheprovider tests/test_capture.py tests/test_compile.py tests/test_training.py tests/test_bench.py tests/test_resume.py -k "cuda or never_waits or host_whole" > $O/gpu_tests.log 2>&1
echo done > $R/done
