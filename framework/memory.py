"""Giving a stage's memory back before the next one starts.

A trained model refers to itself: accelerate sets `model.forward` on the instance to a method bound to the model
(its autocast wrapper in `prepare_model`, the unwrapped forward again in `unwrap_model`), so a finished stage's
model (and whatever it holds) is garbage only for Python's cycle collector, which runs when allocation counts say so, not when a GPU needs
the memory; and what PyTorch frees stays reserved by its caching allocator, which the driver (and vLLM's
start-up check of free memory) counts as used. `release()` runs both: `gc.collect()`, then, where CUDA was
used, `torch.cuda.empty_cache()`.

framework/stages.py calls it when a stage opens after another stage was computed in this process (whatever the
finished stage made is unreachable by then: its frames have returned), and framework/job.py at the end of every
job, so the next job of a sweep (`-m` runs every job in one process) starts from an empty GPU.
"""
from __future__ import annotations

import gc
import sys

_work_since_release = False  # a stage was computed in this process since the last release


def note_work() -> None:
    """A stage was computed here: the next `release_if_worked` collects."""
    global _work_since_release
    _work_since_release = True


def release() -> None:
    global _work_since_release
    gc.collect()
    torch = sys.modules.get("torch")  # only if something imported it: releasing must not import CUDA
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    _work_since_release = False


def release_if_worked() -> None:
    """`release()` when a stage was computed since the last one (reused stages make nothing to release;
    a collection over the heap of torch and transformers takes ~0.1 s, too much for every reused stage)."""
    if _work_since_release:
        release()
