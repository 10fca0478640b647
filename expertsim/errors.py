"""The package's exception hierarchy.

Every message names the file, key or value at fault and says what to do; the CLI prints it
as a one-line error and exits non-zero.
"""


class ExpertSimError(Exception):
    """Base of all errors that the package raises on purpose."""


class DataSchemaError(ExpertSimError):
    """An event file, or an input to convert, does not have the expected keys, shapes or values."""


class ConfigError(ExpertSimError):
    """A configuration file or value is invalid."""


class CheckpointError(ExpertSimError):
    """A checkpoint or model file cannot be used."""


class TrustError(ExpertSimError):
    """An input could execute code when read and the user did not opt in."""


class OutputError(ExpertSimError):
    """An output would replace an input or an existing file, or cannot be written."""


class TrainingError(ExpertSimError):
    """Training cannot go on: a non-finite loss, or an output folder in use by another run."""
