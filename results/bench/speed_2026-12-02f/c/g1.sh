#!/bin/bash
# Issue 14, second machine of 2026-12-02 (sixth session): the GPU-only tests at 1c7db38, the new
# one included (no operation of a training step waits for the GPU). Run by the assembling call.
set -u
cd /root/job
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 SCHEMABANK_DATA_DIR=/root/data
python3 -c "from schemabank.runtime import source_sha256; print('source_sha256', source_sha256())"
t0=$(date +%s)
python3 -m pytest -q -rA tests/test_decode.py tests/test_runtime.py tests/test_bench.py tests/test_training.py -k "cuda or never_waits" 2>&1 | grep -v "Loading weights"
echo "pytest rc=${PIPESTATUS[0]} wall_s=$(( $(date +%s) - t0 ))"
