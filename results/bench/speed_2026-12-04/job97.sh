#!/bin/bash
# Issue 14, twenty-first session, started by the last staging call (setsid) from a copy of the
# repository at $1 (main with the compile workers left out of a run whose cache a finished run of
# the same config marked warm). Python's bytecode written first (as pip does at install); the GPU
# tests; the whole sb_b32_split50 run cold (marks its cache), then warm four times on that cache,
# alternating W (the new default: no compile-worker pool) and P (TORCHINDUCTOR_COMPILE_THREADS=16:
# inductor's pool, as before), with the compile workers' processes listed 40 s into each; the
# bench at batch 32 with the PEFT peers and at batch 192; the best LoRA cold on its own cache.
source scripts/device_job.sh start /root/r97 "$1"
O=$R/out
export SCHEMABANK="python3 -m schemabank"
SP=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
PYTHONDONTWRITEBYTECODE= step PYC python3 -m compileall -q -j 16 $SP/torch $SP/sympy $SP/transformers $SP/peft $PWD/src /tmp/site > $O/compileall.log 2>&1
TORCHINDUCTOR_CACHE_DIR=/root/icG LIMIT=400 step GPUT python3 -m pytest -q -rA -p no:cacheprovider tests/test_capture.py tests/test_compile.py tests/test_training.py tests/test_bench.py tests/test_resume.py -k "cuda or never_waits or host_whole" > $O/gpu_tests.log 2>&1
workers() { (sleep 40; pgrep -af compile_worker > $R/workers_$1.txt; echo "count $(pgrep -fc compile_worker)" >> $R/workers_$1.txt) & }
(
  export STEP_GRAPH=true MERGE=true SHRINK=true EVAL_BATCH=1319 COMPILE=true
  export TORCHINDUCTOR_CACHE_DIR=/root/icB
  workers C; step C bash scripts/speed_study.sh run-cold $O/c
  ls -la /root/icB/schemabank_warm > $R/markers.txt 2>&1
  workers W1; step W1 bash scripts/speed_study.sh run-warm $O/w1
  workers P1; TORCHINDUCTOR_COMPILE_THREADS=16 step P1 bash scripts/speed_study.sh run-warm $O/p1
  workers P2; TORCHINDUCTOR_COMPILE_THREADS=16 step P2 bash scripts/speed_study.sh run-warm $O/p2
  workers W2; step W2 bash scripts/speed_study.sh run-warm $O/w2
  stat -c '%n %.9Y' $O/*/*/*/results.json > $R/results_mtimes.txt 2>&1
)
(
  export STEP_GRAPH=true ONLY=train PEERS=all TORCHINDUCTOR_CACHE_DIR=/root/icB32
  step B32 bash scripts/speed_study.sh bench-layers $O/b32
)
(
  export STEP_GRAPH=true PAD=8 SDPA=cudnn TORCHINDUCTOR_CACHE_DIR=/root/icB192
  step B192 bash scripts/speed_study.sh bench-b192 $O/b192
)
(
  export STEP_GRAPH=true MERGE=true SHRINK=true EVAL_BATCH=1319 COMPILE=true
  TORCHINDUCTOR_CACHE_DIR=/root/icL step L42 bash scripts/speed_study.sh lora $O/l42
)
echo done > $R/done
