"""The one exception type for bad user input.

It subclasses Hydra's CompactHydraException so that, when it escapes the launcher, Hydra prints
only its message (no traceback) and exits non-zero; inside a multirun it marks just that job failed.
"""
from hydra.errors import CompactHydraException


class ConfigError(CompactHydraException):
    """A configuration value, data file or model reference that cannot work. The message names the key."""
