"""Reading a sweep directory: every job's JobResult as a `Run` (the report's row it falls in, where its
generations are), the jobs that left no results, and those the multirun meant to launch but never started."""
from __future__ import annotations

import functools
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from framework.jsonl import read_jsonl
from framework.results import JobResult


class ReportError(Exception):
    """A report that cannot be made (no such directory, W&B unreachable); one line for the user."""


@dataclass(eq=False)
class Run:
    """One job as the report reads it: its results, where they came from, and the report's row for it."""

    result: JobResult
    job_dir: Path | None = None  # holds results.json and generations.jsonl; None for a run read from W&B
    source: str | None = None  # a W&B run's address
    logged_scores: dict[int, float] | None = None  # a W&B run's per-problem scores, from its logged table
    # the report's row: the algorithm, with the keys that vary among its jobs (`xpo(alpha=[0.1])`), or
    # `<method> control`; set by `label_runs`
    method_label: str = ""
    # the entry of evaluation.datasets this run reads (its result.dataset): the job's model scored on that dataset,
    # its generations in <job dir>/evaluations/<name>/; None: the job's training dataset
    evaluation: str | None = None

    def __post_init__(self) -> None:
        self.method_label = self.method_label or self.result.algorithm

    @property
    def name(self) -> str:
        """The job in messages: its directory's name, else the W&B run's (and the evaluation dataset's name)."""
        name = Path(self.job_dir or self.source or "?").name
        return f"{name} on {self.evaluation}" if self.evaluation else name

    @property
    def generations_file(self) -> Path | None:
        """The job's scored outputs (generations.jsonl), None when there are none to read."""
        where = self.job_dir / "evaluations" / self.evaluation if self.evaluation else self.job_dir
        file = where / "generations.jsonl" if self.job_dir is not None else None
        return file if file is not None and file.is_file() else None

    def generations(self) -> list[dict]:
        """The rows of generations.jsonl ([] without one)."""
        return read_jsonl(self.generations_file) if self.generations_file is not None else []

    @functools.cached_property
    def problem_scores(self) -> dict[int, float] | None:
        """Problem index -> share of the job's chosen outputs that were correct (1 output for greedy/beam/bon,
        every sample for `sample`); from generations.jsonl, or from a W&B table. None when unavailable."""
        if self.job_dir is None:
            return self.logged_scores
        return scores_from_rows(self.generations()) if self.generations_file is not None else None


def scores_from_rows(rows: list[dict]) -> dict[int, float]:
    """Problem index -> share of its chosen rows that are correct."""
    totals: dict[int, list[int]] = {}
    for row in rows:
        if row["chosen"]:
            totals.setdefault(int(row["problem"]), []).append(int(bool(row["correct"])))
    return {problem: sum(values) / len(values) for problem, values in sorted(totals.items())}


def collect(sweep_dir: Path) -> tuple[list[Run], list[str]]:
    """(the runs of every job under `sweep_dir`, names of job directories without a readable results.json).
    ReportError for a results.json that is JSON but no job's results."""
    runs, missing = [], []
    job_dirs = sorted({path.parent for path in sweep_dir.rglob(".hydra")}
                      | {path.parent for path in sweep_dir.rglob("results.json")})
    for job_dir in job_dirs:
        file = job_dir / "results.json"
        name = str(job_dir.relative_to(sweep_dir)) if job_dir != sweep_dir else job_dir.name
        try:
            record = json.loads(file.read_text())
        except (OSError, ValueError):  # absent, or cut short by a kill while it was written
            missing.append(name)
            continue
        try:
            runs += with_evaluations(Run(JobResult.from_dict(record), job_dir=job_dir))
        except ValueError as error:
            raise ReportError(f"{file}: {error}") from None
    return label_runs(runs), missing


def with_evaluations(run: Run) -> list[Run]:
    """The job's run, then one run per dataset of its `evaluations` (evaluation.datasets): the same job with that
    dataset's name, metrics and decoder settings, so that the report's tables, plots and comparisons, all per
    dataset, give each dataset its own section. The premises and the control belong to the training dataset."""
    evaluations = run.result.evaluations or {}
    return [run] + [Run(replace(run.result, dataset=name, metrics=summary.metrics,
                                decoder_config=summary.decoder_config, evaluation_reused=summary.evaluation_reused,
                                premises=None, control=None, evaluations=None),
                        job_dir=run.job_dir, source=run.source, evaluation=name)
                    for name, summary in evaluations.items()]


def control_label(method_label: str) -> str:
    """The report's row of a method's control (the job's control/ record, evaluation.control_decoders)."""
    return f"{method_label} control"


def label_runs(runs: list[Run]) -> list[Run]:
    """Name each run's row (`label_methods`, then `<row> control` for controls); sorted by row, decoder, seed."""
    label_methods(runs)
    for run in runs:
        if run.result.control_of:
            run.method_label = control_label(run.method_label)
    runs.sort(key=lambda r: (r.method_label, r.result.decoder_label, r.result.seed))
    return runs


def _flat(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tuple(node) if isinstance(node, list) else node}


def _text(value, digits: int) -> str:
    """A config value in a label: floats to `digits` significant digits, lists as [a, b]."""
    if isinstance(value, tuple):
        return "[" + ", ".join(_text(item, digits) for item in value) + "]"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def readable_values(values: list) -> list[str]:
    """The values as label text, floats with the fewest significant digits (3 at least) that keep different
    values apart: an Optuna-drawn 0.00031622776601683794 reads 0.000316, yet 0.1 and 0.1001 stay two rows."""
    distinct = len({repr(value) for value in values})
    for digits in range(3, 18):
        texts = [_text(value, digits) for value in values]
        if len(set(texts)) == distinct:
            return texts
    return [repr(value) for value in values]


def label_methods(runs: list[Run]) -> None:
    """Jobs of one algorithm that differ in its keys (an alpha sweep, say) are different methods: their
    row becomes `name(key=value, ...)` over the keys that vary, so the report never pools them. Jobs
    without a recorded algorithm config keep their algorithm's name."""
    by_name: dict[str, list[Run]] = {}
    for run in runs:
        if isinstance(run.result.algorithm_config, dict):
            by_name.setdefault(run.result.algorithm, []).append(run)
    for name, group in by_name.items():
        flat = [_flat(run.result.algorithm_config) for run in group]
        varying = sorted(key for key in set().union(*flat) if len({repr(f.get(key)) for f in flat}) > 1)
        texts = {key: readable_values([keys.get(key) for keys in flat]) for key in varying}
        for index, run in enumerate(group):
            if varying:
                run.method_label = f"{name}(" + ", ".join(f"{key}={texts[key][index]}" for key in varying) + ")"


def job_overrides(job_dir: Path) -> list[str] | None:
    """The Hydra overrides a job ran with (from .hydra/overrides.yaml), None when not recorded."""
    from omegaconf import OmegaConf

    file = Path(job_dir) / ".hydra" / "overrides.yaml"
    if not file.is_file():
        return None
    return [str(item) for item in OmegaConf.load(file)]


def expected_jobs(sweep_dir: Path) -> list[list[str]] | None:
    """Every job's overrides that the multirun in `sweep_dir` meant to launch, from its multirun.yaml.

    Uses Hydra's own BasicSweeper expansion (sweep file params, then command-line overrides), which the
    framework's sweeper keeps, so the list matches what Hydra launches; None for other sweepers or when
    multirun.yaml is absent.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    from framework.sweeper import is_grid_sweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    file = Path(sweep_dir) / "multirun.yaml"
    if not file.is_file():
        return None
    try:
        hydra_node = OmegaConf.load(file).get("hydra", {})
        sweeper = hydra_node.get("sweeper", {})
        if not is_grid_sweeper(str(sweeper.get("_target_", ""))):  # Optuna's trials are drawn as it goes
            return None
        task = [str(item) for item in hydra_node.get("overrides", {}).get("task", [])]
        jobs = []
        for grid in [sweeper.get("params") or {}, *(sweeper.get("grids") or [])]:  # framework.sweeper's grids
            params = [f"{key}={value}" for key, value in grid.items()]
            jobs.extend(BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(params + task), None)[0])
        return jobs
    except Exception as error:  # an unexpected multirun.yaml must not cost the report: list started jobs only
        print(f"warning: cannot read the planned jobs from {file} ({error})", file=sys.stderr)
        return None


def missing_job_lines(sweep_dir: Path, missing: list[str]) -> list[str]:
    """One line per job without results: started ones, then never-started ones (from multirun.yaml), each
    with the overrides that tell it apart from the sweep's other jobs."""
    started = {path.parent.parent: job_overrides(path.parent.parent)
               for path in sweep_dir.rglob(".hydra/overrides.yaml")}
    expected = expected_jobs(sweep_dir) or []
    everyone = [set(o) for o in [*expected, *started.values()] if o is not None]
    common = set.intersection(*everyone) if len(everyone) > 1 else set()

    def describe(overrides: list[str]) -> str:
        return " ".join(o for o in overrides if o not in common)

    lines = []
    for name in missing:
        overrides = started.get(sweep_dir / name)
        lines.append(f"`{name}` ({describe(overrides)}): started, left no results.json" if overrides
                     else f"`{name}`: started, left no results.json")
    seen = {frozenset(o) for o in started.values() if o is not None}
    lines += [f"({describe(o)}): never started" for o in expected if frozenset(o) not in seen]
    return lines
