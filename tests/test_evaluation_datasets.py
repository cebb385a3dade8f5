"""Train once, score everywhere: evaluation.datasets scores a job's model on more datasets than the one it trains
on, each with its own prompts, checker and generation length, each a stage of its own; results.json, W&B and the
report carry one table per dataset, and a job without the list is as it was."""
import json

import pytest
from hydra.errors import ConfigCompositionException

from conftest import FAST, FAST_TRAINING
from framework.config import evaluation_targets, to_validated
from framework.errors import ConfigError, composition_error_line
from framework.job import run
from framework.report import collect, write_report
from wandb_records import offline_run


def _targets(compose_cfg, overrides):
    cfg = compose_cfg(overrides)
    return {target.name: target for target in evaluation_targets(cfg, to_validated(cfg))}


# ---------------------------------------------------------------------------- config
def test_soc_paper_scores_its_model_on_the_papers_three_benchmarks(compose_cfg):
    targets = _targets(compose_cfg, ["experiment=soc_paper"])
    assert list(targets) == ["math500", "gsm8k", "gaokao2023en"]
    assert [target.key for target in targets.values()] == [
        "dataset", "evaluation.datasets.gsm8k", "evaluation.datasets.gaokao2023en"]
    # each its own prompts and length (paper-recipes.md: few-shot CoT, zero-shot on GAOKAO), one decoder
    assert {name: (t.dataset.name, t.dataset.prompt_format, t.decoder.max_new_tokens) for name, t in targets.items()} \
        == {"math500": ("math500", "few_shot", 1024), "gsm8k": ("gsm8k", "few_shot", 512),
            "gaokao2023en": ("gaokao2023en", "zero_shot", 1024)}
    assert {(t.decoder.name, t.decoder.num_beams, t.decoder.length_penalty) for t in targets.values()} == {("beam", 5, 0.0)}


def test_soc_paper_trained_on_gsm8k_still_scores_the_three_benchmarks_once_each(compose_cfg):
    """The entry named like the training dataset is that dataset's own test split, scored once."""
    targets = _targets(compose_cfg, ["experiment=soc_paper", "dataset=gsm8k"])
    assert [(name, t.key) for name, t in targets.items()] == [
        ("gsm8k", "dataset"), ("math500", "evaluation.datasets.math500"),
        ("gaokao2023en", "evaluation.datasets.gaokao2023en")]
    assert targets["math500"].decoder.max_new_tokens == 1024 and targets["gsm8k"].decoder.max_new_tokens == 512


def test_an_evaluation_dataset_added_on_the_command_line_brings_its_own_length_unless_the_decoder_sets_one(
        compose_cfg):
    assert list(_targets(compose_cfg, [])) == ["arith"]  # the default: the training dataset only
    targets = _targets(compose_cfg, ["+dataset@evaluation.datasets.gsm8k=gsm8k", "evaluation.datasets.gsm8k.test_size=9"])
    assert (targets["arith"].decoder.max_new_tokens, targets["gsm8k"].decoder.max_new_tokens) == (96, 512)
    assert targets["gsm8k"].dataset.test_size == 9 and targets["gsm8k"].dataset.prompt_template.startswith("Question:")
    fixed = _targets(compose_cfg, ["+dataset@evaluation.datasets.gsm8k=gsm8k", "decoder.max_new_tokens=40"])
    assert {t.decoder.max_new_tokens for t in fixed.values()} == {40}


@pytest.mark.parametrize("overrides, message", [
    (["+evaluation.datasets.x=5"], "evaluation.datasets.x: is not a dataset option (got 5); add one with "
                                   "+dataset@evaluation.datasets.x=<option>"),
    (["+evaluation.datasets.x.name=gsm8k"], "evaluation.datasets.x: is not a dataset option"),
    (["+dataset@evaluation.datasets.x=gsm8k", "evaluation.datasets.x.max_new_tokens=0"],
     "evaluation.datasets.x.max_new_tokens must be >= 1"),
    (["+dataset@evaluation.datasets.x=gsm8k", "+evaluation.datasets.x.few_shot=2"],
     "evaluation.datasets.x.few_shot: unknown key (did you mean evaluation.datasets.x.few_shot_examples?); "
     "evaluation.datasets.x (dataset=gsm8k) has no such key"),
])
def test_an_evaluation_entry_that_is_no_dataset_or_has_a_bad_value_is_refused_naming_its_key(compose_cfg, overrides,
                                                                                              message):
    with pytest.raises(ConfigError) as error:
        to_validated(compose_cfg(overrides))
    assert str(error.value).startswith(message), str(error.value)


def test_an_unknown_dataset_in_the_evaluation_list_is_named_as_given(compose_cfg):
    overrides = ["+dataset@evaluation.datasets.x=gsm8kk"]
    with pytest.raises(ConfigCompositionException) as error:
        compose_cfg(overrides)
    assert composition_error_line(error.value, overrides).startswith(
        "dataset@evaluation.datasets.x=gsm8kk: no such option; available: arith, gaokao2023en, gsm8k, math, ")


# ---------------------------------------------------------------------------- jobs on the tiny model
# the decoder's length follows each dataset here (FAST fixes decoder.max_new_tokens for every dataset)
TINY = [o for o in FAST if not o.startswith("decoder.max_new_tokens")] + ["dataset.max_new_tokens=20", *FAST_TRAINING]
# a second arithmetic task: other problems (data seed), longer ones, another prompt, a shorter generation length
SECOND = ["+dataset@evaluation.datasets.arith_long=arith", "evaluation.datasets.arith_long.seed=7",
          "evaluation.datasets.arith_long.min_steps=4", "evaluation.datasets.arith_long.train_size=8",
          "evaluation.datasets.arith_long.test_size=5", "evaluation.datasets.arith_long.heldout_size=0",
          "evaluation.datasets.arith_long.prompt_template='Q: {question} A:'",
          "evaluation.datasets.arith_long.max_new_tokens=12"]


@pytest.mark.slow  # three tiny jobs (one trains): about 10 s on 2 cores
def test_one_trained_model_is_scored_on_two_datasets_in_one_job_and_a_rerun_reuses_both(compose_cfg, tmp_path):
    cache, sweep = tmp_path / "cache", tmp_path / "sweep"
    plain = run(compose_cfg(TINY, cache), tmp_path / "plain")
    both = run(compose_cfg([*TINY, *SECOND, "logger=wandb", "logger.mode=offline"], cache), sweep / "both")
    again = run(compose_cfg([*TINY, *SECOND], cache), tmp_path / "again")

    # a job without the list writes what it always wrote; the one with it keeps the training dataset's in place
    assert "evaluations" not in plain and "evaluations" not in json.loads((tmp_path / "plain" / "results.json").read_text())
    assert both["policy"] == plain["policy"] and both["metrics"] == plain["metrics"] and both["evaluation_reused"]
    assert set(both) - set(plain) == {"evaluations"}
    (name, scored), = both["evaluations"].items()
    assert name == "arith_long" and scored["dataset"] == "arith" and not scored["evaluation_reused"]
    assert scored["metrics"]["num_problems"] == 5 and both["metrics"]["num_problems"] == 6
    assert scored["decoder_config"]["max_new_tokens"] == 12 and both["decoder_config"]["max_new_tokens"] == 20
    rows = [json.loads(line) for line in (sweep / "both" / "evaluations" / "arith_long" / "generations.jsonl").open()]
    questions = {json.loads(line)["question"] for line in (sweep / "both" / "generations.jsonl").open()}
    assert len(rows) == 5 and max(row["num_tokens"] for row in rows) <= 12
    assert not questions & {row["question"] for row in rows}  # the other dataset's problems
    assert json.loads((sweep / "both" / "results.json").read_text())["evaluations"] == both["evaluations"]

    # W&B: the training dataset's metrics where they were, the other's under eval/<name>/
    history = {key for row in offline_run(sweep / "both").history for key in row}
    assert {"eval/accuracy", "eval/arith_long/accuracy", "eval/arith_long/num_problems"} <= history

    # the rerun (another output directory) reuses the model and both evaluation stages
    assert again["evaluation_reused"] and again["evaluations"]["arith_long"]["evaluation_reused"]
    assert again["evaluations"]["arith_long"]["metrics"] == scored["metrics"]
    assert len(list((cache / "evaluation").glob("*/stage.json"))) == 2

    # the report: one section per dataset, each from its own generations
    runs, missing = collect(sweep)
    report = write_report(runs, sweep, "t", missing, plots=False)
    assert "## `arith` with model `tiny`" in report and "## `arith_long` with model `tiny`" in report
    assert "5 test problems" in report.split("## `arith_long`")[1]
    assert "agree with results.json for 2/2 jobs" in report  # arith_long's generations recomputed too
    csv_rows = (sweep / "report.csv").read_text().splitlines()[1:]
    assert sorted(row.split(",")[0] for row in csv_rows) == ["arith", "arith_long"]


def test_a_wandb_run_with_an_evaluation_dataset_gives_a_run_per_dataset(tmp_path):
    from framework.report import collect_wandb
    from test_report import _FakeApi, _FakeRun

    wandb_run = _FakeRun("r0", 0, [1, 0, 0, 0])
    wandb_run.config["evaluation"] = {"datasets": {"gsm8k": {"name": "gsm8k", "test_size": 4}}}
    wandb_run.summary_metrics.update({"eval/gsm8k/accuracy": 0.25, "eval/gsm8k/num_problems": 4,
                                      "eval/gsm8k/generations": wandb_run.summary_metrics["eval/generations"]})
    runs, _ = collect_wandb("g", "p", "e", api=_FakeApi([wandb_run]))
    assert sorted((r.result.dataset, r.evaluation) for r in runs) == [("arith", None), ("gsm8k", "gsm8k")]
    arith, gsm8k = sorted(runs, key=lambda r: r.result.dataset)
    assert "gsm8k/accuracy" not in arith.result.metrics and gsm8k.result.metrics["accuracy"] == 0.25
    assert gsm8k.problem_scores == {0: 1, 1: 0, 2: 0, 3: 0}  # from its own table, eval/gsm8k/generations
