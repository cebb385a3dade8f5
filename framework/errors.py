"""The one exception type for bad user input, and the one line for what Hydra refuses while composing.

ConfigError subclasses Hydra's CompactHydraException so that, when it escapes the launcher, Hydra prints
only its message (no traceback) and exits non-zero; inside a multirun it marks just that job failed.
"""
import argparse
import sys

from hydra.errors import CompactHydraException


class ConfigError(CompactHydraException):
    """A configuration value, data file or model reference that cannot work. The message names the key."""


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse for the framework's other commands (report, dashboard): a bad argument is one line and exit 2,
    like a bad launcher key, instead of the usage block followed by the error."""

    def error(self, message: str):
        print(f"error: {message} (`{self.prog} --help` lists the arguments)", file=sys.stderr)
        sys.exit(2)


def _one_line(text: str) -> str:
    """Hydra's message without its search-path listing, on one line."""
    return " ".join(line.strip() for line in text.split("Config search path:")[0].splitlines() if line.strip())


def composition_error_line(error: Exception, overrides=()) -> str:
    """One line for what Hydra refuses while composing: an unknown option, an unknown key, a wrong type,
    an override it cannot parse. `overrides`: the command line's, to name a group option placed at another
    package (`+dataset@evaluation.datasets.x=nosuch`) as it was given; Hydra's error names only the group."""
    from dataclasses import fields, is_dataclass

    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    from framework.config import unknown_key_message  # framework.config imports this module

    cause = error.__cause__
    if isinstance(error, MissingConfigException) and error.options is not None and error.missing_cfg_file:
        group, _, option = error.missing_cfg_file.rpartition("/")
        available = [name for name in error.options if not name.endswith("_schema")]  # building blocks, not options
        for override in overrides:
            key, _, value = str(override).lstrip("+~").partition("=")
            if key.startswith(f"{group}@") and option in value.split(","):
                group = key
        return f"{group}={option}: no such option; available: {', '.join(available)}"
    if isinstance(error, OverrideParseException):
        return f"{error.override}: cannot parse this override ({_one_line(error.message)})"
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        schema = getattr(cause, "object_type", None)
        if schema is dict and isinstance(cause, (ConfigAttributeError, ConfigKeyError)):  # a free-form node
            return (f"{cause.full_key}: new keys of this free-form node are added with `+`: "
                    f"+{cause.full_key}=<value>")
        known = {item.name for item in fields(schema)} if is_dataclass(schema) else None
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and known is not None and cause.key not in known:
            parent = getattr(cause, "parent_node", None)
            root = parent._get_root() if parent is not None else None  # holds the chosen options' names
            return unknown_key_message(root, cause.full_key, schema)
        return f"{cause.full_key}: {str(cause.msg).splitlines()[0]}"  # later lines repeat the key and type
    return _one_line(f"{error} {cause or ''}")
