"""A quiet, honest console: no bars or warnings nobody can act on, one named bar per training stage, a run that
waits on another run's stage says so, and a Ctrl-C says where it stopped (framework/console.py, stages.py)."""
import logging
import threading
import time
import warnings

import pytest
from filelock import FileLock

from framework import console, stages


@pytest.fixture
def quiet_console():
    import datasets
    import transformers.utils.logging

    with warnings.catch_warnings():
        console.quiet()
        yield
    transformers.utils.logging.enable_progress_bar()
    datasets.enable_progress_bars()


def test_quiet_turns_off_library_bars_and_deprecations_but_keeps_downloads_and_user_warnings(quiet_console):
    import datasets
    import huggingface_hub.utils
    import transformers.utils.logging

    assert not transformers.utils.logging.is_progress_bar_enabled()  # "Loading weights", "Writing model shards"
    assert not datasets.is_progress_bar_enabled()
    assert not huggingface_hub.utils.are_progress_bars_disabled()  # a download takes time: its bar stays
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        console.quiet()  # after simplefilter: its filters come first
        warnings.warn_explicit("`x` is deprecated", FutureWarning, "training_args.py", 1, module="transformers.x")
        warnings.warn_explicit("`y` is deprecated", FutureWarning, "sft_trainer.py", 1, module="trl.trainer")
        warnings.warn_explicit("check your data", UserWarning, "loaders.py", 1, module="framework.data.loaders")
    assert [str(w.message) for w in caught] == ["check your data"]


def _trainer(model, tokenizer, output_dir, max_steps, save_steps=1):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    texts = ["Ann has 3 pens. Ann finds 4 more. How many pens does Ann have now?\nAnn has 3 + 4 = 7 pens.\n#### 7"] * 16
    args = SFTConfig(output_dir=str(output_dir), max_steps=max_steps, per_device_train_batch_size=4, logging_steps=1,
                     save_strategy="steps", save_steps=save_steps, report_to="none", use_cpu=True, bf16=False,
                     max_length=64, activation_checkpointing=False, disable_tqdm=False)
    return SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": texts}),
                      processing_class=tokenizer)


def test_a_training_stage_shows_one_named_bar_with_its_loss_and_prints_no_log_dicts(tmp_path, capsys):
    from framework import tiny

    tokenizer = tiny.build_tokenizer()
    model = tiny.build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                             max_positions=64, seed=0)
    trainer = _trainer(model, tokenizer, tmp_path, max_steps=3, save_steps=10)
    console.stage_progress(trainer, "train toy")
    trainer.train()
    out, err = capsys.readouterr()
    assert "{'loss'" not in out + err and "train_runtime" not in out + err
    assert "train toy: 100%" in err and "loss=" in err


def test_resuming_a_model_with_tied_embeddings_does_not_report_the_tied_head_missing(tmp_path, caplog):
    from framework import tiny

    tokenizer = tiny.build_tokenizer()
    build = lambda: tiny.build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2,  # noqa: E731
                                     intermediate_size=64, max_positions=64, seed=0)
    _trainer(build(), tokenizer, tmp_path, max_steps=2).train()
    caplog.set_level(logging.WARNING, logger="transformers.trainer")
    _trainer(build(), tokenizer, tmp_path, max_steps=3).train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    warned = [r.getMessage() for r in caplog.records if "missing keys" in r.getMessage()]
    assert warned == ["There were missing keys in the checkpoint model loaded: ['lm_head.weight']."]  # what it said
    caplog.clear()
    model = build()
    with console.tied_weights_not_missing(model):
        _trainer(model, tokenizer, tmp_path / "2", max_steps=2).train()
        _trainer(model, tokenizer, tmp_path / "2", max_steps=3).train(
            resume_from_checkpoint=str(tmp_path / "2" / "checkpoint-2"))
    assert not [r for r in caplog.records if "missing keys" in r.getMessage()]


def test_a_run_waiting_for_another_runs_stage_says_what_it_waits_for_and_keeps_waiting(tmp_path, caplog,
                                                                                       monkeypatch):
    monkeypatch.setattr(stages, "LOCK_NOTICE_SECONDS", 0.2)
    monkeypatch.setattr(stages, "LOCK_REMINDER_SECONDS", 0.2)
    store = stages.StageStore(tmp_path)
    key, directory = store._directory("sft", {"a": 1})
    directory.mkdir(parents=True)
    other_run = FileLock(str(directory) + ".lock")
    other_run.acquire()
    entered = []

    def this_run():
        with store.open("sft", {"a": 1}) as stage:
            entered.append(stage.done)

    caplog.set_level(logging.INFO, logger="framework.stages")
    waiting = threading.Thread(target=this_run)
    waiting.start()
    time.sleep(1.0)
    assert entered == []  # still waiting
    other_run.release()
    waiting.join(timeout=30)
    assert entered == [False]
    notices = [r.getMessage() for r in caplog.records if r.getMessage().startswith("waiting for")]
    assert len(notices) >= 2 and notices[0].startswith(f"waiting for stage sft ({directory}): another run is "
                                                        f"computing it and holds its lock {directory}.lock")


def test_a_lock_taken_at_once_says_nothing(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="framework.stages")
    with stages.StageStore(tmp_path).open("sft", {"a": 1}):
        pass
    assert not [r for r in caplog.records if r.getMessage().startswith("waiting for")]


def test_an_interrupt_inside_a_stage_records_the_stages_it_went_through(tmp_path, monkeypatch):
    monkeypatch.setattr(stages, "interrupted", [])
    store = stages.StageStore(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with store.open("sft", {"a": 1}) as outer, store.open("evaluation", {"b": 2}) as inner:
            raise KeyboardInterrupt
    assert stages.interrupted == [f"stage sft ({outer.dir})", f"stage evaluation ({inner.dir})"]
    assert stages._open_stages == []
