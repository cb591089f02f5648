#!/bin/bash
# usage: collect22.sh MAXWAIT: waits for the job (or MAXWAIT s), then packs its results into $OUT
R=/root/r22; end=$(( $(date +%s) + $1 ))
while [ ! -f $R/done ] && [ $(date +%s) -lt $end ]; do sleep 5; done
cat $R/versions.txt $R/progress.txt; cat $R/out/times.txt $R/peers/times.txt 2>/dev/null
for f in $R/out/*.log $R/peers/*.log; do echo "== $f"; tail -c 1500 $f | tr '\r' '\n' | tail -n 12; done 2>/dev/null | tail -c 9000
tar czf $OUT/r22.tar.gz --exclude='*.safetensors' --exclude='*.pt' --exclude='*.bin' --exclude='checkpoint' --exclude='state' -C /root r22
ls -la $OUT
