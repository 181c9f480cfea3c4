"""Exception and warning classes raised by fusion.

Every error about user input derives from :class:`FusionError`, so a command-line
entry point can print one clear line for it and keep the traceback for the log.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "DataWarning",
    "FusionError",
    "FusionWarning",
    "MetricWarning",
]


class FusionError(Exception):
    """Base class for errors caused by user input or configuration."""


class ConfigError(FusionError, ValueError):
    """The configuration is invalid: an unknown key, a wrong type or a forbidden value."""


class DataError(FusionError, ValueError):
    """An input file, table or array is missing, malformed or inconsistent."""


class FusionWarning(UserWarning):
    """Base class for warnings issued by fusion."""


class DataWarning(FusionWarning):
    """Input data was usable but needed an adjustment the user should know about."""


class MetricWarning(FusionWarning):
    """A metric is undefined for a fold (for example one class only) and is reported as NaN."""
