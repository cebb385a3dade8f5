"""The W&B run lifecycle in one place: one run per job, offline by default, grouped per sweep.

Trainer metrics reach the same run through transformers' WandbCallback (`report_to="wandb"` reuses
the active run); evaluation metrics go under `eval/`; the scored generations become a wandb.Table.
`logger=none` swaps in a tracker that records nothing, and so does every process but the main one
when a job runs as several processes (`accelerate launch`).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from framework.config import LoggerConfig, WandbLoggerConfig

log = logging.getLogger(__name__)

# W&B records the installed packages with each run by scanning every distribution's metadata (~0.3 s).
# Jobs of one multirun share the interpreter, so the first run of a process records them and the
# others skip the scan.
_packages_recorded = False


class NullTracker:
    report_to = "none"
    run_path: str | None = None

    def log(self, metrics: dict, prefix: str = "") -> None:
        pass

    def log_table(self, name: str, records: list[dict]) -> None:
        pass

    def summary(self, values: dict) -> None:
        pass

    def finish(self, failed: bool = False) -> None:
        pass


class WandbTracker(NullTracker):
    report_to = "wandb"

    def __init__(self, config: WandbLoggerConfig, resolved_config: dict, output_dir: Path, run_name: str,
                 group: str | None, job_type: str):
        import wandb

        global _packages_recorded
        self.config = config
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(
            project=config.project, entity=config.entity, group=config.group or group, name=run_name,
            job_type=job_type, tags=list(config.tags), config=resolved_config, dir=str(output_dir),
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
