"""Where the framework's own files are, for code that needs them without importing the launcher, and the check
that a directory a run writes can be written."""
from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

_PACKAGE = Path(__file__).resolve().parent
# The directory holding conf/ (the Hydra configs) and sweeps/ (the sweeps a user launches): the repository in a
# checkout or an editable install; an installed wheel carries both inside the package (pyproject.toml maps them to
# framework/conf and framework/sweeps), since top-level folders named conf and sweeps do not belong in site-packages.
ROOT = _PACKAGE if (_PACKAGE / "conf").is_dir() else _PACKAGE.parent
# the Hydra config directory: the launcher's `config_path`, and what the report composes W&B agents' runs with
CONF_DIR = str(ROOT / "conf")
# the config group `sweeps` (sweeps=<name>), with the W&B sweep specs in its wandb/
SWEEPS_DIR = ROOT / "sweeps"

# conf/config.yaml puts ROOT on Hydra's search path (hydra.searchpath: file://${framework.root:}), which is how
# Hydra finds the group sweeps/ outside conf/ from any working directory (--help lists them from SWEEPS_DIR:
# framework/help.py). Registered on import, as every composer (the launcher, the report's W&B reader, the tests)
# takes CONF_DIR from here.
OmegaConf.register_new_resolver("framework.root", lambda: str(ROOT), replace=True)


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
