"""Load a trained run in Python and solve one GSM8K problem with it.

python examples/quickstart.py [RUN_DIR]      # default: runs/smoke_seed0 (make demo)
"""

import sys

import schemabank

run = sys.argv[1] if len(sys.argv) > 1 else "runs/smoke_seed0"
model, tokenizer = schemabank.load(run)  # base model + LoRA (+ banks), eval mode
prompt = "Question: Tom has 3 apples and buys 5 more. How many apples does he have?\nAnswer:"
inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
out = model.generate(**inputs, max_new_tokens=64, do_sample=False)
print(tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
print(f"banks: {model.banks.banks.keys() if model.banks else 'none (LoRA only)'}", file=sys.stderr)
