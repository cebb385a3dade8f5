"""Every job's W&B run has one shape, whether it trained its model or reused it from the stage cache: the
training curves of every stage the model rests on (from the stages' records), the framework's config without
secrets. Read back from the offline run files."""
import json

import pytest

from conftest import FAST, FAST_TRAINING
from framework import tracking
from framework.job import run
from wandb_records import offline_run

SECRET = "hf_not_a_real_token_123"
# BoN-SFT from an SFT warm start (two training stages) with its control under greedy; the random base rarely
# ends with EOS, so unfinished samples are kept
BON_SFT = ["algorithm=bon_sft", *FAST, *FAST_TRAINING, "algorithm.starting_point=sft",
           *[override.replace("algorithm.", "algorithm.sft.", 1) for override in FAST_TRAINING],
           "algorithm.samples_per_prompt=3", "algorithm.max_new_tokens=12", "algorithm.require_finished=false",
           "logger=wandb", "logger.mode=offline", f"+algorithm.trainer.hub_token={SECRET}"]


def _curves(wandb_run, kind: str) -> list[dict]:
    return wandb_run.series(f"train/{kind}/")


@pytest.mark.slow  # two jobs that train (SFT, BoN-SFT, the control): about 40 s on 2 cores
def test_a_job_that_reuses_its_model_logs_the_same_curves_and_config_as_the_one_that_trained_it(compose_cfg,
                                                                                                tmp_path):
    cache = tmp_path / "cache"
    trained = run(compose_cfg([*BON_SFT, "decoder=greedy", "evaluation.control_decoders=[greedy]"], cache),
                  tmp_path / "trained")
    reused = run(compose_cfg([*BON_SFT, "decoder=beam", "decoder.num_beams=2"], cache), tmp_path / "reused")
    assert trained["policy"] == reused["policy"]  # the second job trained nothing
    first, second = offline_run(tmp_path / "trained"), offline_run(tmp_path / "reused")
    for kind in ("sft", "bon_sft"):
        curve = _curves(first, kind)
        assert any(f"train/{kind}/loss" in row for row in curve), kind
        assert [row[f"train/{kind}/step"] for row in curve if f"train/{kind}/loss" in row] == [1, 2]
        assert curve == _curves(second, kind), kind  # the reused stage's curve, from its record
    # the control trains in the greedy job only; its curve is its own, not the method's
    assert _curves(first, "control") and not _curves(second, "control")
    # the same config shape: the framework's resolved config (no TrainingArguments dumped at the top)
    assert set(first.config) == set(second.config)
    assert {"algorithm", "decoder", "dataset", "model", "seed", "method"} <= set(first.config)
    assert "learning_rate" not in first.config and "per_device_train_batch_size" not in first.config
    for wandb_run in (first, second):
        text = json.dumps(wandb_run.config)
        assert SECRET not in text and "hub_token" not in text
    # the model's compute leaves out its control's training (which the control's own record counts)
    stages = [entry["kind"] for entry in trained["compute"]["stages"]]
    assert stages.count("sft") == 1 and stages.count("bon_sft") == 1  # the control (an sft stage) is not there
    by_kind = {entry["kind"]: entry for entry in trained["compute"]["stages"]}
    assert trained["compute"]["train_tokens"] == by_kind["sft"]["train_tokens"] + by_kind["bon_sft"]["train_tokens"]
    assert trained["compute"]["train_tokens"] == reused["compute"]["train_tokens"]


def test_secrets_are_left_out_of_the_tracked_config_at_any_depth():
    config = {"algorithm": {"trainer": {"hub_token": "x", "optim": "adamw_torch"}, "api_key": "y"},
              "logger": [{"password": "z", "project": "p"}], "max_new_tokens": 5, "pad_token": "<pad>"}
    assert tracking.public_config(config) == {"algorithm": {"trainer": {"optim": "adamw_torch"}},
                                              "logger": [{"project": "p"}], "max_new_tokens": 5,
                                              "pad_token": "<pad>"}


class _Recorder(tracking.NullTracker):
    def __init__(self):
        self.logged = []

    def log_training(self, kind, history):
        self.logged.append((kind, history))


class _Stages:
    def __init__(self, records):
        self.records = records

    def record(self, entry):
        return self.records[entry["key"]]


def test_curves_come_from_every_training_stage_in_ledger_order_and_a_repeated_kind_is_numbered():
    history = [{"loss": 1.0, "step": 1}]
    stages = _Stages({"a": {"log_history": history}, "b": {}, "c": {"log_history": history},
                      "d": {"log_history": history}})
    recorder = _Recorder()
    tracking.log_training_curves(recorder, stages, [{"kind": "sft", "key": "a"}, {"kind": "samples", "key": "b"},
                                                    {"kind": "sft", "key": "c"}])
    tracking.log_training_curves(recorder, stages, [{"kind": "sft", "key": "d"}], name="control")
    assert [kind for kind, _ in recorder.logged] == ["sft", "sft_2", "control"]  # no curve for `samples`


@pytest.mark.parametrize("value", [True, "text", None])
def test_only_numbers_become_curve_points(value):
    logged = []

    class _Run:
        def define_metric(self, *args, **kwargs):
            pass

        def log(self, values):
            logged.append(values)

    tracker = tracking.WandbTracker.__new__(tracking.WandbTracker)
    tracker.run = _Run()
    tracker.log_training("dpo", [{"loss": 0.5, "flag": value, "step": 3}, {"note": value, "step": 4}])
    assert logged == [{"train/dpo/loss": 0.5, "train/dpo/step": 3}]
