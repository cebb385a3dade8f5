"""One job's result, as the launcher writes it to <job dir>/results.json and the report reads it back.

A leaf module (the standard library only): the launcher builds a `JobResult` and writes it, the report
(framework/report/) reads every job's with `JobResult.read`, and neither needs the other's code for it.
The file is `json.dumps(to_dict(), indent=2, sort_keys=True, default=str)`; `read` also takes the files
of earlier launchers, which lacked some keys (they read as None).
"""
from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar


@dataclass
class ControlSummary:
    """The method's control (evaluation.control_decoders) as its job's results.json summarises it; the
    control's own record is <job dir>/control/results.json (a JobResult with `control_of` set)."""

    policy: dict[str, Any]  # the control model's stage fingerprint
    metrics: dict[str, Any]  # its evaluation under the job's decoder (framework.evaluation.score)
    dir: str  # the directory holding its results.json and generations.jsonl

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "metrics": self.metrics, "dir": self.dir}


@dataclass
class EvaluationSummary:
    """The job's model scored on one more dataset (an entry of evaluation.datasets), as its job's results.json
    holds it under `evaluations.<name>`; its scored outputs are <job dir>/evaluations/<name>/generations.jsonl."""

    dataset: str  # the dataset option's registry name (the entry's own name heads its table)
    metrics: dict[str, Any]  # framework.evaluation.score's values on that dataset's test split
    decoder_config: dict[str, Any]  # the decoder as it ran there (its max_new_tokens follow the dataset unless set)
    evaluation_reused: bool  # whether the evaluation stage came from the cache

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "metrics": self.metrics, "decoder_config": self.decoder_config,
                "evaluation_reused": self.evaluation_reused}


@dataclass
class JobResult:
    """What one job measured and what it ran with. `metrics` holds framework.evaluation.score's values
    (accuracy, its interval, pass@k, ...; their keys depend on the decoder), `compute` the launcher's
    sum over the stages the model rests on (`compute.stages` lists them)."""

    algorithm: str  # the method's registry name (the report's row label adds the keys that vary)
    decoder: str  # the decoder's registry name
    decoder_label: str  # DecoderConfig.label(): `bon(selector=logprob, samples_per_prompt=16, temperature=1.0)`
    dataset: str
    model: str
    seed: int
    metrics: dict[str, Any]
    algorithm_config: dict[str, Any] | None = None  # the resolved algorithm node
    decoder_config: dict[str, Any] | None = None  # the validated decoder node's fields
    train_seconds: float | None = None  # this job's training time (cached stages take ~0)
    wall_seconds: float | None = None  # the whole job, composition to results
    compute: dict[str, Any] | None = None
    evaluation_reused: bool | None = None  # whether the evaluation stage came from the cache
    policy: dict[str, Any] | None = None  # the evaluated model's stage fingerprint
    overrides: list[str] | None = None  # the job's Hydra overrides
    versions: dict[str, str] | None = None  # framework and library versions
    hardware: dict[str, Any] | None = None
    wandb_run: str | None = None  # the W&B run's path, None without one
    premises: dict[str, float] | None = None  # framework/premises.py's measures, when the method recorded any
    control: ControlSummary | None = None  # when the job also trained and evaluated the method's control
    control_of: str | None = None  # set on a control's own record: the method it controls
    # what each training stage the model rests on got (framework/algorithms/training.py `training_budget`), in the
    # order they ran, each with its stage `kind`: the report's budget columns and undertrained flag
    training: list[dict[str, Any]] | None = None
    # the model on each entry of evaluation.datasets, by its name; `dataset` and `metrics` above stay the
    # training dataset's
    evaluations: dict[str, EvaluationSummary] | None = None

    # evaluation.during_training: the checkpoint of the model's last training stage that scored best on the
    # validation split, evaluated like the last one: {"step", "validation_accuracy", "last_step",
    # "last_validation_accuracy", "points", "checkpoint", "policy", "metrics" (its test metrics)}
    best_on_validation: dict[str, Any] | None = None
    # evaluation.objective=validation: {"metrics": the job's decoder on the validation split}, and the objective a
    # sweeper maximises (`objective` names the split; absent: test, metrics.accuracy)
    validation: dict[str, Any] | None = None
    objective: str | None = None


    # Written only when set, as the launcher always has: every other key is written, null when None.
    OMITTED_WHEN_NONE: ClassVar[tuple[str, ...]] = ("premises", "control", "control_of", "training", "evaluations",
                                                    "best_on_validation", "validation", "objective")

    def to_dict(self) -> dict[str, Any]:
        record = {item.name: getattr(self, item.name) for item in fields(self)}
        if self.control is not None:
            record["control"] = self.control.to_dict()
        if self.evaluations is not None:
            record["evaluations"] = {name: summary.to_dict() for name, summary in self.evaluations.items()}
        return {key: value for key, value in record.items()
                if not (value is None and key in self.OMITTED_WHEN_NONE)}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> JobResult:
        """The record of a parsed results.json; ValueError naming the keys when it is not one."""
        if not isinstance(record, dict):
            raise ValueError(f"a results record is a JSON object, not {type(record).__name__}")
        known = {item.name for item in fields(cls)}
        required = [item.name for item in fields(cls) if item.default is MISSING]
        if missing := [key for key in required if key not in record]:
            raise ValueError(f"not a job's results: no {', '.join(missing)}")
        if unknown := sorted(set(record) - known):
            raise ValueError(f"unknown keys {', '.join(unknown)} (a results.json of another launcher version?)")
        values = dict(record)
        if values.get("control") is not None:
            try:
                values["control"] = ControlSummary(**values["control"])
            except TypeError as error:
                raise ValueError(f"control: {error}") from None
        if values.get("evaluations") is not None:
            try:
                values["evaluations"] = {name: EvaluationSummary(**summary)
                                         for name, summary in values["evaluations"].items()}
            except (TypeError, AttributeError) as error:
                raise ValueError(f"evaluations: {error}") from None
        return cls(**values)

    def write(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str))

    def objective_value(self) -> float:
        """What the job returns to an optimising sweeper: accuracy on the split `objective` names (default test)."""
        if self.objective == "validation":
            return self.validation["metrics"]["accuracy"]
        return self.metrics["accuracy"]

    @classmethod
    def read(cls, path: Path) -> JobResult:
        """OSError when unreadable, ValueError when not JSON (a job killed while writing) or not a record."""
        return cls.from_dict(json.loads(Path(path).read_text()))
