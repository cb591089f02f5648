#!/bin/bash
# The lease's poll: progress, the last lines of the running step's log, and the outputs so far
# in one archive, $OUT/r71.tgz (the device returns a few files, a few folders deep).
R=/root/r71
cat $R/progress.txt 2>/dev/null; ls $R/done 2>/dev/null
for f in $(ls -t $R/out/*.log $R/out/*/*.log $R/out/*/*/*.log 2>/dev/null | head -1); do echo "== $f"; tail -c 600 $f; done
cd $R && tar czf $OUT/r71.tgz --exclude='*/checkpoint' --exclude='*/state' --exclude='*.safetensors' --exclude='*.pt' --exclude='trace_*' . 2>/dev/null; true
