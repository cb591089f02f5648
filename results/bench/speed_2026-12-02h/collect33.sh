#!/bin/bash
# usage: collect33.sh MAXWAIT: waits for the job to end (or MAXWAIT s), then packs it into $OUT
R=/root/r33; end=$(( $(date +%s) + $1 ))
while [ ! -f $R/done ] && [ $(date +%s) -lt $end ]; do sleep 3; done
cat $R/versions.txt $R/stamps.txt; cat $R/out/*/times.txt; for f in $R/out/*/cache_report.txt; do echo "== $f"; head -c 2500 $f; done; tail -n 2 $R/out/y/pytest_gpu.log
cd /root && tar czf $OUT/r33.tar.gz --exclude='*.safetensors' --exclude='*.pt' --exclude='*.bin' --exclude=checkpoint --exclude=state --exclude='*.log' r33 && for f in r33/out/*/run_*.log; do xz -1 -c $f > $OUT/$(echo $f | tr / _).xz; done; ls -la $OUT
