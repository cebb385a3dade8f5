"""Where the framework's own files are, for code that needs them without importing the launcher."""
from __future__ import annotations

from pathlib import Path

# the Hydra config directory: the launcher's `config_path`, and what the report composes W&B agents' runs with
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
