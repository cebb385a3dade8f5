"""A quiet console: one progress bar per stage that takes time, the stage's own log line, and nothing the user
cannot act on.

Left alone, a small Self-Explore job printed dozens of progress bars (a "Loading weights" bar per model load, a
"Writing model shards" bar per save, five `datasets.map` bars per trainer), a printed dict per logging step,
library FutureWarnings about the libraries' own internals, and transformers' "Running in WANDB offline mode"
even for --help. `quiet()` turns off what is not the user's to act on, through each library's own switch;
`stage_progress` gives a training stage its one bar.
"""
from __future__ import annotations

import ast
import contextlib
import io
import logging
import warnings
from contextlib import contextmanager

# Libraries whose FutureWarnings and DeprecationWarnings are about their own internals or the framework's use of
# them: a user of the framework can act on none of them (the tests still see them).
LIBRARIES = ("transformers", "trl", "peft", "accelerate", "datasets", "torch", "huggingface_hub", "wandb")


def quiet() -> None:
    """Turn off the bars and messages nobody running the framework can act on. Idempotent; called by the launcher
    before anything is imported, and by every job (a submitit job starts in a fresh process)."""
    for library in LIBRARIES:
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category, module=rf"{library}(\.|$)")
    # transformers prints "[INFO] Running in WANDB offline mode" when it imports its W&B integration with
    # WANDB_MODE=offline set (a bare print, no logger to turn down): import it here, its print swallowed
    with contextlib.redirect_stdout(io.StringIO()):
        import transformers.integrations.integration_utils  # noqa: F401
    import datasets
    import huggingface_hub.utils
    import transformers.utils.logging

    transformers.utils.logging.disable_progress_bar()  # "Loading weights", "Writing model shards"
    huggingface_hub.utils.enable_progress_bars()  # which that switch also turns off: a download takes time
    datasets.disable_progress_bars()  # the trainers' map() passes over a few thousand rows: instant


def _stage_progress_class():
    from tqdm.auto import tqdm
    from transformers.trainer_callback import ProgressCallback

    class StageProgress(ProgressCallback):
        """transformers' training bar, named for its stage, with the latest loss on the bar instead of a dict
        printed at every logging step (the stage record and W&B keep every logged value)."""

        def __init__(self, description: str):
            super().__init__()
            self.description = description

        def on_train_begin(self, args, state, control, **kwargs):  # the parent's, with the bar's name
            if state.is_world_process_zero:
                self.training_bar = tqdm(total=state.max_steps, desc=self.description, dynamic_ncols=True)
            self.current_step = 0

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.training_bar is not None and logs and isinstance(logs.get("loss"), (int, float)):
                self.training_bar.set_postfix(loss=f"{logs['loss']:.4g}")

    return StageProgress


def stage_progress(trainer, description: str) -> None:
    """Replace the trainer's progress bar with one named `description` that prints no per-step dicts."""
    from transformers.trainer_callback import ProgressCallback

    if any(type(callback) is ProgressCallback for callback in trainer.callback_handler.callbacks):
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(_stage_progress_class()(description))


class _TiedKeysFilter(logging.Filter):
    """Drops transformers' "There were missing keys in the checkpoint model loaded: [...]" when every missing key
    is a tied weight (the checkpoint stores the embedding once; loading it restores the head too)."""

    PREFIX = "There were missing keys in the checkpoint model loaded: "

    def __init__(self, tied: set[str]):
        super().__init__()
        self.tied = tied

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(self.PREFIX):
            return True
        try:
            missing = set(ast.literal_eval(message[len(self.PREFIX):].rstrip(".")))
        except (ValueError, SyntaxError):
            return True
        return not missing <= self.tied


@contextmanager
def tied_weights_not_missing(model):
    """While a trainer resumes `model` from a checkpoint, keep quiet about its tied weights being absent there."""
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    logger = logging.getLogger("transformers.trainer")
    keep_out = _TiedKeysFilter(tied)
    logger.addFilter(keep_out)
    try:
        yield
    finally:
        logger.removeFilter(keep_out)


def close_progress_bars() -> None:
    """Close the bars still open (their last state stays on screen), so that a line printed next starts on a line
    of its own and no bar redraws itself after it when the interpreter exits (after a Ctrl-C)."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):  # tqdm's registry of open bars
        bar.close()
