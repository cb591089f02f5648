"""Does a compiled layer region hit inductor's FX graph cache and AOTAutograd's cache in a second
process? The study's model on the CPU (inductor's C++ code), batch 2, a few steps of a stage."""
import json, sys, time
import torch
from torch._dynamo.utils import counters
from schemabank.config import load_config
from schemabank.data import load_gsm8k
from schemabank.method.adapter import build_adapter
from schemabank.method.stages import STAGES
from schemabank.models import load_base_model, resolve_base_model
from schemabank.runtime import seed_everything, weight_dtype
from schemabank.training import Trainer

region, stage_i, steps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
extra = sys.argv[4:]
cfg = load_config("configs/gsm8k/sb_b32_split50.yaml", [
    "training.compile=true", "training.compile_scope=layers",
    f"training.compile_region_layers={region}", "training.batch_size=2", *extra])
dev = torch.device("cpu")
info = resolve_base_model(cfg.model.base_model)
tok, base = load_base_model(info, dev, weight_dtype(cfg.model.dtype, dev))
seed_everything(0)
model, banks, _ = build_adapter(base, cfg)
t = Trainer(cfg, model, banks, tok, load_gsm8k("train", None), dev, False)
stage = STAGES[stage_i]
t.enter_stage(stage)
t0 = time.time()
for i in range(steps):
    t.train_step(stage, 1e-4, 0.0)
    print(f"step {i} {time.time() - t0:.1f} s", flush=True)
print("counters", json.dumps({k: dict(v) for k, v in counters.items() if k in ("inductor", "aot_autograd")}))
