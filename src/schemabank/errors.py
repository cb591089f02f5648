"""User-facing errors.

Every problem caused by the user's input (a config, a data file, a checkpoint, a model name) raises
a subclass of :class:`SchemaBankError`. The CLI prints its message as one line and exits non-zero;
any other exception is a bug and keeps its traceback.
"""


class SchemaBankError(Exception):
    """An input problem with a message fit to show the user as one line."""


class ConfigError(SchemaBankError):
    """A configuration file or override is missing, malformed or invalid."""


class DataError(SchemaBankError):
    """A data file is missing or malformed."""


class CheckpointError(SchemaBankError):
    """A checkpoint directory is incomplete, corrupt or made for another base model."""


class ModelError(SchemaBankError):
    """A base model cannot be found or loaded."""


class TrainingError(SchemaBankError):
    """Training cannot go on (a non-finite loss, a training example with no answer tokens)."""
