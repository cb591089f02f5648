"""SchemaBank: a routed bank of low-rank schemas on a frozen causal LM, trained in three stages.

The main entry points are :func:`schemabank.load` (a trained run as ``(model, tokenizer)``,
banks attached), :class:`schemabank.method.bank.SchemaBank` (one bank),
:class:`schemabank.method.attach.BankSet` (banks attached to a Hugging Face model),
:func:`schemabank.config.load_config` and :func:`schemabank.training.run`. They are imported
lazily, so that ``import schemabank`` (and the CLI's input checks) stay fast.

    import schemabank
    model, tokenizer = schemabank.load("runs/smoke_seed0")
    ids = tokenizer("Question: Tom has 3 apples and buys 5 more. How many?\nAnswer:",
                    return_tensors="pt").to(model.device)
    print(tokenizer.decode(model.generate(**ids, max_new_tokens=64)[0]))
"""

__version__ = "0.1.0"

_LAZY = {
    "SchemaBank": "schemabank.method.bank",
    "BankSet": "schemabank.method.attach",
    "Config": "schemabank.config",
    "load_config": "schemabank.config",
    "run": "schemabank.training",
    "load": "schemabank.checkpoint",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'schemabank' has no attribute {name!r}")
