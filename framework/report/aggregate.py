"""The report's cells: every seed of one (dataset, model, method, decoder) pooled into an accuracy with its
interval, lift over the same method's greedy accuracy, pass@N and compute, and compared with the baseline
method and with the method's control under the same decoder (Holm over every comparison).

Every view that needs "the same method's greedy accuracy" (report.md's lift, comparison.md's per-job lift,
the best-of-N-by-N table and plot, beam width 1 of the width table and plot) reads it here, one way: the
greedy job (else beam width 1) of the same method, on the seeds and problems both scored."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from framework.evaluation import Z_95
from framework.report.statistics import (
    BOOTSTRAP_RESAMPLES, Comparison, holm, paired_scores_comparison, seed_problem_interval,
)
from framework.report.sweep import Run, control_label, readable_values
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
    decoder_label: str  # the full label (DecoderConfig.label()): report.csv and the footnotes
    decoder_config: dict
    runs: list[Run]
    decoder_short: str = ""  # the label in tables and legends (short_decoder_labels); set by `aggregate`
    accuracy: float = 0.0
    ci_low: float | None = None
    ci_high: float | None = None
    interval: str = ""  # how the interval was computed
    num_problems: int = 0
    lift: float | None = None  # % over greedy, matched seeds
    greedy_reference: float | None = None  # the same method's greedy accuracy on this cell's seeds and problems
    pass_n: tuple[int, float] | None = None
    compute: dict = field(default_factory=dict)
    comparison: Comparison | None = None
    control_comparison: Comparison | None = None  # against the method's control (same decoder), when run
    budget: dict | None = None  # the method's own training stage, mean over seeds (`training_budget`)
    undertrained: list[str] = field(default_factory=list)  # why its training did not train, if it did not

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
    results.json has a `compute` record; else this job's own training time) and evaluation. Both report.md
    and comparison.md read it.

    Evaluation tokens count every sequence the decoder carries: best-of-N's and sampling's samples are all
    in generations.jsonl; beam search keeps one of its num_beams hypotheses, so its count is num_beams x the
    kept output's tokens, a lower bound (every step extends num_beams hypotheses; the engine does not report
    the discarded ones' lengths)."""
    compute, metrics = result.compute or {}, result.metrics
    eval_tokens = metrics.get("generated_tokens")
    if eval_tokens is not None and result.decoder == "beam":
        eval_tokens *= int((result.decoder_config or {}).get("num_beams", 1))
    return {
        "train_tokens": compute.get("train_tokens"),
        "sampling_generated_tokens": compute.get("sampling_generated_tokens"),
        "train_seconds": compute.get("train_seconds", result.train_seconds),
        "eval_generated_tokens": eval_tokens,
        "decode_seconds": metrics.get("decode_seconds"),
        "wall_seconds": result.wall_seconds,
    }


# A run whose loss did not move: too few optimizer steps, a warmup that is the whole run, or a DPO-style sigmoid
# loss still within this share of ln 2 (its value while the policy equals its reference) at the end
UNDERTRAINED_MIN_STEPS = 50
UNDERTRAINED_LN2_SHARE = 0.01


def own_budget(result: JobResult) -> dict | None:
    """The budget of the method's own training stage: the last training stage its model rests on (results.json's
    `training`); None for a method that trains nothing."""
    return result.training[-1] if result.training else None


def undertrained_reasons(budget: dict | None) -> list[str]:
    """Why a training stage did not train: fewer than 50 optimizer steps, a warmup as long as the run, or a
    DPO-style loss that ended within 1% of ln 2. [] when it trained (or trained nothing of its own)."""
    if not budget:
        return []
    reasons, steps = [], budget.get("steps") or 0
    if steps < UNDERTRAINED_MIN_STEPS:
        reasons.append(f"{steps} optimizer steps (< {UNDERTRAINED_MIN_STEPS})")
    if budget.get("warmup_steps") is not None and budget["warmup_steps"] >= steps:
        reasons.append(f"warmup of {budget['warmup_steps']} steps is the whole run")
    last = budget.get("last_loss")
    if budget.get("loss_kind") == "dpo_sigmoid" and last is not None and \
            abs(last - math.log(2)) <= UNDERTRAINED_LN2_SHARE * math.log(2):
        reasons.append(f"DPO loss {last:.4f} within 1% of ln 2")
    return reasons


def _aggregate_budget(cell: Cell) -> None:
    budgets = [own_budget(run.result) for run in cell.runs]
    if not budgets or any(budget is None for budget in budgets):
        return
    cell.budget = {key: mean_or_none(budget.get(key) for budget in budgets)
                   for key in ("steps", "global_batch", "examples", "epochs", "first_loss", "last_loss")}
    cell.budget["kind"] = budgets[0].get("kind")
    seen = {}
    for run, budget in zip(cell.runs, budgets):
        for reason in undertrained_reasons(budget):
            seen.setdefault(reason, []).append(run.result.seed)
    cell.undertrained = [f"{reason} (seed {', '.join(map(str, seeds))})" for reason, seeds in seen.items()]


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
        _aggregate_budget(cell)
        metrics = [run.result.metrics for run in members]
        sizes = set.intersection(*({int(k[5:]) for k in m if k.startswith("pass@")} for m in metrics))
        if sizes:
            largest = max(sizes)
            cell.pass_n = (largest, mean_or_none(m[f"pass@{largest}"] for m in metrics))
        spent = [compute_spent(run.result) for run in members]
        cell.compute = {key: mean_or_none(s[key] for s in spent) for key in spent[0]}
        cells.append(cell)
    cells.sort(key=lambda c: (c.dataset, c.model, method_rank(c.algorithm), _decoder_rank(c)))
    shorts = short_decoder_labels((c.decoder, c.decoder_label, c.decoder_config) for c in cells)
    by_key = {cell.key: cell for cell in cells}
    greedy_of = {}  # (dataset, model, method) -> its greedy cell; beam search of width 1 is greedy too
    for cell in cells:
        cell.decoder_short = shorts[cell.decoder_label]
        if _is_greedy(cell.decoder, cell.decoder_config):
            greedy_of.setdefault((cell.dataset, cell.model, cell.algorithm), cell)
    for cell in cells:
        greedy = greedy_of.get((cell.dataset, cell.model, cell.algorithm))
        if greedy is not cell:
            accuracy, cell.greedy_reference = greedy_reference(
                {run.result.seed: run for run in cell.runs},
                {run.result.seed: run for run in greedy.runs} if greedy is not None else {})
            cell.lift = lift_percent(accuracy, cell.greedy_reference)
    if compare:
        _compare_with_baseline(cells, by_key, baseline, resamples)
    return cells


def _is_greedy(decoder: str, config: dict | None) -> bool:
    """Greedy decoding, or beam search of width 1 (the same output)."""
    return decoder == "greedy" or (decoder == "beam" and (config or {}).get("num_beams") == 1)


def lift_percent(accuracy: float | None, reference: float | None) -> float | None:
    """100 x (accuracy - reference) / reference; None without both (or with a reference of 0)."""
    return None if accuracy is None or not reference else 100.0 * (accuracy - reference) / reference


def greedy_reference(ours: dict[int, Run], greedy: dict[int, Run]) -> tuple[float | None, float | None]:
    """(our accuracy, the same method's greedy accuracy) on the seeds and problems both scored, from seed ->
    job maps: one job each for comparison.md's row, every seed for report.md's cell.

    Without per-problem scores: results.json's accuracies on the common seeds. Without a greedy job (no greedy
    or beam-1 job of this method): the greedy reference a best-of-N job decodes itself (`greedy_accuracy`,
    decoder.greedy_reference), on its own problems."""
    seeds = sorted(set(ours) & set(greedy))
    if seeds:
        mine = {seed: ours[seed].problem_scores for seed in seeds}
        theirs = {seed: greedy[seed].problem_scores for seed in seeds}
        if all(mine.values()) and all(theirs.values()):  # on the problems both scored (max_problems may differ)
            problems = sorted(set.intersection(*(set(s) for s in [*mine.values(), *theirs.values()])))
            return (mean_or_none(mine[s][i] for s in seeds for i in problems),
                    mean_or_none(theirs[s][i] for s in seeds for i in problems))
        return (mean_or_none(ours[s].result.metrics["accuracy"] for s in seeds),
                mean_or_none(greedy[s].result.metrics["accuracy"] for s in seeds))
    runs = list(ours.values())
    return (mean_or_none(run.result.metrics["accuracy"] for run in runs),
            mean_or_none(run.result.metrics.get("greedy_accuracy") for run in runs))


def greedy_jobs(runs: list[Run]) -> dict[tuple, Run]:
    """(dataset, model, method row, seed) -> that method's greedy job (else its beam-1 job) for that seed."""
    found: dict[tuple, Run] = {}
    for run in sorted(runs, key=lambda r: r.result.decoder != "greedy"):  # greedy before beam width 1
        result = run.result
        if _is_greedy(result.decoder, result.decoder_config):
            found.setdefault((result.dataset, result.model, run.method_label, result.seed), run)
    return found


def job_greedy_reference(run: Run, greedy: dict[tuple, Run]) -> tuple[float | None, float | None]:
    """`greedy_reference` for one job (`greedy`: from `greedy_jobs`); (None, None) for a greedy job itself."""
    result = run.result
    match = greedy.get((result.dataset, result.model, run.method_label, result.seed))
    if match is run:
        return None, None
    return greedy_reference({result.seed: run}, {result.seed: match} if match is not None else {})


# ---------------------------------------------------------------------------- labels
_LABEL = re.compile(r"^(?P<name>[^(]+)\((?P<keys>.*)\)$")


def _label_keys(label: str) -> list[str]:
    """The keys a label shows: `bon(samples_per_prompt=16, selector=logprob)` -> [samples_per_prompt, selector]."""
    match = _LABEL.match(label)
    return re.findall(r"(?:^|, )(\w+)=", match["keys"]) if match else []


def short_decoder_labels(decoders) -> dict[str, str]:
    """Full decoder label -> the label tables and legends show: the decoder's name, plus the keys (of those
    its labels show) that differ among this report's decoders of that name; the full label goes to report.csv
    and a footnote. The headline's `bon(max_problems=100, samples_per_prompt=16, temperature=1.0,
    selector=logprob)` becomes `bon`; a selector sweep keeps `bon(selector=majority)`.

    `decoders`: (decoder name, full label, decoder config or None) triples."""
    by_name: dict[str, dict[str, dict | None]] = {}
    for name, label, config in decoders:
        by_name.setdefault(name, {})[label] = config
    shorts = {}
    for name, labels in by_name.items():
        if len(labels) == 1 or any(config is None for config in labels.values()):
            shorts.update({label: label if len(labels) > 1 else name for label in labels})
            continue
        shown = list(dict.fromkeys(key for label in labels for key in _label_keys(label)))
        varying = [key for key in shown if len({str(config.get(key)) for config in labels.values()}) > 1]
        texts = {key: readable_values([config.get(key) for config in labels.values()]) for key in varying}
        if "max_problems" in texts:  # null: the whole test split
            texts["max_problems"] = ["all" if text == "None" else text for text in texts["max_problems"]]
        chosen = {label: f"{name}(" + ", ".join(f"{key}={texts[key][index]}" for key in varying) + ")"
                  for index, label in enumerate(labels)}
        # labels that would read alike (a config without a key its label shows) keep their full text
        shorts.update(chosen if len(set(chosen.values())) == len(chosen) else {label: label for label in labels})
    return shorts


def decoder_footnote(cells: list[Cell]) -> str | None:
    """`Decoders: beam is beam(num_beams=4); bon is bon(...)`: the full label of every shortened one."""
    pairs = dict((c.decoder_short, c.decoder_label) for c in cells if c.decoder_short != c.decoder_label)
    if not pairs:
        return None
    return "Decoders: " + "; ".join(f"`{short}` is `{full}`" for short, full in pairs.items()) + "."


# ---------------------------------------------------------------------------- beam width
def beam_ranking(config: dict) -> str:
    """How a beam decoder ranks finished beams: by the sum of log-probs (length_penalty 0, the SOC paper's
    reading: beam search ranks by accumulated log-probabilities) or by sum / length^penalty."""
    penalty = float(config.get("length_penalty", 1.0))
    return "sum log-prob" if penalty == 0 else ("mean log-prob" if penalty == 1 else f"sum / length^{penalty:g}")


def beam_widths(cells: list[Cell]) -> dict[tuple[str, str], dict[int, Cell]]:
    """(method row, beam ranking) -> {beam width: cell}, for the width table and plot alike. The method's
    greedy cell is width 1 of every ranking (greedy is beam search of width 1, whatever the ranking) unless
    a beam-1 cell of that ranking exists. Only (dataset, model) pairs are not told apart: pass one's cells."""
    points: dict[tuple[str, str], dict[int, Cell]] = {}
    for cell in cells:
        if cell.decoder == "beam" and "num_beams" in cell.decoder_config:
            points.setdefault((cell.algorithm, beam_ranking(cell.decoder_config)), {})[
                int(cell.decoder_config["num_beams"])] = cell
    for cell in cells:
        if cell.decoder == "greedy":
            for (method, _), widths in points.items():
                if method == cell.algorithm:
                    widths.setdefault(1, cell)
    return points


def paired_means(cell: Cell, reference: Cell) -> tuple[float | None, float | None]:
    """The two cells' accuracies on the seeds and problems both scored (`greedy_reference` on cells)."""
    return greedy_reference({run.result.seed: run for run in cell.runs},
                            {run.result.seed: run for run in reference.runs})


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
