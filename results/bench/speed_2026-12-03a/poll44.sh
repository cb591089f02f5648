#!/bin/bash
# Wait up to $1 s for the job to finish or $2 (a step name) to end, then put its files in $OUT.
R=/root/r44; t0=$(date +%s)
while [ ! -f $R/done ] && [ $(( $(date +%s) - t0 )) -lt $1 ]; do
  [ -n "${2:-}" ] && grep -q "^$2 start=" $R/stamps.txt 2>/dev/null && break
  sleep 5
done
cat $R/progress.txt; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
tar czf $OUT/r44.tgz -C /root --exclude=checkpoint --exclude=state --exclude='*.safetensors' --exclude='*.pt' r44
ls -la $OUT
