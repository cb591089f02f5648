#!/bin/bash
# usage: collect30.sh MAXWAIT [MARK]: waits for the job to end (or MARK in $R/mark, or MAXWAIT s),
# then packs its results into $OUT
R=/root/r30; end=$(( $(date +%s) + $1 ))
while [ ! -f $R/done ] && [ $(date +%s) -lt $end ]; do
  [ -n "${2:-}" ] && grep -qx "$2" $R/mark 2>/dev/null && break; sleep 5; done
cat $R/versions.txt $R/progress.txt; find $R/out -name times.txt | xargs tail -n 5 2>/dev/null
for f in $(find $R/out -name cache_report.txt); do echo "== $f"; head -c 3500 $f; done
tail -n 3 $R/out/pytest_gpu.log 2>/dev/null
for f in $(find $R/out -name 'run_*.log'); do echo "== $f"; tail -c 1200 $f | tr '\r' '\n' | tail -n 4; done 2>/dev/null | tail -c 3000
tar czf $OUT/r30.tar.gz --exclude='*.safetensors' --exclude='*.pt' --exclude='*.bin' --exclude='checkpoint' --exclude='state' -C /root r30
ls -la $OUT
