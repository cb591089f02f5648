# throwaway: do region graphs hit inductor's FX graph cache / AOTAutograd cache in a second process?
import sys, json
from pathlib import Path
sys.path.insert(0, "tests")
import torch
from conftest import make_tiny_model, write_data
from test_training import make_trainer, wake_up
from schemabank.method.stages import STAGES
from torch._dynamo.utils import counters
region = int(sys.argv[1]); root = Path(sys.argv[2]); root.mkdir(parents=True, exist_ok=True)
model = root / "tiny"
if not model.exists():
    make_tiny_model("llama", model)
data = write_data(root / "data") if not (root / "data").exists() else root / "data"
t = make_trainer(model, data, device="cuda", training={"compile": True, "compile_scope": "layers", "compile_region_layers": region})
wake_up(t); t.enter_stage(STAGES[2])
for _ in range(4):
    t.train_step(STAGES[2], 1e-3, 0.5)
torch.cuda.synchronize()
print("region", region, json.dumps({k: dict(v) for k, v in counters.items() if k in ("inductor", "aot_autograd")}))
