"""framework/results.py: a job's results.json as a JobResult, the same file on disk either way."""
import json

import pytest

from framework.results import ControlSummary, JobResult

# A results.json as the launcher wrote it before JobResult existed (a dict through json.dumps), with a control
# and premises; `wandb_run` null as without W&B.
LAUNCHER_RECORD = {
    "algorithm": "dpo", "algorithm_config": {"name": "dpo", "beta": 0.1, "sft": {"learning_rate": 5e-4}},
    "decoder": "beam", "decoder_label": "beam(num_beams=4)",
    "decoder_config": {"name": "beam", "max_new_tokens": 96, "num_beams": 4, "length_penalty": 1.0},
    "dataset": "arith", "model": "tiny", "seed": 1,
    "metrics": {"accuracy": 0.25, "accuracy_ci_low": 0.1, "accuracy_ci_high": 0.5, "num_problems": 8, "pass@1": 0.25},
    "train_seconds": 3.5, "wall_seconds": 9.25,
    "compute": {"train_tokens": 1200, "train_seconds": 3.0, "stage_seconds": 4.0, "sampling_generated_tokens": 80,
                "exploration_rollouts": 0, "stages": [{"kind": "sft", "key": "abc", "train_tokens": 600}]},
    "evaluation_reused": False, "policy": {"stage": "dpo", "key": "def"}, "overrides": ["algorithm=dpo", "seed=1"],
    "versions": {"framework": "0.1.0", "torch": "2.4"}, "hardware": {"device": "cpu", "processes": 1},
    "wandb_run": None, "premises": {"targets_right_share": 0.75},
    "control": {"policy": {"stage": "control", "key": "ghi"}, "metrics": {"accuracy": 0.125}, "dir": "/x/control"},
}


def _launcher_text(record: dict) -> str:
    return json.dumps(record, indent=2, sort_keys=True, default=str)


def test_a_launcher_written_results_file_reads_and_writes_back_byte_for_byte(tmp_path):
    (tmp_path / "results.json").write_text(_launcher_text(LAUNCHER_RECORD))
    result = JobResult.read(tmp_path / "results.json")
    assert isinstance(result.control, ControlSummary) and result.control.metrics == {"accuracy": 0.125}
    assert result.seed == 1 and result.metrics["pass@1"] == 0.25 and result.wandb_run is None
    result.write(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text() == (tmp_path / "results.json").read_text()


def test_keys_the_launcher_writes_only_when_set_stay_out_of_the_file():
    record = {key: value for key, value in LAUNCHER_RECORD.items() if key not in ("premises", "control")}
    written = JobResult.from_dict(record).to_dict()
    assert written == record and "wandb_run" in written  # a null wandb_run is written, as before
    control = JobResult.from_dict({**record, "control_of": "dpo"})
    assert control.to_dict()["control_of"] == "dpo"


def test_an_older_results_file_without_the_later_keys_reads_with_none():
    older = {key: LAUNCHER_RECORD[key] for key in ("algorithm", "decoder", "decoder_label", "dataset", "model",
                                                   "seed", "metrics", "train_seconds")}
    result = JobResult.from_dict(older)
    assert (result.compute, result.algorithm_config, result.policy, result.control) == (None, None, None, None)


def test_a_record_that_is_no_jobs_results_is_refused_naming_the_keys(tmp_path):
    with pytest.raises(ValueError, match="no seed, metrics"):
        JobResult.from_dict({key: LAUNCHER_RECORD[key] for key in ("algorithm", "decoder", "decoder_label",
                                                                   "dataset", "model")})
    with pytest.raises(ValueError, match="unknown keys accuracy"):
        JobResult.from_dict({**LAUNCHER_RECORD, "accuracy": 0.5})
    (tmp_path / "cut.json").write_text('{"algorithm": "dp')  # a job killed while writing
    with pytest.raises(ValueError):
        JobResult.read(tmp_path / "cut.json")


def test_evaluation_datasets_read_back_as_summaries_and_write_back_byte_for_byte(tmp_path):
    scored = {"dataset": "gsm8k", "metrics": {"accuracy": 0.5, "num_problems": 4}, "evaluation_reused": True,
              "decoder_config": {"name": "beam", "max_new_tokens": 512, "num_beams": 4, "length_penalty": 1.0}}
    (tmp_path / "results.json").write_text(_launcher_text({**LAUNCHER_RECORD, "evaluations": {"gsm8k": scored}}))
    result = JobResult.read(tmp_path / "results.json")
    assert result.evaluations["gsm8k"].metrics["accuracy"] == 0.5 and result.evaluations["gsm8k"].evaluation_reused
    result.write(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text() == (tmp_path / "results.json").read_text()
    with pytest.raises(ValueError, match="^evaluations: "):
        JobResult.from_dict({**LAUNCHER_RECORD, "evaluations": {"gsm8k": {"accuracy": 0.5}}})
