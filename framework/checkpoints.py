"""Trainer checkpoints: the one a rerun resumes from. Shared by every training stage (framework/algorithms/
training.py) and the embedded model's pretraining (framework/tiny.py)."""
from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

log = logging.getLogger(__name__)


def last_complete_checkpoint(checkpoint_dir: Path) -> str | None:
    """The newest `checkpoint-<step>` that was fully written, after deleting newer partial ones.

    A kill during a save leaves a directory without `trainer_state.json` (the Trainer writes it
    last), and resuming from it fails; transformers' `get_last_checkpoint` does not check this.
    """
    from transformers.trainer import TRAINER_STATE_NAME
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return None
    steps = {int(m.group(1)): path for path in checkpoint_dir.iterdir()
             if path.is_dir() and (m := re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", path.name))}
    for step in sorted(steps, reverse=True):
        path = steps[step]
        try:
            json.loads((path / TRAINER_STATE_NAME).read_text())
            return str(path)
        except (OSError, ValueError):
            log.warning("removing incomplete checkpoint %s (interrupted while saving)", path)
            shutil.rmtree(path, ignore_errors=True)
    return None
