"""SchemaBank: a routed bank of low-rank schemas on a frozen causal LM, trained in three stages.

The main entry points are :class:`schemabank.bank.SchemaBank` (one bank),
:class:`schemabank.attach.BankSet` (banks attached to a Hugging Face model),
:func:`schemabank.config.load_config` and :func:`schemabank.training.run`. They are imported
lazily, so that ``import schemabank`` (and the CLI's input checks) stay fast.
"""

__version__ = "0.1.0"

_LAZY = {
    "SchemaBank": "schemabank.bank",
    "BankSet": "schemabank.attach",
    "Config": "schemabank.config",
    "load_config": "schemabank.config",
    "run": "schemabank.training",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'schemabank' has no attribute {name!r}")
