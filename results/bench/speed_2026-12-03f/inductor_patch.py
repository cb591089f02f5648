"""`python3 inductor_patch.py <schemabank args>`: the schemabank CLI (`python -m schemabank`)
with inductor config values set first from INDUCTOR_SET, `name=value[,name=value...]` (ints,
or true/false), e.g. INDUCTOR_SET=combo_kernel_max_num_nodes=32: values that
`training.compile_combo_kernels` leaves at inductor's defaults (the compile's options set only
`combo_kernels` and the mode's own). Each value is printed to stderr. An experiment's tool for
issue 14's sixteenth session, not part of the package."""

import os
import runpy
import sys

import torch._inductor.config as config

for item in filter(None, os.environ.get("INDUCTOR_SET", "").split(",")):
    name, value = item.split("=")
    old = getattr(config, name)  # an unknown name fails here
    new = value == "true" if isinstance(old, bool) else type(old)(value)
    setattr(config, name, new)
    print(f"inductor_patch: {name} = {new!r} (default {old!r})", file=sys.stderr)
sys.argv[0] = "schemabank"
runpy.run_module("schemabank", run_name="__main__", alter_sys=True)
