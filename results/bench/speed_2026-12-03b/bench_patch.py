"""`python3 bench_patch.py <schemabank args>`: the schemabank CLI with two experiment-only
changes, for issue 14's twelfth session: `schemabank bench --profile-steps` lists the top 300
kernels instead of 8 (a step's whole breakdown), and with EAGER_CE=1 the training loss's
vocabulary projection and cross-entropy run eager again, as before this session's change
(`training.compile_chunk_nll` returns None: no compiled chunk function)."""

import os
import runpy
import sys

import schemabank.study.bench as bench
import schemabank.training as training

bench.profile_steps.__defaults__ = (300,)

if os.environ.get("EAGER_CE") == "1":
    training.compile_chunk_nll = lambda device, mode=None: None
    print("bench_patch: EAGER_CE", file=sys.stderr)

sys.argv = ["schemabank", *sys.argv[1:]]
runpy.run_module("schemabank", run_name="__main__", alter_sys=True)
