"""Where the framework's own files are, for code that needs them without importing the launcher, and the check
that a directory a run writes can be written."""
from __future__ import annotations

import os
from pathlib import Path

# the Hydra config directory: the launcher's `config_path`, and what the report composes W&B agents' runs with
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def require_writable_directory(path: str | os.PathLike, key: str) -> None:
    """Raise ConfigError (one line naming `key`) unless `path` is a directory this process can write, or one it
    can create: checked before any work, without creating anything, so that a run does not fail at its first
    write after hours of training. A missing directory is judged by its nearest existing parent."""
    from framework.errors import ConfigError

    target = Path(os.path.expanduser(str(path))).absolute()
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == target else f"cannot be created: {existing} is a file"
        raise ConfigError(f"{key}: {str(target)!r} {where}, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):  # access(2) also answers a read-only filesystem, even for root
        where = "is not writable" if existing == target else f"cannot be created: {existing} is not writable"
        raise ConfigError(f"{key}: {str(target)!r} {where} (permissions or a read-only filesystem)")
