"""The W&B run lifecycle in one place: one run per job, offline by default, grouped per sweep.

Every job's run has the same shape, whether it trained its model or reused it from the stage cache:
- config: the framework's resolved config (every key the job was composed with), secrets left out;
- training curves: each training stage the model rests on (and the method's control), replayed from the
  trainer's `log_history` in the stage's record (stage.json) under `train/<stage kind>/`, against
  `train/<stage kind>/step`, once the stage is done. The trainers do not report to W&B themselves
  (`report_to="none"`): transformers' WandbCallback would log only the stages trained in this job and
  put all of TrainingArguments (hub_token included) at the top of the run's config;
- evaluation metrics under `eval/`, the scored generations as a wandb.Table.
`logger=none` swaps in a tracker that records nothing, and so does every process but the main one
when a job runs as several processes (`accelerate launch`).
"""
from __future__ import annotations

import logging
import numbers
import os
import re
from pathlib import Path

from framework.config import LoggerConfig, WandbLoggerConfig

log = logging.getLogger(__name__)

# W&B records the installed packages with each run by scanning every distribution's metadata (~0.3 s).
# Jobs of one multirun share the interpreter, so the first run of a process records them and the
# others skip the scan.
_packages_recorded = False
# Config keys never sent to W&B (a user may set `algorithm.trainer.hub_token`, say)
SECRET_KEY = re.compile(r"(hub_token|access_token|auth_token|api_key|apikey|password|secret)$", re.IGNORECASE)


def public_config(node):
    """The config without its secrets (keys matching SECRET_KEY, at any depth)."""
    if isinstance(node, dict):
        return {key: public_config(value) for key, value in node.items() if not SECRET_KEY.search(str(key))}
    if isinstance(node, list):
        return [public_config(value) for value in node]
    return node


class NullTracker:
    report_to = "none"  # what the trainers report to: never W&B directly (module docstring)
    run_path: str | None = None

    def log(self, metrics: dict, prefix: str = "") -> None:
        pass

    def log_training(self, kind: str, history: list[dict]) -> None:
        pass

    def log_table(self, name: str, records: list[dict]) -> None:
        pass

    def summary(self, values: dict) -> None:
        pass

    def finish(self, failed: bool = False) -> None:
        pass


class WandbTracker(NullTracker):
    def __init__(self, config: WandbLoggerConfig, resolved_config: dict, output_dir: Path, run_name: str,
                 group: str | None, job_type: str):
        import wandb

        global _packages_recorded
        self.config = config
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(
            project=config.project, entity=config.entity, group=config.group or group, name=run_name,
            job_type=job_type, tags=list(config.tags), config=public_config(resolved_config), dir=str(output_dir),
            mode=config.mode, reinit="finish_previous",
            settings=wandb.Settings(x_save_requirements=not _packages_recorded),
        )
        _packages_recorded = True
        self.run_path = str(getattr(self.run, "dir", "") or "")
        if config.mode == "offline":
            log.info("W&B run written offline under %s; upload later with `wandb sync %s/wandb/offline-run-*`",
                     output_dir, output_dir)

    def log(self, metrics: dict, prefix: str = "") -> None:
        self.run.log({f"{prefix}{key}": value for key, value in metrics.items()})

    def log_training(self, kind: str, history: list[dict]) -> None:
        """A training stage's curves from its trainer's log_history: `train/<kind>/loss` and every other
        number it logged, against `train/<kind>/step` (the optimizer step)."""
        prefix = f"train/{kind}/"
        self.run.define_metric(f"{prefix}step")
        self.run.define_metric(f"{prefix}*", step_metric=f"{prefix}step")
        for entry in history:
            values = {f"{prefix}{key}": value for key, value in entry.items()
                      if key != "step" and isinstance(value, numbers.Real) and not isinstance(value, bool)}
            if values and "step" in entry:
                self.run.log({**values, f"{prefix}step": entry["step"]})

    def log_table(self, name: str, records: list[dict]) -> None:
        import wandb

        if not self.config.log_generations or not records:
            return
        rows = records[: self.config.max_table_rows]
        columns = list(rows[0])
        self.run.log({name: wandb.Table(columns=columns, data=[[row[c] for c in columns] for row in rows])})

    def summary(self, values: dict) -> None:
        for key, value in values.items():
            self.run.summary[key] = value

    def finish(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)


def start(config: LoggerConfig, resolved_config: dict, output_dir: Path, run_name: str, group: str | None,
          job_type: str) -> NullTracker:
    from framework import distributed

    if not distributed.is_main_process():  # one W&B run per job, not per process; the trainer's callback agrees
        return NullTracker()
    if isinstance(config, WandbLoggerConfig) and config.mode != "disabled":
        return WandbTracker(config, resolved_config, output_dir, run_name, group, job_type)
    return NullTracker()


def log_training_curves(tracker: NullTracker, stages, ledger: list[dict], name: str | None = None) -> None:
    """Log the curves of every training stage in the ledger (StageStore.compute_ledger entries: the stages a
    model rests on, computed in this job or reused) from their records, named by stage kind (or all by `name`,
    e.g. `control`); a name met twice gets a number (`sft_2`)."""
    seen: dict[str, int] = {}
    for entry in ledger:
        history = stages.record(entry).get("log_history")
        if not history:
            continue
        label = name or entry["kind"]
        seen[label] = seen.get(label, 0) + 1
        tracker.log_training(label if seen[label] == 1 else f"{label}_{seen[label]}", history)
