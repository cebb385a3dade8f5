"""Each stage gives its memory back: once a stage is over, no model or trainer it made is reachable, so the
next stage (and the next job of a sweep, which `-m` runs in the same process) starts from an empty GPU.

The checks run with Python's cycle collector switched off: a trainer and its model refer to each other (its
callbacks, accelerate's wrapped `forward`), so they go only when something collects. With the collector off,
only the framework's own collection (framework/memory.py) can free them, which is what a GPU needs: the
automatic collector runs when Python's allocation counts say so, not when the GPU is full."""
from __future__ import annotations

import gc
import sys
import traceback
import weakref
from contextlib import contextmanager

import pytest

from conftest import FAST, FAST_TRAINING, compose_config
from framework.stages import StageStore


class Tracked:
    """Weak references to every transformers model and Trainer built, with where each was built, and every
    stage that opened while one built before it was still reachable."""

    def __init__(self):
        self.made: list[tuple[str, weakref.ref]] = []
        self.violations: list[str] = []

    def alive(self) -> list[str]:
        return [where for where, ref in self.made if ref() is not None]


@pytest.fixture
def tracked(monkeypatch):
    import transformers

    record = Tracked()

    def tracking(init):
        def tracked_init(self, *args, **kwargs):
            init(self, *args, **kwargs)
            frames = [frame for frame in traceback.extract_stack()[:-1] if "/framework/" in frame.filename]
            where = f"{type(self).__name__} built at " + (
                f"{frames[-1].filename.rsplit('/framework/', 1)[1]}:{frames[-1].lineno}" if frames else "?")
            record.made.append((where, weakref.ref(self)))
        return tracked_init

    monkeypatch.setattr(transformers.PreTrainedModel, "__init__", tracking(transformers.PreTrainedModel.__init__))
    monkeypatch.setattr(transformers.Trainer, "__init__", tracking(transformers.Trainer.__init__))
    opened = StageStore.open

    @contextmanager
    def checked_open(self, kind, spec, *args, **kwargs):
        with opened(self, kind, spec, *args, **kwargs) as stage:
            if record.alive():
                record.violations.append(f"stage {kind} opened while reachable: {record.alive()}")
            yield stage

    monkeypatch.setattr(StageStore, "open", checked_open)
    gc.collect()
    gc.disable()
    try:
        yield record
    finally:
        gc.enable()


@pytest.mark.slow
def test_a_multi_stage_method_leaves_no_model_of_a_finished_stage_reachable(tracked, monkeypatch, tmp_path):
    """Self-Explore (the tiny model, scripted rationales so that every training stage trains: RFT, DPO with its
    frozen reference) and its evaluation: at each stage's start, and once the job is over, nothing is left."""
    from test_self_explore import _scripted_sampling
    from framework.data.loaders import ArithDatasetConfig, load_arith
    from framework.job import run

    train = load_arith(ArithDatasetConfig(train_size=32, test_size=6)).train
    _scripted_sampling(monkeypatch, dict(zip(train["prompt"], train["completion"])), [])
    overrides = ["algorithm=self_explore", *FAST, *FAST_TRAINING, "algorithm.starting_point=sft",
                 *[key.replace("algorithm.", "algorithm.sft.", 1) for key in FAST_TRAINING],
                 "algorithm.rationales_per_question=3", "algorithm.train_prompts=8", "algorithm.rft.max_steps=2",
                 "algorithm.rft.per_device_train_batch_size=8"]
    results = run(compose_config(overrides, tmp_path / "cache"), tmp_path / "run")
    assert results["policy"]["stage"] == "self_explore"
    built = [where for where, _ in tracked.made]
    assert sum("Trainer" in where for where in built) >= 4  # pretraining, SFT, RFT, DPO: all really trained
    assert tracked.violations == [] and tracked.alive() == []


@pytest.mark.slow
def test_a_two_job_sweep_in_one_process_frees_each_job_before_the_next(tracked, monkeypatch, tmp_path, capsys):
    """`python -m framework -m algorithm=dpo seed=0,1`, both jobs in this process (Hydra's basic launcher), each
    with its own sampled set, training and evaluation: the sampled set's engine, the trainer and its reference,
    the evaluation's engine and the premises' are gone before the next stage, and nothing of the first job is
    left when the second starts or of either at the end."""
    from framework import __main__ as launcher

    sampling = ["algorithm.starting_point=base", "algorithm.samples_per_prompt=3", "algorithm.max_new_tokens=12",
                "algorithm.require_finished=false"]
    argv = ["framework", "-m", "algorithm=dpo", "seed=0,1", *FAST, *FAST_TRAINING, *sampling,
            f"stages.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={tmp_path / 'sweep'}",
            "~hydra.callbacks.comparison_table"]
    monkeypatch.setattr(sys, "argv", argv)
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    launcher.main()
    assert len(list((tmp_path / "sweep").glob("*/results.json"))) == 2
    built = [where for where, _ in tracked.made]
    assert sum("Trainer" in where for where in built) >= 3  # pretraining, DPO twice
    assert tracked.violations == [] and tracked.alive() == []
