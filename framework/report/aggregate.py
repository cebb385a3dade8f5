"""The report's cells: every seed of one (dataset, model, method, decoder) pooled into an accuracy with its
interval, lift over the same method's greedy accuracy, pass@N and compute, and compared with the baseline
method and with the method's control under the same decoder (Holm over every comparison)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from framework.evaluation import Z_95
from framework.report.statistics import (
    BOOTSTRAP_RESAMPLES, Comparison, holm, paired_scores_comparison, seed_problem_interval,
)
from framework.report.sweep import Run, control_label
from framework.results import JobResult

BASELINE = "sft"
# Rows follow the order a reader expects (baselines first); unknown plugins come after, alphabetically.
METHOD_ORDER = ("none", "sft", "soc", "rft", "bon_sft", "dpo", "outcome_dpo", "xpo", "self_explore")
DECODER_ORDER = ("greedy", "sample", "beam", "bon")


@dataclass
class Cell:
    """All seeds of one (dataset, model, method, decoder) combination."""
    dataset: str
    model: str
    algorithm: str  # the method's row label (Run.method_label)
    decoder: str
    decoder_label: str
    decoder_config: dict
    runs: list[Run]
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
        return [run.result.seed for run in self.runs]

    def scores_by_seed(self, seeds=None) -> dict[int, dict[int, float]] | None:
        """Seed -> per-problem scores, for the given seeds (default all); None if any lacks them."""
        wanted = self.seeds if seeds is None else seeds
        chosen = {run.result.seed: run.problem_scores for run in self.runs if run.result.seed in wanted}
        return None if any(scores is None for scores in chosen.values()) else chosen


def method_rank(label: str) -> tuple:
    name = label.split("(", 1)[0].removesuffix(" control")  # `xpo(alpha=[0.01])` and `xpo control` rank as xpo
    return (METHOD_ORDER.index(name), label) if name in METHOD_ORDER else (len(METHOD_ORDER), label)


def _decoder_rank(cell: Cell) -> tuple:
    name, config = cell.decoder, cell.decoder_config
    return (DECODER_ORDER.index(name) if name in DECODER_ORDER else len(DECODER_ORDER), name,
            config.get("num_beams", 0), str(config.get("selector", "")), config.get("samples_per_prompt", 0),
            cell.decoder_label)


def mean_or_none(values) -> float | None:
    """The mean; None when there are no values or one is missing."""
    values = list(values)
    return None if not values or any(v is None for v in values) else sum(values) / len(values)


def compute_spent(result: JobResult) -> dict:
    """Compute of one job: training (summed over every stage its model depends on, cached or not, when
    results.json has a `compute` record; else this job's own training time) and evaluation."""
    compute, metrics = result.compute or {}, result.metrics
    return {
        "train_tokens": compute.get("train_tokens"),
        "sampling_generated_tokens": compute.get("sampling_generated_tokens"),
        "train_seconds": compute.get("train_seconds", result.train_seconds),
        "eval_generated_tokens": metrics.get("generated_tokens"),
        "decode_seconds": metrics.get("decode_seconds"),
        "wall_seconds": result.wall_seconds,
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
    metrics = [run.result.metrics for run in cell.runs]
    accuracies = [m["accuracy"] for m in metrics]
    cell.accuracy = sum(accuracies) / len(accuracies)
    cell.num_problems = int(metrics[0].get("num_problems", 0))
    halves = [(m.get("accuracy_ci_high", 0) - m.get("accuracy_ci_low", 0)) / 2 for m in metrics]
    variance = sum((h / Z_95) ** 2 for h in halves) / len(halves)
    if len(accuracies) > 1:
        variance += sum((a - cell.accuracy) ** 2 for a in accuracies) / (len(accuracies) - 1) / len(accuracies)
    half = Z_95 * math.sqrt(variance)
    cell.ci_low, cell.ci_high = max(0.0, cell.accuracy - half), min(1.0, cell.accuracy + half)
    cell.interval = "per-seed summaries (no per-problem scores)"


def aggregate(runs: list[Run], baseline: str = BASELINE, resamples: int = BOOTSTRAP_RESAMPLES,
              compare: bool = True) -> list[Cell]:
    """Group the jobs into cells, compute each cell's accuracy and interval, lift over greedy, pass@N and
    compute, and (`compare`) compare each method with `baseline` under the same decoder (Holm over all
    comparisons)."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        result = run.result
        groups.setdefault((result.dataset, result.model, run.method_label, result.decoder_label), []).append(run)
    cells = []
    for (dataset, model, algorithm, label), members in groups.items():
        members = sorted(members, key=lambda r: r.result.seed)
        first = members[0].result
        cell = Cell(dataset, model, algorithm, first.decoder, label, first.decoder_config or {}, members)
        _aggregate_accuracy(cell)
        metrics = [run.result.metrics for run in members]
        sizes = set.intersection(*({int(k[5:]) for k in m if k.startswith("pass@")} for m in metrics))
        if sizes:
            largest = max(sizes)
            cell.pass_n = (largest, mean_or_none(m[f"pass@{largest}"] for m in metrics))
        spent = [compute_spent(run.result) for run in members]
        cell.compute = {key: mean_or_none(s[key] for s in spent) for key in spent[0]}
        cells.append(cell)
    cells.sort(key=lambda c: (c.dataset, c.model, method_rank(c.algorithm), _decoder_rank(c)))
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
            accuracy = mean_or_none(ours[s][i] for s in seeds for i in problems)
            reference = mean_or_none(theirs[s][i] for s in seeds for i in problems)
        else:
            accuracy = mean_or_none(run.result.metrics["accuracy"] for run in cell.runs if run.result.seed in seeds)
            reference = mean_or_none(run.result.metrics["accuracy"] for run in greedy.runs if run.result.seed in seeds)
    else:
        accuracy = cell.accuracy
        reference = mean_or_none(run.result.metrics.get("greedy_accuracy") for run in cell.runs)
    if accuracy is None or not reference:
        return None
    return 100.0 * (accuracy - reference) / reference


def paired_comparison(cell: Cell | None, reference: Cell | None,
                      resamples: int = BOOTSTRAP_RESAMPLES) -> Comparison | None:
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
            cell.comparison = paired_comparison(
                cell, by_key.get((cell.dataset, cell.model, baseline, cell.decoder_label)), resamples)
        cell.control_comparison = paired_comparison(
            cell, by_key.get((cell.dataset, cell.model, control_label(cell.algorithm), cell.decoder_label)), resamples)
        compared += [c for c in (cell.comparison, cell.control_comparison) if c is not None]
    for comparison, adjusted in zip(compared, holm([c.p_value for c in compared])):
        comparison.p_holm = adjusted
