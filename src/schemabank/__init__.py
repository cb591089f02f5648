"""SchemaBank: a routed bank of low-rank schemas on a frozen causal LM, trained in three stages."""

from .attach import BankSet
from .bank import SchemaBank
from .config import Config, load_config

__all__ = ["BankSet", "Config", "SchemaBank", "load_config"]
__version__ = "0.1.0"
