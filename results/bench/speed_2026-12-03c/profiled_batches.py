"""How the profiled steps' batches compare with the timed ones in `schemabank bench` at batch 192
(length-grouped): the bench draws 35 batches from the Trainer's data order, warms up on the first
15, times the next 20 and profiles the first 3 of those again. Counts each batch's tokens (the
untagged prompts, as `scripts/padding.py`) and the tokens computed with lengths padded to
multiples of 8, 16 and 64, on the CPU: `python results/bench/speed_2026-12-03c/profiled_batches.py`
from the repository root (SCHEMABANK_DATA_DIR set)."""

import torch

from schemabank.config import load_config
from schemabank.data import DataOrder, encode_all, load_gsm8k, padded_length, split_dev
from schemabank.models import load_base_model, resolve_base_model

cfg = load_config("configs/gsm8k/sb_b32_split50.yaml")
train, _ = split_dev(load_gsm8k("train", None), cfg.data.dev_size)
info = resolve_base_model(cfg.model.base_model)
tok, _ = load_base_model(info, torch.device("cpu"), torch.float32)
lengths = [len(ids) for ids, _ in encode_all(tok, train, cfg.training.max_length)]
order = DataOrder(len(train), 192, cfg.experiment.seed, lengths)
batches = [[lengths[i] for i in order.next_batch()] for _ in range(35)]
timed, profiled = batches[15:35], batches[15:18]
for m in (8, 16, 64):
    def computed(bs):
        return sum(192 * padded_length(max(b), m) for b in bs) / len(bs)

    print(
        f"multiple {m}: computed tokens a step, timed {computed(timed):,.0f}, "
        f"profiled {computed(profiled):,.0f} ({computed(profiled) / computed(timed) - 1:+.1%})"
    )
print(
    f"real tokens a step: timed {sum(map(sum, timed)) / 20:,.0f}, "
    f"profiled {sum(map(sum, profiled)) / 3:,.0f}"
)
