import logging, runpy, sys
h = logging.StreamHandler(sys.stdout); h.setFormatter(logging.Formatter("LOG %(name)s: %(message)s"))
for name in ("torch._functorch._aot_autograd.autograd_cache", "torch._inductor.codecache"):
    lg = logging.getLogger(name); lg.setLevel(logging.INFO); lg.addHandler(h); lg.propagate = False
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
