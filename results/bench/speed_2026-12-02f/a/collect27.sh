#!/bin/bash
# usage: collect25.sh MAXWAIT [MARK]: waits for the job to end (or MARK in $R/mark, or MAXWAIT s),
# then packs its results into $OUT
R=/root/r27; end=$(( $(date +%s) + $1 ))
while [ ! -f $R/done ] && [ $(date +%s) -lt $end ]; do
  [ -n "${2:-}" ] && grep -qx "$2" $R/mark 2>/dev/null && break; sleep 5; done
cat $R/versions.txt $R/progress.txt; cat $R/out/times.txt 2>/dev/null
for f in $R/out/*.log $R/out/*.txt; do echo "== $f"; tail -c 1500 $f | tr '\r' '\n' | tail -n 12; done 2>/dev/null | tail -c 9000
tar czf $OUT/r27.tar.gz --exclude='*.safetensors' --exclude='*.pt' --exclude='*.bin' --exclude='checkpoint' --exclude='state' -C /root r27
ls -la $OUT
