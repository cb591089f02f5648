#!/bin/bash
# Issue 14, eleventh session (2026-12-03), lease 1: where a warm sb_b32_split50 run's time goes
# (stack sampler), the run warm and cold on the fast path, the bench at batch 192 and at the
# study's settings with the step captured, the GPU tests. Started by the last staging call
# (setsid) from a copy of the repository at $1. Runs: parts of scripts/speed_study.sh.
set -u
R=/root/r43; O=$R/out; mkdir -p $O
cd "$1"
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 SCHEMABANK_DATA_DIR=/root/data
export SCHEMABANK="python3 -m schemabank"
J=$PWD/results/bench/speed_2026-12-03a
step() {  # NAME CMD...: stamps.txt gets start, end (to the ns), rc
  local name=$1 s rc; shift; s=$(date +%s.%N)
  echo "$name start $s" >> $R/progress.txt
  timeout 900 "$@"; rc=$?
  echo "$name start=$s end=$(date +%s.%N) rc=$rc" | tee -a $R/stamps.txt >> $R/progress.txt
  return $rc
}
mtime() { echo "$1 results_mtime=$(stat -c %.9Y $2/sb_b32_split50_seed42/results.json 2>/dev/null)" >> $R/stamps.txt; }
python3 -c "import torch, transformers, peft, sys; print(sys.version.split()[0], torch.__version__, transformers.__version__, peft.__version__, torch.cuda.get_device_name())" > $R/versions.txt 2>&1
python3 -c "from schemabank.runtime import source_sha256; print('source_sha256', source_sha256())" >> $R/versions.txt 2>&1
nvidia-smi > $R/nvidia-smi.txt 2>&1
# Does this Python keep compiled bytecode for the installed packages?
python3 - > $O/pyc_probe.txt 2>&1 <<'PY'
import importlib.util, os, sys
print("dont_write_bytecode", sys.dont_write_bytecode, "PYTHONDONTWRITEBYTECODE", os.environ.get("PYTHONDONTWRITEBYTECODE"), "pycache_prefix", sys.pycache_prefix)
for name in ("torch", "transformers", "peft", "sympy", "sklearn", "schemabank"):
    spec = importlib.util.find_spec(name)
    d = os.path.dirname(spec.origin)
    pyc = importlib.util.cache_from_source(spec.origin)
    print(name, d, "writable", os.access(d, os.W_OK), "pyc", os.path.exists(pyc))
PY
for k in 1 2; do s=$(date +%s.%N); python3 -c "import schemabank.training, schemabank.cli" 2>/dev/null; echo "import default $k $(awk "BEGIN {print $(date +%s.%N) - $s}")" >> $O/pyc_probe.txt; done
for k in 1 2; do s=$(date +%s.%N); PYTHONPYCACHEPREFIX=/root/pyc python3 -c "import schemabank.training, schemabank.cli" 2>/dev/null; echo "import prefix $k $(awk "BEGIN {print $(date +%s.%N) - $s}")" >> $O/pyc_probe.txt; done
TORCHINDUCTOR_CACHE_DIR=/root/icG step G python3 -m pytest -q -rA tests/test_capture.py tests/test_compile.py tests/test_training.py tests/test_bench.py -k "cuda or never_waits" > $O/gpu_tests.log 2>&1
export MERGE=true SHRINK=true EVAL_BATCH=1319 COMPILE=true STEP_GRAPH=true  # the runs' fast path
export TORCHINDUCTOR_CACHE_DIR=/root/icC
step C1 bash scripts/speed_study.sh run-cold $O/c1; mtime C1 $O/c1/cold
SCHEMABANK="python3 $J/stack_sampler.py $O/stacks_warm.json.gz 0.005 -m schemabank" step W1 bash scripts/speed_study.sh run-warm $O/w1; mtime W1 $O/w1/warm
step W2 bash scripts/speed_study.sh run-warm $O/w2; mtime W2 $O/w2/warm
unset MERGE SHRINK EVAL_BATCH COMPILE
PEERS=eager PROFILE=3 TORCHINDUCTOR_CACHE_DIR=/root/icL step BL bash scripts/speed_study.sh bench-layers $O/bench
TORCHINDUCTOR_CACHE_DIR=/root/icB step B1 bash scripts/speed_study.sh bench-b192 $O/bench
export MERGE=true SHRINK=true EVAL_BATCH=1319 COMPILE=true
TORCHINDUCTOR_COMPILE_THREADS=1 step W3 bash scripts/speed_study.sh run-warm $O/w3; mtime W3 $O/w3/warm
echo done > $R/done
