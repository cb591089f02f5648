#!/bin/bash
# Issue 14, twenty-second session, started by the last staging call (setsid) from a copy of the
# repository at $1 (main at c4b8c27: the fast path is the default on one CUDA device). Nothing
# below sets a training or eval key: each command is the plain one a user types. Python's bytecode
# written first (as pip does at install); the GPU tests; schemabank train on sb_b32_split50 cold
# (marks its cache), then warm twice; the best LoRA cold on its own cache; schemabank bench at the
# study's settings with its default peers (plain PEFT eager and compiled).
source scripts/device_job.sh start /root/r101 "$1"
O=$R/out
SP=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
PYTHONDONTWRITEBYTECODE= step PYC python3 -m compileall -q -j 16 $SP/torch $SP/sympy $SP/transformers $SP/peft $PWD/src /tmp/site > $O/compileall.log 2>&1
TORCHINDUCTOR_CACHE_DIR=/root/icG LIMIT=400 step GPUT python3 -m pytest -q -rA -p no:cacheprovider tests/test_capture.py tests/test_compile.py tests/test_training.py tests/test_bench.py tests/test_resume.py -k "cuda or never_waits or host_whole" > $O/gpu_tests.log 2>&1
export SCHEMABANK="python3 -m schemabank"
(
  export TORCHINDUCTOR_CACHE_DIR=/root/icP
  step C bash scripts/speed_study.sh run-plain $O/c
  step W1 bash scripts/speed_study.sh run-plain $O/w1
  step W2 bash scripts/speed_study.sh run-plain $O/w2
  stat -c '%n %.9Y' $O/*/*/*/results.json > $R/results_mtimes.txt 2>&1
)
mkdir -p $O/l42
TORCHINDUCTOR_CACHE_DIR=/root/icL step L42 python3 -m schemabank train --config configs/gsm8k/lora_b32_lr5e-4_r32_all.yaml --output-dir $O/l42 > $O/l42/run.log 2>&1
mkdir -p $O/b32
TORCHINDUCTOR_CACHE_DIR=/root/icB32 step B32 python3 -m schemabank bench --config configs/gsm8k/sb_b32_split50.yaml --steps 20 --warmup 15 --only train --output $O/b32/bench_plain.json > $O/b32/bench_plain.log 2>&1
echo done > $R/done
