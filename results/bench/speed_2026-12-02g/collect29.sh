#!/bin/bash
# usage: collect29.sh MAXWAIT [MARK]: waits for the job to end (or MARK in $R/mark, or MAXWAIT s),
# then packs its results into $OUT
R=/root/r29; end=$(( $(date +%s) + $1 ))
while [ ! -f $R/done ] && [ $(date +%s) -lt $end ]; do
  [ -n "${2:-}" ] && grep -qx "$2" $R/mark 2>/dev/null && break; sleep 5; done
cat $R/versions.txt $R/progress.txt; find $R/out -name times.txt | xargs cat 2>/dev/null
for f in $(find $R/out -name '*.log'); do echo "== $f"; tail -c 1500 $f | tr '\r' '\n' | tail -n 10; done 2>/dev/null | tail -c 9000
tar czf $OUT/r29.tar.gz --exclude='*.safetensors' --exclude='*.pt' --exclude='*.bin' --exclude='checkpoint' --exclude='state' -C /root r29
ls -la $OUT
