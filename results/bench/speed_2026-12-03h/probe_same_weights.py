"""Device probe (issue 14, eighteenth session): from the same weights, do compiled trainers'
gradients part from the eager one's, fused or not, and where? Not part of the suite."""

import torch
from test_compile import ALL_LINEAR
from test_training import losses_and_gradients, make_trainer, wake_up

from schemabank.method.stages import STAGES

PAD = {"pad_to_multiple_of": 64}
SECTIONS = {"schemabank": {"lambda_balance": 0.1, "lambda_z": 0.1}, "lora": ALL_LINEAR}
C = {"compile": True, "compile_scope": "layers", "compile_mode": "default"}
VARIANTS = {
    "eager": {},
    "compiled": C,
    "fused": {**C, "fuse_lora_a": True},
    "capt-fused": {"capture_step": True, **C, "fuse_lora_a": True},
}


def group(name):
    for key in ("lora_A", "lora_B", "router", "gain"):
        if key in name:
            return key
    return "bank-other"


def test_probe(tiny_llama, data_dir):
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    ts = {}
    for name, keys in VARIANTS.items():
        t = make_trainer(tiny_llama, data_dir, device=dev, training={**PAD, **keys}, **SECTIONS)
        t.bf16 = False
        wake_up(t)
        ts[name] = t
    ref = ts["eager"]
    for stage in STAGES[1:]:
        for t in ts.values():
            t.enter_stage(stage)
        for step in range(5):
            with torch.no_grad():
                for t in ts.values():
                    if t is ref:
                        continue
                    for p, q in zip(ref.model.parameters(), t.model.parameters(), strict=True):
                        q.copy_(p)
            recs = {n: t.train_step(stage, 1e-2, 0.5) for n, t in ts.items()}
            print(stage.key, step, " ".join(
                f"{n}: {float(r['loss']):.7f} {float(r['grad_norm']):.7f}" for n, r in recs.items()
            ), flush=True)
    # per-parameter gradients of one pass from the same (trained) weights, stage 3
    stage = STAGES[2]
    batch, targets, _ = ref.batches.make_batch(stage, 0.5)
    grads = {}
    for n in ("eager", "compiled", "fused"):
        t = ts[n]
        if t is not ref:
            with torch.no_grad():
                for p, q in zip(ref.model.parameters(), t.model.parameters(), strict=True):
                    q.copy_(p)
        t.model.zero_grad(set_to_none=True)
        losses, g = losses_and_gradients(t, stage, batch, targets)
        grads[n] = g
        print(n, {k: float(v) for k, v in losses.items()})
    for a, b in (("compiled", "eager"), ("fused", "eager"), ("fused", "compiled")):
        agg = {}
        for k in grads[a]:
            d = (grads[a][k] - grads[b][k]).float()
            s = agg.setdefault(group(k), [0.0, 0.0, 0.0, ""])
            s[0] += float(d.norm()) ** 2
            s[1] += float(grads[b][k].norm()) ** 2
            rel = float(d.norm() / grads[b][k].norm().clamp_min(1e-30))
            if rel > s[2]:
                s[2], s[3] = rel, k
        print(f"{a} vs {b}:")
        for gname, (dn, bn, worst, wk) in agg.items():
            print(f"  {gname:10s} rel {dn ** 0.5 / max(bn ** 0.5, 1e-30):.2e}  worst {worst:.2e} {wk}")
