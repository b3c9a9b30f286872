"""Project exceptions: errors a user can cause (bad params, bad files, bad shapes).

The CLI prints these without a traceback and exits non-zero.
Messages name the file or key and what was expected.
"""


class XPVisionError(Exception):
    """Base class of every error a user can cause."""


class ConfigError(XPVisionError, ValueError):
    """A params.yaml block or a command-line value is unknown or invalid."""


class DataError(XPVisionError, ValueError):
    """A data file is missing, corrupt, malformed, or fails its checksum."""


class ShapeError(XPVisionError, ValueError):
    """An array has the wrong shape, dtype or channel count for a layer or function."""


class WeightsError(XPVisionError, ValueError):
    """A weights file does not match the model it is loaded into, or is not a valid weights file."""


class TrainingError(XPVisionError, RuntimeError):
    """Training cannot go on (for example the loss became NaN or infinite)."""
