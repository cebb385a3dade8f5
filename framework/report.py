"""The comparison report of a sweep: `python -m framework.report <sweep dir>` (also run after every multirun),
or `python -m framework.report --wandb-group NAME` for runs logged online to W&B.

Reads each job's results.json (and generations.jsonl) under the directory and writes, beside them:

- report.md / report.csv: per method x decoder, accuracy (mean over seeds and problems) with a 95% interval
  over both, lift over the same method's greedy accuracy, pass@N, compute spent, and the accuracy
  difference to SFT with the same decoder (paired bootstrap interval, p-value, Holm-corrected);
- accuracy_by_method.png, accuracy_vs_beam_width.png, accuracy_vs_n.png, accuracy_vs_compute.png
  (framework/plots.py; skipped with a printed reason when the sweep lacks the data or matplotlib);
- comparison.md / comparison.csv: one row per job.

Jobs that left no results (failed, killed, or never started) are listed at the top of the report, and
every job's accuracy and pass@k are recomputed from its generations.jsonl and checked against
results.json. The statistics are explained in `seed_problem_interval` and `paired_bootstrap`.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hydra.experimental.callback import Callback

from framework import fidelity
from framework.evaluation import Z_95, mean_interval, pass_at_k, wilson_interval

COLUMNS = ("algorithm", "decoder", "seed", "accuracy", "95% CI", "flexible", "pass@k", "lift vs greedy %",
           "mean tokens", "train s", "decode s")
BASELINE = "sft"
SIGNIFICANCE_LEVEL = 0.05  # family-wise, after Holm's correction over every comparison in one report
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
# Rows follow the order a reader expects (baselines first); unknown plugins come after, alphabetically.
METHOD_ORDER = ("none", "sft", "soc", "rft", "bon_sft", "dpo", "outcome_dpo", "xpo", "self_explore")
DECODER_ORDER = ("greedy", "sample", "beam", "bon")


class ReportError(Exception):
    """A report that cannot be made (no such directory, W&B unreachable); one line for the user."""


# ---------------------------------------------------------------------------- reading a sweep directory
def collect(sweep_dir: Path) -> tuple[list[dict], list[str]]:
    """(results records, names of job directories without a readable results.json)."""
    results, missing = [], []
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
        record["job_dir"] = str(job_dir)
        results.append(record)
    label_methods(results)
    for record in results:
        if record.get("control_of"):
            record["algorithm"] = control_label(record["algorithm"])
    results.sort(key=lambda r: (r["algorithm"], r["decoder_label"], r["seed"]))
    return results, missing


def _flat(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: json.dumps(node, sort_keys=True) if isinstance(node, list) else node}


def label_methods(results: list[dict]) -> None:
    """Jobs of one algorithm that differ in its keys (an alpha sweep, say) are different methods: their
    `algorithm` becomes `name(key=value, ...)` over the keys that vary, so the report never pools them.
    The plain name stays in `method`. Jobs without a recorded algorithm config keep their name."""
    by_name: dict[str, list[dict]] = {}
    for record in results:
        record.setdefault("method", record["algorithm"])
        if isinstance(record.get("algorithm_config"), dict):
            by_name.setdefault(record["method"], []).append(record)
    for name, records in by_name.items():
        flat = [_flat(record["algorithm_config"]) for record in records]
        varying = sorted(key for key in set().union(*flat) if len({str(f.get(key)) for f in flat}) > 1)
        for record, keys in zip(records, flat):
            if varying:
                record["algorithm"] = f"{name}(" + ", ".join(f"{key}={keys.get(key)}" for key in varying) + ")"


def job_overrides(job_dir: Path) -> list[str] | None:
    """The Hydra overrides a job ran with (from .hydra/overrides.yaml), None when not recorded."""
    from omegaconf import OmegaConf

    file = Path(job_dir) / ".hydra" / "overrides.yaml"
    if not file.is_file():
        return None
    return [str(item) for item in OmegaConf.load(file)]


def expected_jobs(sweep_dir: Path) -> list[list[str]] | None:
    """Every job's overrides that the multirun in `sweep_dir` meant to launch, from its multirun.yaml.

    Uses Hydra's own BasicSweeper expansion (sweep file params, then command-line overrides), so the
    list matches what Hydra launches; None for other sweepers or when multirun.yaml is absent.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    file = Path(sweep_dir) / "multirun.yaml"
    if not file.is_file():
        return None
    try:
        hydra_node = OmegaConf.load(file).get("hydra", {})
        sweeper = hydra_node.get("sweeper", {})
        if not str(sweeper.get("_target_", "")).endswith(".BasicSweeper"):
            return None
        params = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
        task = [str(item) for item in hydra_node.get("overrides", {}).get("task", [])]
        overrides = OverridesParser.create().parse_overrides(params + task)
        return BasicSweeper.split_arguments(overrides, None)[0]
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


def problem_scores(record: dict) -> dict[int, float] | None:
    """Problem index -> share of the job's chosen outputs that were correct (1 output for greedy/beam/bon,
    every sample for `sample`); from generations.jsonl, or from a W&B table. None when unavailable."""
    if "problem_scores" not in record:
        generations = Path(record["job_dir"]) / "generations.jsonl" if record.get("job_dir") else None
        record["problem_scores"] = (_scores_from_rows(_read_jsonl(generations))
                                    if generations is not None and generations.is_file() else None)
    return record["problem_scores"]


def _read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _scores_from_rows(rows: list[dict]) -> dict[int, float]:
    totals: dict[int, list[int]] = {}
    for row in rows:
        if row["chosen"]:
            totals.setdefault(int(row["problem"]), []).append(int(bool(row["correct"])))
    return {problem: sum(values) / len(values) for problem, values in sorted(totals.items())}


# ---------------------------------------------------------------------------- recompute check
def recompute_from_generations(rows: list[dict]) -> dict:
    """accuracy, accuracy_flexible, num_problems and pass@k (k = 1, 2, 4, ...) recomputed from the scored
    generations alone, the way `evaluation.score` defines them."""
    from framework.evaluation import pass_k_values

    scores = _scores_from_rows(rows)
    flexible: dict[int, list[int]] = {}
    candidates: dict[int, list[bool]] = {}
    for row in rows:
        candidates.setdefault(int(row["problem"]), []).append(bool(row["correct"]))
        if row["chosen"] and "correct_flexible" in row:
            flexible.setdefault(int(row["problem"]), []).append(int(bool(row["correct_flexible"])))
    values = {"accuracy": sum(scores.values()) / max(len(scores), 1), "num_problems": len(scores)}
    if flexible:
        values["accuracy_flexible"] = sum(sum(v) / len(v) for v in flexible.values()) / len(flexible)
    sizes = {len(verdicts) for verdicts in candidates.values()}
    if len(sizes) == 1 and (num_samples := sizes.pop()) > 1:
        for k in pass_k_values(num_samples):
            values[f"pass@{k}"] = (sum(pass_at_k(num_samples, sum(v), k) for v in candidates.values())
                                   / len(candidates))
    return values


def check_against_generations(record: dict, tolerance: float = 1e-9) -> list[str]:
    """Disagreements between results.json and a recomputation from generations.jsonl (empty: they agree).
    A job without generations.jsonl reports that instead."""
    generations = Path(record.get("job_dir") or "") / "generations.jsonl"
    if not record.get("job_dir") or not generations.is_file():
        return ["no generations.jsonl to recompute from"]
    recomputed = recompute_from_generations(_read_jsonl(generations))
    problems = []
    for key, value in recomputed.items():
        stored = record["metrics"].get(key)
        if stored is None or abs(float(stored) - value) > tolerance:
            problems.append(f"{key}: results.json has {stored}, generations.jsonl gives {value:.6g}")
    return problems


# ---------------------------------------------------------------------------- statistics
def seed_problem_interval(matrix, z: float = Z_95) -> tuple[float, float, float]:
    """Mean accuracy of a seeds x problems matrix of per-problem scores, with a 95% interval that counts
    both sources of variation: which problems were drawn and which seeds were trained.

    The matrix is read as the crossed random-effects model y[s, i] = mu + u_s + v_i + e_si (seed effect,
    problem difficulty, interaction). The grand mean's variance is s2_u / S + s2_v / P + s2_e / (S P);
    the three components come from the two-way ANOVA mean squares (method of moments, each truncated
    at 0): s2_e = MS_error, s2_u = (MS_seeds - MS_error) / P, s2_v = (MS_problems - MS_error) / S.
    Without truncation this is (MS_seeds + MS_problems - MS_error) / (S P). The interval is the normal
    one, clipped to [0, 1]. Why not just an interval over problems of seed-averaged scores: it ignores
    that a whole seed can be better or worse (u_s is shared by every problem); with 3 seeds the seed
    term rests on 2 degrees of freedom, so read the interval as approximate.

    With one seed (or one problem) it is the per-job interval of results.json (`evaluation.mean_interval`:
    Wilson for 0/1 scores); when every entry is the same (all right or all wrong) the variance estimate
    is 0 and the Wilson interval over problems is used rather than a zero-width one.
    Hand-written: the closed form is a few lines of numpy, where a library would mean fitting a mixed
    model (statsmodels, not a dependency) for one variance.
    """
    import numpy as np

    matrix = np.asarray(matrix, dtype=float)
    seeds, problems = matrix.shape
    if seeds == 1 or problems == 1:
        return mean_interval([float(v) for v in matrix.mean(axis=0)], z)
    mean = float(matrix.mean())
    by_seed, by_problem = matrix.mean(axis=1), matrix.mean(axis=0)
    ms_seeds = problems * float(((by_seed - mean) ** 2).sum()) / (seeds - 1)
    ms_problems = seeds * float(((by_problem - mean) ** 2).sum()) / (problems - 1)
    residual = matrix - by_seed[:, None] - by_problem[None, :] + mean
    ms_error = float((residual ** 2).sum()) / ((seeds - 1) * (problems - 1))
    variance = (max(0.0, (ms_seeds - ms_error) / problems) / seeds
                + max(0.0, (ms_problems - ms_error) / seeds) / problems + ms_error / (seeds * problems))
    if variance <= 1e-15 and mean in (0.0, 1.0):
        low, high = wilson_interval(mean * problems, problems, z)
        return (mean, low, high)
    half = z * math.sqrt(max(variance, 0.0))
    return (mean, max(0.0, mean - half), min(1.0, mean + half))


@dataclass
class Comparison:
    """A method against the baseline with the same decoder: accuracy difference in [-1, 1]."""
    difference: float
    low: float
    high: float
    p_value: float
    seeds: list[int]
    num_problems: int
    p_holm: float | None = None

    @property
    def significant(self) -> bool:
        return self.p_holm is not None and self.p_holm < SIGNIFICANCE_LEVEL


def paired_bootstrap(method: list[float], baseline: list[float], resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float, float]:
    """(mean difference, 95% percentile interval low, high, two-sided p) of method - baseline, paired by
    problem: problems are resampled with replacement, the same indices for both methods.

    The p-value tests "no difference" by the shifted bootstrap (Efron & Tibshirani 1993, 16.4): the
    resampled differences, centred at the observed one, stand in for the null distribution, and
    p = (1 + #{|d* - d| >= |d|}) / (resamples + 1), so p = 1 for identical methods and p = 1 / (B + 1)
    at the least when every resample is further from 0 than the null allows. Deterministic for a seed.
    Seeds are averaged per problem before this: the test is over problems, given the trained seeds.
    Hand-written on numpy: scipy (whose `stats.bootstrap` gives intervals but no p-value) is not a
    dependency, and the paired resampling is four lines.
    """
    import numpy as np

    difference = np.asarray(method, dtype=float) - np.asarray(baseline, dtype=float)
    observed = float(difference.mean())
    rng = np.random.default_rng(seed)
    chunks, remaining = [], resamples
    while remaining > 0:  # chunked: B x P indices at once would need GBs for GSM8K-sized test sets
        size = min(remaining, max(1, 2_000_000 // max(len(difference), 1)))
        chunks.append(difference[rng.integers(0, len(difference), size=(size, len(difference)))].mean(axis=1))
        remaining -= size
    means = np.concatenate(chunks)
    extreme = int((np.abs(means - observed) >= abs(observed) - 1e-12).sum())
    low, high = np.percentile(means, [2.5, 97.5])
    return observed, float(low), float(high), (1 + extreme) / (resamples + 1)


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given): reject where adjusted < alpha.
    (statsmodels' multipletests does this too, but is not a dependency.)"""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


# ---------------------------------------------------------------------------- aggregation
@dataclass
class Cell:
    """All seeds of one (dataset, model, method, decoder) combination."""
    dataset: str
    model: str
    algorithm: str
    decoder: str
    decoder_label: str
    decoder_config: dict
    runs: list[dict]
    accuracy: float = 0.0
    ci_low: float | None = None
    ci_high: float | None = None
    interval: str = ""  # how the interval was computed
    num_problems: int = 0
    lift: float | None = None  # % over greedy, matched seeds
    pass_n: tuple[int, float] | None = None
    compute: dict = field(default_factory=dict)
    comparison: Comparison | None = None
    control_comparison: Comparison | None = None  # against the method's control (same decoder), when run

    @property
    def key(self) -> tuple:
        return (self.dataset, self.model, self.algorithm, self.decoder_label)

    @property
    def seeds(self) -> list[int]:
        return [run["seed"] for run in self.runs]

    def scores_by_seed(self, seeds=None) -> dict[int, dict[int, float]] | None:
        """Seed -> per-problem scores, for the given seeds (default all); None if any lacks them."""
        wanted = self.seeds if seeds is None else seeds
        chosen = {run["seed"]: problem_scores(run) for run in self.runs if run["seed"] in wanted}
        return None if any(scores is None for scores in chosen.values()) else chosen


def _method_rank(label: str) -> tuple:
    name = label.split("(", 1)[0].removesuffix(" control")  # `xpo(alpha=[0.01])` and `xpo control` rank as xpo
    return (METHOD_ORDER.index(name), label) if name in METHOD_ORDER else (len(METHOD_ORDER), label)


def _decoder_rank(cell: Cell) -> tuple:
    name, config = cell.decoder, cell.decoder_config
    return (DECODER_ORDER.index(name) if name in DECODER_ORDER else len(DECODER_ORDER), name,
            config.get("num_beams", 0), str(config.get("selector", "")), config.get("samples_per_prompt", 0),
            cell.decoder_label)


def _mean(values) -> float | None:
    values = list(values)
    return None if not values or any(v is None for v in values) else sum(values) / len(values)


def compute_spent(record: dict) -> dict:
    """Compute of one job: training (summed over every stage its model depends on, cached or not, when
    results.json has a `compute` record; else this job's own training time) and evaluation."""
    compute, metrics = record.get("compute") or {}, record["metrics"]
    return {
        "train_tokens": compute.get("train_tokens"),
        "sampling_generated_tokens": compute.get("sampling_generated_tokens"),
        "train_seconds": compute.get("train_seconds", record.get("train_seconds")),
        "eval_generated_tokens": metrics.get("generated_tokens"),
        "decode_seconds": metrics.get("decode_seconds"),
        "wall_seconds": record.get("wall_seconds"),
    }


def _aggregate_accuracy(cell: Cell) -> None:
    scores = cell.scores_by_seed()
    problems = sorted(set.intersection(*(set(s) for s in scores.values()))) if scores else []
    if scores and problems:
        matrix = [[scores[seed][i] for i in problems] for seed in cell.seeds]
        cell.accuracy, cell.ci_low, cell.ci_high = seed_problem_interval(matrix)
        cell.num_problems = len(problems)
        cell.interval = "seeds x problems" if len(cell.runs) > 1 else "problems"
        return
    # No per-problem scores (W&B table truncated, generations deleted): a conservative interval from
    # each seed's own interval (problems) plus the spread over seeds; see the report's notes.
    accuracies = [run["metrics"]["accuracy"] for run in cell.runs]
    cell.accuracy = sum(accuracies) / len(accuracies)
    cell.num_problems = int(cell.runs[0]["metrics"].get("num_problems", 0))
    halves = [(run["metrics"].get("accuracy_ci_high", 0) - run["metrics"].get("accuracy_ci_low", 0)) / 2
              for run in cell.runs]
    variance = sum((h / Z_95) ** 2 for h in halves) / len(halves)
    if len(accuracies) > 1:
        variance += sum((a - cell.accuracy) ** 2 for a in accuracies) / (len(accuracies) - 1) / len(accuracies)
    half = Z_95 * math.sqrt(variance)
    cell.ci_low, cell.ci_high = max(0.0, cell.accuracy - half), min(1.0, cell.accuracy + half)
    cell.interval = "per-seed summaries (no per-problem scores)"


def aggregate(results: list[dict], baseline: str = BASELINE, resamples: int = BOOTSTRAP_RESAMPLES,
              compare: bool = True) -> list[Cell]:
    """Group the jobs into cells, compute each cell's accuracy and interval, lift over greedy, pass@N and
    compute, and (`compare`) compare each method with `baseline` under the same decoder (Holm over all
    comparisons)."""
    groups: dict[tuple, list[dict]] = {}
    for record in results:
        key = (record["dataset"], record["model"], record["algorithm"], record["decoder_label"])
        groups.setdefault(key, []).append(record)
    cells = []
    for (dataset, model, algorithm, label), runs in groups.items():
        runs = sorted(runs, key=lambda r: r["seed"])
        cell = Cell(dataset, model, algorithm, runs[0]["decoder"], label, runs[0].get("decoder_config") or {}, runs)
        _aggregate_accuracy(cell)
        sizes = set.intersection(*({int(k[5:]) for k in run["metrics"] if k.startswith("pass@")} for run in runs))
        if sizes:
            largest = max(sizes)
            cell.pass_n = (largest, _mean(run["metrics"][f"pass@{largest}"] for run in runs))
        spent = [compute_spent(run) for run in runs]
        cell.compute = {key: _mean(s[key] for s in spent) for key in spent[0]}
        cells.append(cell)
    cells.sort(key=lambda c: (c.dataset, c.model, _method_rank(c.algorithm), _decoder_rank(c)))
    by_key = {cell.key: cell for cell in cells}
    greedy_of = {}  # (dataset, model, method) -> its greedy cell; beam search of width 1 is greedy too
    for cell in cells:
        if cell.decoder == "greedy" or (cell.decoder == "beam" and cell.decoder_config.get("num_beams") == 1):
            greedy_of.setdefault((cell.dataset, cell.model, cell.algorithm), cell)
    for cell in cells:
        cell.lift = _lift_over_greedy(cell, greedy_of.get((cell.dataset, cell.model, cell.algorithm)))
    if compare:
        _compare_with_baseline(cells, by_key, baseline, resamples)
    return cells


def _lift_over_greedy(cell: Cell, greedy: Cell | None) -> float | None:
    """% lift of the cell's accuracy over the same method's greedy accuracy (greedy, else beam width 1) on
    the seeds and problems both have; without either, over the greedy reference a best-of-N job decodes itself."""
    if greedy is cell:
        return None
    if greedy is not None:
        seeds = sorted(set(cell.seeds) & set(greedy.seeds))
        ours, theirs = cell.scores_by_seed(seeds), greedy.scores_by_seed(seeds)
        if seeds and ours and theirs:  # on the problems both scored (decoder.max_problems may differ)
            problems = sorted(set.intersection(*(set(s) for s in [*ours.values(), *theirs.values()])))
            accuracy = _mean(ours[s][i] for s in seeds for i in problems)
            reference = _mean(theirs[s][i] for s in seeds for i in problems)
        else:
            accuracy = _mean(run["metrics"]["accuracy"] for run in cell.runs if run["seed"] in seeds)
            reference = _mean(run["metrics"]["accuracy"] for run in greedy.runs if run["seed"] in seeds)
    else:
        accuracy = cell.accuracy
        reference = _mean(run["metrics"].get("greedy_accuracy") for run in cell.runs)
    if accuracy is None or not reference:
        return None
    return 100.0 * (accuracy - reference) / reference


def control_label(method_label: str) -> str:
    """The report's row of a method's control (the job's control/ record, evaluation.control_decoders)."""
    return f"{method_label} control"


def paired_scores_comparison(ours: dict[int, dict[int, float]] | None, theirs: dict[int, dict[int, float]] | None,
                             resamples: int = BOOTSTRAP_RESAMPLES) -> Comparison | None:
    """Two seed -> problem -> score maps on the seeds and problems both have, seeds averaged per problem."""
    if not ours or not theirs:
        return None
    seeds = sorted(set(ours) & set(theirs))
    if not seeds:
        return None
    problems = sorted(set.intersection(*(set(ours[s]) & set(theirs[s]) for s in seeds)))
    if not problems:
        return None
    method = [sum(ours[s][i] for s in seeds) / len(seeds) for i in problems]
    base = [sum(theirs[s][i] for s in seeds) / len(seeds) for i in problems]
    difference, low, high, p_value = paired_bootstrap(method, base, resamples)
    return Comparison(difference, low, high, p_value, seeds, len(problems))


def _paired_comparison(cell: Cell, reference: Cell | None, resamples: int) -> Comparison | None:
    """`cell` against `reference` (same decoder, or whatever the caller pairs) on their common seeds."""
    if cell is None or reference is None:
        return None
    seeds = sorted(set(cell.seeds) & set(reference.seeds))
    return paired_scores_comparison(cell.scores_by_seed(seeds), reference.scores_by_seed(seeds), resamples)


def _compare_with_baseline(cells: list[Cell], by_key: dict, baseline: str, resamples: int) -> None:
    """Each method against `baseline` with the same decoder and, where the sweep has it, against its control;
    Holm's correction runs over every comparison of the report together."""
    compared = []
    for cell in cells:
        if cell.algorithm != baseline:
            cell.comparison = _paired_comparison(
                cell, by_key.get((cell.dataset, cell.model, baseline, cell.decoder_label)), resamples)
        cell.control_comparison = _paired_comparison(
            cell, by_key.get((cell.dataset, cell.model, control_label(cell.algorithm), cell.decoder_label)), resamples)
        compared += [c for c in (cell.comparison, cell.control_comparison) if c is not None]
    for comparison, adjusted in zip(compared, holm([c.p_value for c in compared])):
        comparison.p_holm = adjusted


# ---------------------------------------------------------------------------- report tables
REPORT_COLUMNS = ("method", "decoder", "seeds", "accuracy % [95% CI]", "lift vs greedy %", "pass@N %",
                  f"Δ vs {BASELINE}, points [95% CI]", "p (Holm)", "Δ vs control, points [95% CI]", "p (Holm) ",
                  "train tokens", "sampled tokens",
                  "eval tokens", "train s", "decode s")
CSV_COLUMNS = ("dataset", "model", "method", "decoder", "seeds", "num_problems", "accuracy", "ci_low", "ci_high",
               "interval", "lift_over_greedy_pct", "pass_n", "pass_at_n", "delta_vs_baseline", "delta_ci_low",
               "delta_ci_high", "p_value", "p_holm", "significant", "delta_vs_control", "control_ci_low",
               "control_ci_high", "control_p_value", "control_p_holm", "control_significant", "train_tokens", "sampling_generated_tokens",
               "eval_generated_tokens", "train_seconds", "decode_seconds", "wall_seconds")


def _count(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _p(value: float | None) -> str:
    return "—" if value is None else ("<0.001" if value < 0.001 else f"{value:.3f}")


def _delta(comparison: Comparison | None) -> list[str]:
    """The Δ cell and the p cell of a comparison."""
    if comparison is None:
        return ["—", "—"]
    return [f"{100 * comparison.difference:+.1f} [{100 * comparison.low:+.1f}, {100 * comparison.high:+.1f}]"
            + (" *" if comparison.significant else ""), f"{_p(comparison.p_value)} ({_p(comparison.p_holm)})"]


def report_rows(cells: list[Cell]) -> list[list[str]]:
    rows = []
    for cell in cells:
        rows.append([
            cell.algorithm, cell.decoder_label, str(len(cell.runs)),
            f"{100 * cell.accuracy:.1f} [{_percent(cell.ci_low)}, {_percent(cell.ci_high)}]",
            _signed(cell.lift), "—" if cell.pass_n is None else f"{100 * cell.pass_n[1]:.1f} (N={cell.pass_n[0]})",
            *_delta(cell.comparison), *_delta(cell.control_comparison),
            _count(cell.compute.get("train_tokens")), _count(cell.compute.get("sampling_generated_tokens")),
            _count(cell.compute.get("eval_generated_tokens")), _count(cell.compute.get("train_seconds")),
            "—" if cell.compute.get("decode_seconds") is None else f"{cell.compute['decode_seconds']:.1f}",
        ])
    return rows


def report_csv(cells: list[Cell]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for cell in cells:
        writer.writerow([
            cell.dataset, cell.model, cell.algorithm, cell.decoder_label, " ".join(map(str, cell.seeds)),
            cell.num_problems, cell.accuracy, cell.ci_low, cell.ci_high, cell.interval, cell.lift,
            *(cell.pass_n if cell.pass_n else ("", "")),
            *(value for c in (cell.comparison, cell.control_comparison)
              for value in ((c.difference, c.low, c.high, c.p_value, c.p_holm, c.significant) if c else ("",) * 6)),
            *(cell.compute.get(key) for key in ("train_tokens", "sampling_generated_tokens", "eval_generated_tokens",
                                                  "train_seconds", "decode_seconds", "wall_seconds")),
        ])
    return buffer.getvalue()


def _markdown_table(header, rows) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


Z_POWER_80 = 0.8416  # the standard normal's 80% quantile


def minimum_detectable_difference(comparison: Comparison) -> float:
    """The difference a paired comparison with this one's standard error detects with 80% power at a
    two-sided 5% level (unadjusted): (z_0.975 + z_0.8) x SE, the SE read off its 95% bootstrap interval."""
    return (Z_95 + Z_POWER_80) * (comparison.high - comparison.low) / (2 * Z_95)


def _minimum_detectable_lines(cells: list[Cell]) -> list[str]:
    by_decoder: dict[str, list[float]] = {}
    for cell in cells:
        if cell.comparison is not None:
            by_decoder.setdefault(cell.decoder_label, []).append(minimum_detectable_difference(cell.comparison))
    if not by_decoder:
        return []
    parts = [f"{label} {100 * sorted(v)[len(v) // 2]:.1f} points ({len(v)} comparisons, "
             f"{100 * min(v):.1f}-{100 * max(v):.1f})" for label, v in by_decoder.items()]
    return ["Minimum detectable difference vs the baseline (80% power, two-sided 5%, unadjusted; median over "
            "methods, from each paired interval's standard error): " + "; ".join(parts) + ".", ""]


def report_markdown(cells: list[Cell], title: str, missing: list[str], checks: list[str],
                    plots: list[tuple[str, str | None]] | None, baseline: str = BASELINE,
                    resamples: int = BOOTSTRAP_RESAMPLES) -> str:
    lines = [f"# Comparison report: {title}", ""]
    if missing:
        lines += [f"**{len(missing)} job(s) without results** (failed, killed or never started); their rows "
                  "are missing or rest on fewer seeds:", ""] + [f"- {line}" for line in missing] + [""]
    if not cells:
        return "\n".join(lines + ["No job in this sweep has results yet."])
    header = [h.replace(f"vs {BASELINE}", f"vs {baseline}") for h in REPORT_COLUMNS]
    for dataset, model in dict.fromkeys((c.dataset, c.model) for c in cells):
        group = [c for c in cells if (c.dataset, c.model) == (dataset, model)]
        seeds = sorted({seed for cell in group for seed in cell.seeds})
        problems = sorted({cell.num_problems for cell in group})
        lines += [f"## `{dataset}` with model `{model}`", "",
                  f"{'/'.join(map(str, problems))} test problems, seeds {', '.join(map(str, seeds))}.", ""]
        lines += _markdown_table(header, report_rows(group)) + [""]
        lines += _minimum_detectable_lines(group)
        if premises := fidelity.premises_lines(group):
            lines += ["### Premises: is the starting model in the regime the papers assume?", "", *premises, "",
                      "Measured from the jobs' generations and the `premises` records the launcher writes after a "
                      "method trains (framework/premises.py; gold answers are used there and here only).", ""]
        if claims := fidelity.fidelity_lines(group, lambda a, b: _paired_comparison(a, b, resamples),
                                             lambda a, b: paired_scores_comparison(a, b, resamples)):
            lines += ["### Fidelity: do the seed papers' claims hold here?", "", *claims, "",
                      "Verdict from the paired 95% interval (bootstrap over problems, seeds averaged, not "
                      "adjusted for multiplicity): held when it lies on the claimed side of 0, not held when on the "
                      "other side, not resolved when it contains 0.", ""]
    notes = [
        "Accuracy: mean over seeds and problems of each problem's share of correct chosen outputs (one "
        "output for greedy, beam and best-of-N; every sample for `sample`). 95% CI over both problems and "
        "seeds (crossed random-effects variance, normal interval; one seed: Wilson over problems).",
        "Lift vs greedy: 100 x (accuracy - greedy accuracy) / greedy accuracy of the same method on the "
        "seeds both rows have (beam width 1 is greedy; best-of-N without either: its own greedy pass).",
        "pass@N: share of problems with at least one correct of N samples (unbiased estimator), mean over seeds.",
        f"Δ vs {baseline}: accuracy difference in points to `{baseline}` with the same decoder, on the seeds and "
        f"problems both have, seeds averaged per problem; 95% paired bootstrap interval over problems "
        f"({resamples:,} resamples, seed {BOOTSTRAP_SEED}); p: two-sided bootstrap p-value for no difference, "
        f"in brackets Holm-adjusted over all "
        f"{sum((c.comparison is not None) + (c.control_comparison is not None) for c in cells)} comparisons "
        f"(both Δ columns); * marks Holm-adjusted p < {SIGNIFICANCE_LEVEL}.",
        "`<method> control`: SFT on the gold demonstrations from the model the method's last training stage "
        "started from, with the method's optimizer steps, batch, learning rate and schedule "
        "(evaluation.control_decoders). Δ vs control: the method against its own control, computed like Δ vs "
        f"{baseline}; it separates what the method's data does from what more optimizer steps do.",
        "Compute, mean per job: train tokens and sampled tokens are summed over every training stage the "
        "model depends on (cached stages included) when results.json records them; eval tokens are the "
        "tokens generated on the test set; train s falls back to the job's own training time.",
    ]
    fallback = [c for c in cells if c.interval.startswith("per-seed")]
    if fallback:
        notes.append("Rows " + ", ".join(f"{c.algorithm}/{c.decoder_label}" for c in fallback) + " have no "
                     "per-problem scores: their interval combines each seed's own interval with the spread over "
                     "seeds (conservative), and they have no Δ.")
    lines += ["### Notes", ""] + [f"- {note}" for note in notes] + [""]
    if plots is not None:
        lines += ["### Plots", ""] + [f"- ![{name}]({name})" if reason is None else f"- {name}: not drawn ({reason})"
                                      for name, reason in plots] + [""]
    lines += ["### Checks", ""] + [f"- {line}" for line in checks]
    return "\n".join(lines)


def run_checks(results: list[dict]) -> list[str]:
    """Recompute every job from its generations and say whether results.json agrees."""
    lines, agreeing, unchecked = [], 0, []
    for record in results:
        problems = check_against_generations(record)
        name = Path(record.get("job_dir") or record.get("source", "?")).name
        if problems == ["no generations.jsonl to recompute from"]:
            unchecked.append(name)
        elif problems:
            lines.append(f"WARNING `{name}`: results.json disagrees with generations.jsonl: " + "; ".join(problems))
        else:
            agreeing += 1
    checked = len(results) - len(unchecked)
    summary = (f"accuracy, pass@k and problem counts recomputed from generations.jsonl agree with results.json "
               f"for {agreeing}/{checked} jobs")
    lines.insert(0, summary + (f"; {len(unchecked)} job(s) have no generations.jsonl" if unchecked else "") + ".")
    return lines


def write_report(results: list[dict], out_dir: Path, title: str, missing: list[str], baseline: str = BASELINE,
                 resamples: int = BOOTSTRAP_RESAMPLES, plots: bool = True) -> str:
    """Write report.md, report.csv and the plots into `out_dir`; return the Markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cells = aggregate(results, baseline, resamples)
    checks = run_checks(results)
    for line in checks[1:]:
        print(line, file=sys.stderr)
    drawn = None
    if plots:
        from framework import plots as plotting

        drawn = plotting.write_plots(cells, out_dir)
        for name, reason in drawn:
            if reason is not None:
                print(f"plot {name} skipped: {reason}", file=sys.stderr)
    text = report_markdown(cells, title, missing, checks, drawn, baseline, resamples)
    (out_dir / "report.md").write_text(text + "\n", encoding="utf-8")
    (out_dir / "report.csv").write_text(report_csv(cells), encoding="utf-8")
    return text


# ---------------------------------------------------------------------------- per-job table (comparison.md)
def table_rows(results: list[dict]) -> list[list[str]]:
    rows = []
    for record in results:
        metrics = record["metrics"]
        pass_keys = sorted((key for key in metrics if key.startswith("pass@")), key=lambda k: int(k[5:]))
        rows.append([
            record["algorithm"], record["decoder_label"], str(record["seed"]),
            f"{100 * metrics['accuracy']:.1f}",
            f"[{100 * metrics['accuracy_ci_low']:.1f}, {100 * metrics['accuracy_ci_high']:.1f}]",
            f"{100 * metrics['accuracy_flexible']:.1f}",
            f"{pass_keys[-1]}={100 * metrics[pass_keys[-1]]:.1f}" if pass_keys else "",
            _signed(metrics.get("lift_over_greedy")),
            f"{metrics['mean_tokens']:.1f}", f"{record['train_seconds']:.0f}", f"{metrics['decode_seconds']:.1f}",
        ])
    return rows


def markdown(results: list[dict], missing: list[str]) -> str:
    rows = table_rows(results)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    if results:
        first = results[0]
        lines.append(f"\nAccuracy in % on {first['metrics']['num_problems']} test problems of `{first['dataset']}` "
                     f"(model `{first['model']}`); 95% interval over problems (Wilson; normal approximation for "
                     f"decoders scoring several samples per problem).")
    if missing:
        lines.append(f"\nJobs without results (failed or interrupted): {', '.join(missing)}")
    return "\n".join(lines)


def write(sweep_dir: Path) -> str:
    results, missing = collect(sweep_dir)
    text = markdown(results, missing)
    (sweep_dir / "comparison.md").write_text(text + "\n")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    writer.writerows(table_rows(results))
    (sweep_dir / "comparison.csv").write_text(buffer.getvalue())
    return text


def _beam_ranking(config: dict) -> str:
    """How a beam decoder ranks finished beams: by the sum of log-probs (length_penalty 0, the SOC paper's
    reading: beam search ranks by accumulated log-probabilities) or by sum / length^penalty."""
    penalty = float(config.get("length_penalty", 1.0))
    return "sum log-prob" if penalty == 0 else ("mean log-prob" if penalty == 1 else f"sum / length^{penalty:g}")


def width_table(results: list[dict]) -> str:
    """Accuracy by beam width per method and beam ranking (SOC paper's view), pooled over seeds.

    Each cell is the report's accuracy with its interval over seeds and problems (`seed_problem_interval`).
    Beam regret is the accuracy at width k minus the accuracy at the smallest width (1 = greedy), in
    points. Over-optimism: the share of outputs that are wrong yet more likely under the model than the
    gold demonstration (mean over seeds). Rows differ by `length_penalty` (transformers ranks running
    beams by summed log-prob either way; the penalty decides among finished ones).
    """
    beam_runs = [r for r in results if r["decoder"] == "beam" and "decoder_config" in r]
    if not beam_runs:
        return "No beam-search runs in this directory."
    widths = sorted({r["decoder_config"]["num_beams"] for r in beam_runs})
    cells = {(c.algorithm, _beam_ranking(c.decoder_config), c.decoder_config["num_beams"]): c
             for c in aggregate(beam_runs, compare=False)}
    rows = sorted({(method, ranking) for method, ranking, _ in cells}, key=lambda r: (_method_rank(r[0]), r[1]))
    optimism = {key: _mean(run["metrics"].get("over_optimism_rate") for run in cell.runs)
                for key, cell in cells.items()}
    header = "| method | beam ranking | " + " | ".join(f"width {w}" for w in widths) + " |"
    rule = "|---|---|" + "---|" * len(widths)
    lines = ["Accuracy (%) by beam width, mean [95% CI] over seeds and problems", "", header, rule]
    for method, ranking in rows:
        row = [f"{100 * cells[method, ranking, w].accuracy:.1f} [{_percent(cells[method, ranking, w].ci_low)}, "
               f"{_percent(cells[method, ranking, w].ci_high)}]" if (method, ranking, w) in cells else ""
               for w in widths]
        lines.append(f"| {method} | {ranking} | " + " | ".join(row) + " |")
    lines += ["", f"Beam regret (points vs width {widths[0]}) and over-optimism rate (%)", "", header, rule]
    for method, ranking in rows:
        first = cells.get((method, ranking, widths[0]))
        row = [f"{100 * (cells[method, ranking, w].accuracy - first.accuracy):+.1f} / "
               f"{100 * optimism[method, ranking, w]:.1f}"
               if first is not None and (method, ranking, w) in cells and optimism[method, ranking, w] is not None
               else "" for w in widths]
        lines.append(f"| {method} | {ranking} | " + " | ".join(row) + " |")
    counts = sorted({len(cell.runs) for cell in cells.values()})
    lines.append(f"\nSeeds per cell: {', '.join(map(str, counts))}. The SOC paper's argument is about beam "
                 "search ranked by accumulated (summed) log-probability: the `sum log-prob` rows.")
    return "\n".join(lines)


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.1f}"


def bon_curve_table(results: list[dict]) -> str:
    """Best-of-N accuracy against N' per (method, selector, seed), from each job's subsampled curve
    (the sharpening paper's view): accuracy %, its lift over the same model's greedy accuracy, and
    pass@N' (coverage: any of N' samples correct)."""
    runs = [r for r in results if "bon_accuracy_by_n" in r["metrics"]]
    if not runs:
        return "No best-of-N runs in this directory."
    sizes = sorted({int(n) for r in runs for n in r["metrics"]["bon_accuracy_by_n"]})
    header = "| method | selector | seed | greedy | " + " | ".join(f"N={n}" for n in sizes) + " |"
    rule = "|---|---|---|---|" + "---|" * len(sizes)
    lines = ["Best-of-N accuracy % (lift over greedy %) by N", "", header, rule]
    coverage = ["", "Coverage: pass@N %", "", header, rule]
    for record in sorted(runs, key=lambda r: (r["algorithm"], r["decoder_config"].get("selector", ""), r["seed"])):
        metrics = record["metrics"]
        greedy = metrics.get("greedy_accuracy")
        lifts = metrics.get("lift_over_greedy_by_n") or {}
        prefix = (f"| {record['algorithm']} | {record['decoder_config'].get('selector', '')} | {record['seed']} | "
                  f"{'' if greedy is None else f'{100 * greedy:.1f}'} | ")
        cells = [f"{100 * metrics['bon_accuracy_by_n'][str(n)]:.1f} ({_signed(lifts.get(str(n)))})"
                 if str(n) in metrics["bon_accuracy_by_n"] else "" for n in sizes]
        lines.append(prefix + " | ".join(cells) + " |")
        covered = [f"{100 * metrics[f'pass@{n}']:.1f}" if f"pass@{n}" in metrics else "" for n in sizes]
        coverage.append(prefix + " | ".join(covered) + " |")
    return "\n".join(lines + coverage)


# ---------------------------------------------------------------------------- W&B group
def decoder_label_from_config(decoder: dict) -> str:
    """The launcher's decoder label (`bon(selector=..., ...)`) rebuilt from a W&B run's decoder config."""
    from dataclasses import fields

    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from framework import registry
    from framework.__main__ import _describe_decoder

    registry.load_plugins()
    try:
        schema = OmegaConf.get_type(ConfigStore.instance().load(f"decoder/{decoder['name']}_schema.yaml").node)
        names = {f.name for f in fields(schema)}
        return _describe_decoder(schema(**{k: v for k, v in decoder.items() if k in names}))
    except Exception:  # an unknown plugin's decoder: still a readable, stable label
        return str(decoder.get("name", "?"))


GROUPS = ("model", "dataset", "algorithm", "decoder", "logger")


def _resolved_wandb_config(config: dict) -> dict:
    """A W&B run's config in the launcher's nested shape.

    A run started by a W&B sweep agent has its sweep parameters merged over the launcher's config, so a
    swept group reads `algorithm: "sft"` instead of `{name: sft, ...}` and a swept field sits in a flat
    `decoder.selector` key. Such a run's config is recomposed with Hydra from those overrides (the
    same thing the agent's command line did), so labels and decoder settings match the launcher's.
    """
    if all(isinstance(config.get(group), dict) for group in GROUPS if group in config):
        return config
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from framework import registry
    from framework.__main__ import CONF_DIR

    overrides = [f"{key}={value}" for key, value in config.items()
                 if not isinstance(value, dict) and (key in GROUPS or "." in key or key in ("sweeps", "seed"))]
    registry.load_plugins()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return OmegaConf.to_container(compose(config_name="config", overrides=overrides), resolve=True)


def _record_from_wandb_run(run, scratch: Path) -> dict:
    """A results.json-shaped record from a W&B run's config and summary; per-problem scores come from
    the logged generations table when it holds every problem (`logger.max_table_rows` large enough)."""
    # summary_metrics: plain JSON (run.summary wraps nested values such as the table reference)
    config, summary = _resolved_wandb_config(dict(run.config)), dict(run.summary_metrics)
    metrics = {key[len("eval/"):]: value for key, value in summary.items()
               if key.startswith("eval/") and key != "eval/generations"}
    compute = {key[len("compute/"):]: value for key, value in summary.items() if key.startswith("compute/")}
    decoder = dict(config.get("decoder") or {})
    record = {
        "algorithm": config["algorithm"]["name"], "algorithm_config": config["algorithm"],
        "decoder": decoder.get("name"),
        "decoder_label": decoder_label_from_config(decoder), "decoder_config": decoder,
        "dataset": config["dataset"]["name"], "model": config["model"]["name"], "seed": config["seed"],
        "metrics": metrics, "train_seconds": compute.get("train_seconds", 0.0),
        "wall_seconds": summary.get("_runtime"), "source": getattr(run, "url", run.name), "job_dir": None,
        "problem_scores": None,
    }
    if compute:
        record["compute"] = compute
    table = summary.get("eval/generations")
    if isinstance(table, dict) and table.get("path"):
        downloaded = run.file(table["path"]).download(root=str(scratch), replace=True)
        downloaded.close()
        content = json.loads((scratch / table["path"]).read_text())
        rows = [dict(zip(content["columns"], row)) for row in content["data"]]
        scores = _scores_from_rows(rows) if rows and "chosen" in rows[0] else {}
        if len(scores) == metrics.get("num_problems"):
            record["problem_scores"] = scores
    return record


def collect_wandb(group: str, project: str, entity: str | None = None, api=None) -> tuple[list[dict], list[str]]:
    """(records, runs without results) of every run in a W&B group, through the public API (online)."""
    if api is None:
        if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled"):
            raise ReportError(f"reading W&B group {group!r} needs the W&B API, but WANDB_MODE="
                              f"{os.environ['WANDB_MODE']}; pass the sweep directory instead (offline runs "
                              "leave results.json there), or unset WANDB_MODE and `wandb login`")
        import wandb

        try:
            api = wandb.Api(timeout=60)
        except Exception as error:  # no API key, no network
            raise ReportError(f"cannot reach the W&B API to read group {group!r} ({error}); pass the sweep "
                              "directory instead, or `wandb login` on a machine with network") from None
    path = f"{entity}/{project}" if entity else project
    results, missing = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for run in api.runs(path, filters={"group": group}):
            if run.state != "finished" or "eval/accuracy" not in run.summary_metrics:
                missing.append(f"`{run.name}` (W&B state {run.state})")
                continue
            results.append(_record_from_wandb_run(run, Path(scratch) / run.id))
    if not results and not missing:
        raise ReportError(f"no runs in W&B group {group!r} of project {path!r}")
    label_methods(results)
    for record in results:
        if record.get("control_of"):
            record["algorithm"] = control_label(record["algorithm"])
    results.sort(key=lambda r: (r["algorithm"], r["decoder_label"], r["seed"]))
    return results, missing


# ---------------------------------------------------------------------------- entry points
class ComparisonTableCallback(Callback):
    """Hydra callback: when a multirun ends, write the per-job table and the report, print the report.

    Hydra's basic sweeper raises once a batch holds a failed job, before `on_multirun_end`; the report is
    then written when the process exits instead, so the finished jobs are reported and the failed ones
    listed as missing (also after Ctrl-C)."""

    def __init__(self) -> None:
        self._sweep_dir: Path | None = None

    def on_multirun_start(self, config, **kwargs) -> None:
        import atexit

        self._sweep_dir = Path(config.hydra.sweep.dir)
        atexit.register(self._report)

    def on_multirun_end(self, config, **kwargs) -> None:
        self._sweep_dir = self._sweep_dir or Path(config.hydra.sweep.dir)
        self._report()

    def _report(self) -> None:
        from framework import distributed

        sweep_dir, self._sweep_dir = self._sweep_dir, None  # once per sweep
        if sweep_dir is None or not sweep_dir.is_dir() or not distributed.is_main_process():
            return  # one report per sweep under torchrun
        per_job = write(sweep_dir)
        results, missing = collect(sweep_dir)
        text = write_report(results, sweep_dir, sweep_dir.name, missing_job_lines(sweep_dir, missing))
        print(f"\n{per_job}\n\n{text}\n\n(saved to {sweep_dir}/report.md, report.csv, comparison.md and the "
              "plots)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, nargs="?",
                        help="a multirun directory (or any directory of job outputs)")
    parser.add_argument("--wandb-group", help="read the runs of this W&B group instead (online)")
    parser.add_argument("--project", default="reasoning-posttrain", help="W&B project of --wandb-group")
    parser.add_argument("--entity", default=None, help="W&B entity of --wandb-group (default: your default entity)")
    parser.add_argument("--out", type=Path, help="where to write (default: the sweep directory; "
                                                 "reports/<group> for --wandb-group)")
    parser.add_argument("--baseline", default=BASELINE, help="the method every other one is compared with")
    parser.add_argument("--resamples", type=int, default=BOOTSTRAP_RESAMPLES, help="paired bootstrap resamples")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    parser.add_argument("--by-width", action="store_true", help="accuracy by beam width per method (SOC sweep)")
    parser.add_argument("--by-n", action="store_true", help="best-of-N accuracy, lift and pass@N by N (sharpening)")
    args = parser.parse_args(argv)
    try:
        if args.wandb_group:
            results, missing = collect_wandb(args.wandb_group, args.project, args.entity)
            out_dir, title = args.out or Path("reports") / args.wandb_group, f"W&B group {args.wandb_group}"
        elif args.sweep_dir is None:
            raise ReportError("give a sweep directory or --wandb-group NAME")
        elif not args.sweep_dir.is_dir():
            raise ReportError(f"{args.sweep_dir} is not a directory (for a W&B group use --wandb-group NAME)")
        else:
            print(write(args.sweep_dir) + "\n")
            results, missing = collect(args.sweep_dir)
            missing = missing_job_lines(args.sweep_dir, missing)
            out_dir, title = args.out or args.sweep_dir, args.sweep_dir.name
        if args.resamples < 1:
            raise ReportError(f"--resamples must be >= 1 (got {args.resamples})")
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(write_report(results, out_dir, title, missing, args.baseline, args.resamples, plots=not args.no_plots))
    print(f"\n(saved to {out_dir}/report.md and report.csv)")
    if args.by_width:
        table = width_table(results)
        (out_dir / "accuracy_by_width.md").write_text(table + "\n")
        print("\n" + table)
    if args.by_n:
        table = bon_curve_table(results)
        (out_dir / "bon_by_n.md").write_text(table + "\n")
        print("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
