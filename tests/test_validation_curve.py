"""A validation split held out from training (dataset.validation_size), evaluation on it while a method trains
(evaluation.during_training: a curve in the stage's record and on W&B, the best-on-validation checkpoint kept and
evaluated on the test split beside the last model), and searches scored on it (evaluation.objective)."""
import json
from dataclasses import asdict

import pytest
import torch

from conftest import FAST, FAST_TRAINING
from framework import registry
from framework.config import to_validated
from framework.errors import ConfigError
from framework.results import JobResult
from framework.stages import stage_key

# ---------------------------------------------------------------------------- the split


def _data(compose_cfg, *overrides):
    config = to_validated(compose_cfg(["logger=none", *overrides])).dataset
    return registry.datasets.get(config.name)(config)


def test_the_generated_validation_split_is_disjoint_from_train_test_and_heldout_and_moves_none_of_them(compose_cfg):
    sizes = ["dataset.train_size=300", "dataset.test_size=100", "dataset.heldout_size=50"]
    data = _data(compose_cfg, *sizes, "dataset.validation_size=80")
    without = _data(compose_cfg, *sizes)
    questions = {split: set(getattr(data, split)["question"]) for split in ("train", "test", "heldout", "validation")}
    assert len(questions["validation"]) == 80 == len(data.validation)
    for split in ("train", "test", "heldout"):
        assert not questions["validation"] & questions[split], split
        assert list(getattr(data, split)["question"]) == list(getattr(without, split)["question"]), split
    assert set(data.validation.column_names) >= {"prompt", "gold_answer"}  # labelled: it is scored
    assert without.validation is None


def test_a_real_datasets_validation_rows_are_the_last_of_its_training_split_and_leave_training(compose_cfg, tmp_path):
    rows = [{"question": f"q{i}", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(10)]
    for name in ("train", "test"):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    data = _data(compose_cfg, "dataset=gsm8k", f"dataset.path={tmp_path}", "dataset.validation_size=3")
    assert list(data.validation["question"]) == ["q7", "q8", "q9"]
    assert list(data.train["question"]) == [f"q{i}" for i in range(7)]
    limited = _data(compose_cfg, "dataset=gsm8k", f"dataset.path={tmp_path}", "dataset.validation_size=3",
                    "dataset.train_size=2")
    assert list(limited.train["question"]) == ["q0", "q1"] and len(limited.validation) == 3
    with pytest.raises(ConfigError, match=r"^dataset.validation_size: .*has 10"):
        _data(compose_cfg, "dataset=gsm8k", f"dataset.path={tmp_path}", "dataset.validation_size=10")


# The default job's data and SFT keys, as main computed them before validation splits existed (stage_key over the
# data fingerprint and the algorithm node): a default run's stages keep their spec (the code fingerprint aside,
# which any edit of the framework's training code changes).
DEFAULT_DATA_KEY, DEFAULT_SFT_KEY = "6b25fe0433825f74", "90edee732eb22266"


def test_a_run_without_a_validation_split_keeps_the_data_and_training_keys_it_had(compose_cfg):
    cfg = compose_cfg(["logger=none"])
    settings = to_validated(cfg)
    data = registry.datasets.get("arith")(settings.dataset)
    assert stage_key("data", data.fingerprint) == DEFAULT_DATA_KEY
    assert stage_key("alg", asdict(settings.algorithm)) == DEFAULT_SFT_KEY
    assert not settings.evaluation.during_training.enabled and settings.evaluation.objective == "test"


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("overrides, key", [
    (["evaluation.during_training.every_steps=0", "dataset.validation_size=8"],
     "evaluation.during_training.every_steps"),
    (["evaluation.during_training.every_steps=5"], "evaluation.during_training"),
    (["evaluation.during_training.each_epoch=true"], "evaluation.during_training"),
    (["evaluation.during_training.max_problems=0", "dataset.validation_size=8",
      "evaluation.during_training.each_epoch=true"], "evaluation.during_training.max_problems"),
    (["evaluation.objective=validation"], "evaluation.objective"),
    (["evaluation.objective=dev"], "evaluation.objective"),
    (["dataset.validation_size=-1"], "dataset.validation_size"),
])
def test_a_validation_setting_that_cannot_work_fails_before_any_work_naming_its_key(compose_cfg, overrides, key):
    with pytest.raises(ConfigError) as error:
        to_validated(compose_cfg(["logger=none", *overrides]))
    assert str(error.value).startswith(f"{key} ") and "\n" not in str(error.value), str(error.value)


def test_a_validation_split_on_a_dataset_without_training_rows_is_refused_naming_the_key(compose_cfg):
    from test_datasets import GAOKAO

    with pytest.raises(ConfigError, match=r"^dataset.validation_size: "):
        _data(compose_cfg, "dataset=gaokao2023en", f"dataset.path={GAOKAO}", "dataset.validation_size=2")


def test_the_cli_refuses_evaluation_during_training_without_a_validation_split_in_one_line(monkeypatch, capsys):
    from test_run_input import _launch

    error = _launch(monkeypatch, capsys, ["evaluation.during_training.every_steps=10"])
    assert error.startswith("error: evaluation.during_training ") and "dataset.validation_size" in error, error
    assert error.strip().count("\n") == 0


# ---------------------------------------------------------------------------- the search's objective
def test_the_search_preset_scores_trials_on_a_validation_split(compose_cfg):
    settings = to_validated(compose_cfg(["sweeps=search_sft", "logger=none"]))
    assert settings.evaluation.objective == "validation" and settings.dataset.validation_size > 0


def test_the_objective_a_job_returns_is_the_validation_accuracy_when_asked_and_test_accuracy_otherwise():
    record = {"algorithm": "sft", "decoder": "greedy", "decoder_label": "greedy", "dataset": "arith",
              "model": "tiny", "seed": 0, "metrics": {"accuracy": 0.9}}
    assert JobResult.from_dict(record).objective_value() == 0.9
    chosen = JobResult.from_dict({**record, "objective": "validation", "validation": {"metrics": {"accuracy": 0.4}}})
    assert chosen.objective_value() == 0.4


# ---------------------------------------------------------------------------- evaluation during training
CURVE = [*FAST, "algorithm.max_steps=5", "algorithm.per_device_train_batch_size=8", "algorithm.logging_steps=1",
         "algorithm.save_steps=100", "algorithm.lr_scheduler_type=constant", "algorithm.learning_rate=3e-3",
         "dataset.validation_size=12", "dataset.test_size=10"]
EVALUATED = ["evaluation.during_training.every_steps=2"]


def _weights(path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(next(path.glob("*.safetensors"))))


def _stage_dir(cache, result: dict):
    return cache / result["policy"]["stage"] / result["policy"]["key"]


@pytest.mark.slow  # three tiny SFT trainings of 2-5 steps and their evaluations: about 40 s on 2 busy cores
def test_evaluation_during_training_logs_a_curve_keeps_the_best_checkpoint_and_changes_no_weight(compose_cfg,
                                                                                              tmp_path):
    from framework.job import run
    from framework.report.sweep import collect
    from framework.report.render import write_report
    from wandb_records import offline_run

    cache = tmp_path / "cache"
    evaluated = run(compose_cfg([*CURVE, *EVALUATED, "logger=wandb", "logger.mode=offline"], cache),
                    tmp_path / "sweep" / "evaluated")
    plain = run(compose_cfg(CURVE, cache), tmp_path / "plain")

    # the curve: in the stage's record and on the W&B run, against the optimizer step (2, 4, and the last, 5)
    record = json.loads((_stage_dir(cache, evaluated) / "stage.json").read_text())
    points = [entry for entry in record["log_history"] if "validation_accuracy" in entry]
    assert [entry["step"] for entry in points] == [2, 4, 5]
    curve = [row for row in offline_run(tmp_path / "sweep" / "evaluated").series("train/sft/")
             if "train/sft/validation_accuracy" in row]
    assert [(row["train/sft/step"], row["train/sft/validation_accuracy"]) for row in curve] == \
        [(entry["step"], entry["validation_accuracy"]) for entry in points]

    # off, the training stage's spec has no trace of it (its key is what it was before evaluation during training)
    plain_record = json.loads((_stage_dir(cache, plain) / "stage.json").read_text())
    assert "during_training" in record["spec"] and "during_training" not in plain_record["spec"]
    assert set(record["spec"]) - set(plain_record["spec"]) == {"during_training"}

    # evaluating changed no weight: the last model equals the one trained without evaluation
    evaluated_weights, plain_weights = _weights(_stage_dir(cache, evaluated) / "output"), \
        _weights(_stage_dir(cache, plain) / "output")
    assert evaluated_weights.keys() == plain_weights.keys()
    assert all(torch.equal(evaluated_weights[name], plain_weights[name]) for name in plain_weights)
    assert evaluated["metrics"]["accuracy"] == plain["metrics"]["accuracy"]

    # the best point (the earliest of equals) and its checkpoint
    best = evaluated["best_on_validation"]
    scores = [entry["validation_accuracy"] for entry in points]
    assert best["validation_accuracy"] == max(scores)
    assert best["step"] == points[scores.index(max(scores))]["step"] and best["last_step"] == 5
    assert best["last_validation_accuracy"] == scores[-1]
    if best["step"] != 5:  # a checkpoint of its own: the model of that step (constant rate: a shorter run's model)
        kept = _stage_dir(cache, evaluated) / "output" / best["checkpoint"]
        short = run(compose_cfg([*CURVE, f"algorithm.max_steps={best['step']}"], cache), tmp_path / "short")
        kept_weights, short_weights = _weights(kept), _weights(_stage_dir(cache, short) / "output")
        assert all(torch.equal(kept_weights[name], short_weights[name]) for name in short_weights)
        assert best["metrics"]["accuracy"] == short["metrics"]["accuracy"]  # its test accuracy: that model's
        assert best["policy"] != evaluated["policy"]
    else:
        kept = _stage_dir(cache, evaluated) / "output"
        assert best["policy"] == evaluated["policy"] and best["metrics"] == evaluated["metrics"]
    assert best["validation_accuracy"] == _rescore_on_validation(compose_cfg, cache, kept)

    # the report: last and best on validation, each with its step
    runs, missing = collect(tmp_path / "sweep")
    text = write_report(runs, tmp_path / "sweep", "curve", missing, plots=False)
    section = text[text.index("### Last and best-on-validation checkpoints"):]
    row = next(line for line in section.splitlines() if line.startswith("| sft "))
    assert f"{100 * evaluated['metrics']['accuracy']:.1f} (5)" in row
    assert f"{100 * best['metrics']['accuracy']:.1f} ({best['step']})" in row


def _rescore_on_validation(compose_cfg, cache, checkpoint) -> float:
    """The validation accuracy of the checkpoint on disk, scored afresh (not read from the curve)."""
    from framework.algorithms.validation import ValidationEvaluator
    from framework.models import ModelHandle, resolve_runtime

    settings = to_validated(compose_cfg([*CURVE, *EVALUATED], cache))
    data = registry.datasets.get("arith")(settings.dataset)
    evaluator = ValidationEvaluator(settings.evaluation.during_training, data.validation, data.checker,
                                    settings.decoder.max_new_tokens, data.stop)
    handle = ModelHandle(str(checkpoint), {})
    runtime = resolve_runtime("cpu", "fp32")
    return evaluator.accuracy(handle.load_model(runtime), handle.load_tokenizer())


@pytest.mark.slow  # a tiny SFT training with evaluation, once per objective's job: about 15 s
def test_a_job_asked_for_the_validation_objective_returns_its_decoders_accuracy_on_the_validation_split(
        compose_cfg, tmp_path):
    from framework.job import run

    result = run(compose_cfg([*CURVE, "evaluation.objective=validation"], tmp_path / "cache"), tmp_path / "job")
    validation = result["validation"]["metrics"]
    assert result["objective"] == "validation" and validation["num_problems"] == 12  # the validation split's size
    assert JobResult.from_dict(result).objective_value() == validation["accuracy"]
    assert result["metrics"]["num_problems"] == 10  # the test split is still what `metrics` scores


@pytest.mark.slow  # one tiny SFT training of 6 steps: about 15 s
def test_the_kept_checkpoint_is_the_model_of_the_step_that_scored_best_the_earliest_of_equals(compose_cfg, tmp_path,
                                                                                          monkeypatch):
    """Scripted validation scores (the tiny model scores 0 everywhere), the model's weights noted at each point."""
    from framework.algorithms.validation import ValidationEvaluator
    from framework.job import run

    scores, seen = iter([0.1, 0.5, 0.3, 0.5, 0.2, 0.4]), []

    def scripted(self, model, tokenizer):
        seen.append({name: tensor.detach().clone() for name, tensor in model.state_dict().items()})
        return next(scores)

    monkeypatch.setattr(ValidationEvaluator, "accuracy", scripted)
    cache = tmp_path / "cache"
    result = run(compose_cfg([*CURVE, "algorithm.max_steps=6", "evaluation.during_training.every_steps=1"], cache),
                 tmp_path / "job")
    best = result["best_on_validation"]
    assert (best["step"], best["validation_accuracy"], best["last_step"], best["last_validation_accuracy"]) == \
        (2, 0.5, 6, 0.4)
    kept = _weights(_stage_dir(cache, result) / "output" / best["checkpoint"])
    assert all(torch.equal(kept[name], seen[1][name]) for name in kept)  # step 2's model, not step 4's
    assert not all(torch.equal(kept[name], seen[3][name]) for name in kept)
    last = _weights(_stage_dir(cache, result) / "output")
    assert all(torch.equal(last[name], seen[5][name]) for name in last)  # the curve's last point is the final model


class Killed(Exception):
    """Stands for a kill in the middle of training."""


@pytest.mark.slow  # two tiny SFT runs of a few steps (the second resumes): about 25 s
def test_a_resumed_training_keeps_the_best_checkpoint_its_restored_curve_knows(compose_cfg, tmp_path, monkeypatch):
    """Killed after a new best (step 5) was kept but before its checkpoint was saved: the rerun resumes from step
    4's checkpoint, whose history has step 2 as the best, and must keep step 2's weights, not step 5's."""
    from framework.algorithms.validation import ValidationEvaluator
    from framework.job import run

    scripts = {"first": iter([0.1, 0.5, 0.3, 0.2, 0.9, Killed()]), "rerun": iter([0.4, 0.45])}
    script, seen = "first", {}

    def scripted(self, model, tokenizer):
        value = next(scripts[script])
        if isinstance(value, Killed):
            raise value
        weights = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
        seen.setdefault(script, []).append(weights)
        return value

    monkeypatch.setattr(ValidationEvaluator, "accuracy", scripted)
    cache = tmp_path / "cache"
    overrides = [*CURVE, "algorithm.max_steps=6", "algorithm.save_steps=2", "evaluation.during_training.every_steps=1"]
    with pytest.raises(Killed):
        run(compose_cfg(overrides, cache), tmp_path / "first")
    script = "rerun"
    result = run(compose_cfg(overrides, cache), tmp_path / "rerun")
    best = result["best_on_validation"]
    assert (best["step"], best["validation_accuracy"], best["points"]) == (2, 0.5, 6)
    kept = _weights(_stage_dir(cache, result) / "output" / best["checkpoint"])
    assert all(torch.equal(kept[name], seen["first"][1][name]) for name in kept)
