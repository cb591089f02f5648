#!/bin/bash
# The lease's traces (the benches' Chrome traces, too large for the poll's archive), split into
# parts of 15 MiB under $OUT: cat tr.part-* | tar x.
cd /root/r60/out && tar cf - trace_* | split -b 15M - $OUT/tr.part-; ls -la $OUT
