"""The Hydra callback conf/config.yaml names (hydra.callbacks.comparison_table): the report of every multirun."""
from __future__ import annotations

from pathlib import Path

from hydra.experimental.callback import Callback

from framework.report.render import write_job_table, write_report
from framework.report.sweep import collect, missing_job_lines


class ComparisonTableCallback(Callback):
    """Hydra callback: when a multirun ends, write the per-job table and the report, print the report.

    Hydra's basic sweeper raises once a batch holds a failed job, before `on_multirun_end`; the report is
    then written when the process exits instead, so the finished jobs are reported and the failed ones
    listed as missing. After Ctrl-C the launcher writes it at once and names it in one line
    (`write_pending_reports`)."""

    def __init__(self) -> None:
        self._sweep_dir: Path | None = None

    def on_multirun_start(self, config, **kwargs) -> None:
        import atexit

        self._sweep_dir = Path(config.hydra.sweep.dir)
        atexit.register(self._report)
        _pending.append(self)

    def on_multirun_end(self, config, **kwargs) -> None:
        self._sweep_dir = self._sweep_dir or Path(config.hydra.sweep.dir)
        self._report()

    def _report(self, brief: bool = False) -> None:
        from framework import distributed

        sweep_dir, self._sweep_dir = self._sweep_dir, None  # once per sweep
        if sweep_dir is None or not sweep_dir.is_dir() or not distributed.is_main_process():
            return  # one report per sweep under torchrun
        runs, missing = collect(sweep_dir)
        per_job = write_job_table(runs, missing, sweep_dir)
        text = write_report(runs, sweep_dir, sweep_dir.name, missing_job_lines(sweep_dir, missing))
        if brief:
            print(f"\nthe report of the {len(runs)} finished jobs: {sweep_dir}/report.md", flush=True)
            return
        print(f"\n{per_job}\n\n{text}\n\n(saved to {sweep_dir}/report.md, report.csv, comparison.md and the "
              "plots)", flush=True)


_pending: list[ComparisonTableCallback] = []  # every sweep of this process whose report may still be due


def write_pending_reports(brief: bool = False) -> None:
    """Write now the report of every sweep that has not written one, printing only where it is if `brief`."""
    for callback in _pending:
        callback._report(brief=brief)
