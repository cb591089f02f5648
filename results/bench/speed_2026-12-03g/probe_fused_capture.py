"""The device probe of this session (issue 14), run once on the H200 as
``python3 -m pytest -q -s probe_fused_capture.py`` from tests/ (copied there as
tests/test_zz_debug_fused.py; it uses the suite's fixtures and helpers). Each variant of the tiny
model's trainer (fp32, LoRA on every linear layer, 5 steps of stage 2 then 5 of stage 3, the
batches of one data order) prints its gradient norms, at the tests' learning rate (1e-2) and at
1e-4. Not part of the suite."""

import torch
from test_compile import ALL_LINEAR
from test_training import make_trainer, wake_up

from schemabank.method.stages import STAGES

PAD = {"pad_to_multiple_of": 64}
SECTIONS = {"schemabank": {"lambda_balance": 0.1, "lambda_z": 0.1}, "lora": ALL_LINEAR}
C = {"compile": True, "compile_scope": "layers"}
VARIANTS = {
    "ref": {},
    "compiled": {**C, "compile_mode": "default"},
    "fuse-compiled": {**C, "compile_mode": "default", "fuse_lora_a": True},
    "capt-compiled": {"capture_step": True, **C},
    "capt-fuse-compiled": {"capture_step": True, **C, "fuse_lora_a": True},
}


def run(t, lr):
    out = []
    for stage in STAGES[1:]:
        t.enter_stage(stage)
        for _ in range(5):
            out.append(float(t.train_step(stage, lr, 0.5)["grad_norm"]))
    return out


def test_probe(tiny_llama, data_dir):
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    for lr in (1e-2, 1e-4):
        print(f"\nlr {lr}")
        for name, keys in VARIANTS.items():
            if lr < 1e-2 and name == "compiled":
                continue
            t = make_trainer(tiny_llama, data_dir, device=dev, training={**PAD, **keys}, **SECTIONS)
            t.bf16 = False
            wake_up(t)
            r = run(t, lr)
            print(f"{name:20s}", " ".join(f"{x:.6f}" for x in r), flush=True)
