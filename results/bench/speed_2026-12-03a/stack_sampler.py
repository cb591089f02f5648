"""Sample the main thread's Python stack every INTERVAL seconds while running a module, as
``python -m`` would; at exit write the samples to OUT (gzipped JSON: "stacks", the distinct
stacks, outermost frame first; "samples", [seconds since start, trainer step or null, stack index];
"start_epoch" and "return_epoch", the clock (time.time) when sampling began and when the module
returned, so that the interpreter's exit after it can be timed from outside).
Usage: python3 stack_sampler.py OUT.json.gz INTERVAL -m MODULE ARGS...
A sample's weight is the time until the next one (a C call that holds the GIL delays the next
sample: its time goes to the stack seen before it)."""
import gzip
import json
import runpy
import sys
import threading
import time

out, interval = sys.argv[1], float(sys.argv[2])
assert sys.argv[3] == "-m", "usage: stack_sampler.py OUT INTERVAL -m MODULE ARGS..."
module = sys.argv[4]
sys.argv = [module, *sys.argv[5:]]
main = threading.main_thread().ident
stacks: dict[tuple, int] = {}
samples: list = []
done = threading.Event()
t0 = time.perf_counter()
start_epoch = time.time()


def sample_loop():
    while not done.wait(interval):
        frame = sys._current_frames().get(main)
        step, names = None, []
        while frame is not None:
            code = frame.f_code
            if step is None and code.co_name == "train_stage":
                try:
                    step = frame.f_locals["self"].step
                except Exception:
                    step = -1
            parts = code.co_filename.rsplit("/", 2)
            names.append(f"{'/'.join(parts[-2:])}:{code.co_name}:{frame.f_lineno}")
            frame = frame.f_back
        key = tuple(reversed(names))
        samples.append((round(time.perf_counter() - t0, 4), step, stacks.setdefault(key, len(stacks))))


thread = threading.Thread(target=sample_loop, daemon=True)
thread.start()
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
finally:
    done.set()
    thread.join()
    with gzip.open(out, "wt") as f:
        json.dump(
            {
                "interval": interval,
                "stacks": [list(k) for k in stacks],
                "samples": samples,
                "start_epoch": start_epoch,
                "return_epoch": time.time(),
            },
            f,
        )
