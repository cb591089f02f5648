"""Scratch diagnosis (not committed): stage 2 then stage 3 on CUDA, per compiled path."""
import torch
from test_capture import PAD, SECTIONS
from test_compile import _records
from test_training import make_trainer, wake_up
from schemabank.method.stages import STAGES


def test_diag(tiny_llama, data_dir):
    L = {"compile": True, "compile_scope": "layers"}
    variants = {
        "eager": PAD,
        "ro": {**PAD, **L},
        "default": {**PAD, **L, "compile_mode": "default"},
        "default_capture": {**PAD, **L, "capture_step": True},
    }
    import test_capture
    from schemabank import training
    variants["fake_capture"] = variants["default_capture"]
    variants["eager_capture"] = {**PAD, "capture_step": True}
    print("torch", torch.__version__)
    norms = {}
    for name, keys in variants.items():
        training.Trainer.step_graph = test_capture.EagerGraph if name == "fake_capture" else training.StepGraph
        t = make_trainer(tiny_llama, data_dir, device="cuda", training=keys, **SECTIONS)
        t.bf16 = False
        wake_up(t)
        r2 = _records(t, STAGES[1], 5)
        t.enter_stage(STAGES[2])
        t.optimizer.zero_grad = lambda **k: None
        rec = t.train_step(STAGES[2], 1e-2, 0.5)
        torch.cuda.synchronize()
        norms[name] = {n: float(p.grad.norm()) for n, p in t.model.named_parameters() if p.grad is not None}
        print(name, [round(x["grad_norm"], 5) for x in r2], float(rec["grad_norm"]), len(norms[name]))
    for n in norms["eager"]:
        row = [round(norms[v].get(n, -1.0), 5) for v in variants]
        if max(row) - min(row) > 1e-4:
            print("DIFF", n, row)
