"""Two sections of the comparison report: whether the starting model is in the regime the papers assume
(premises) and whether each seed paper's qualitative claim holds in this sweep (fidelity).

Everything is computed from the sweep's artifacts: the jobs' generations.jsonl (gold answers are used here,
by the report, only) and the `premises` record the launcher writes after a method trains
(framework/premises.py). The report (render.py) passes in its cells and its paired comparison.

A claim's verdict reads its paired 95% interval: `held` when the interval lies on the claimed side of 0,
`not held` when it lies on the other side, `not resolved` when it contains 0.
"""
from __future__ import annotations

import re
from typing import Callable

from framework.bon import select
from framework.generation import Candidate

# the embedded starting model's premises (docs/embedded-task.md)
GREEDY_RANGE = (0.40, 0.75)
SAMPLE_OVER_GREEDY_MIN = 0.7
PASS_N_OVER_GREEDY_MIN = 0.15
# GRPO: groups whose rewards differ are the only ones with an advantage; this project's line is that most of each
# batch should carry one (no paper states a value)
GROUPS_DIFFER_MIN = 0.5
EQUATION = re.compile(r"(-?\d+(?:\.\d+)?)\s*([-+*/])\s*(-?\d+(?:\.\d+)?)\s*=\s*(-?\d+(?:\.\d+)?)")


def _by_problem(rows: list[dict]) -> dict[int, list[dict]]:
    problems: dict[int, list[dict]] = {}
    for row in rows:
        problems.setdefault(int(row["problem"]), []).append(row)
    return problems


def wrong_equation(text: str) -> bool:
    """Whether a solution states an arithmetic fact wrongly ("12 + 7 = 18"): an equation whose result is
    not its operands' (GSM8K-format lines)."""
    for left, operator, right, result in EQUATION.findall(text):
        a, b, c = float(left), float(right), float(result)
        true = a + b if operator == "+" else a - b if operator == "-" else a * b if operator == "*" else (
            a / b if b else None)
        if true is not None and abs(true - c) > 1e-6:
            return True
    return False


def _seed_mean(values: dict[int, float]) -> str:
    if not values:
        return "—"
    mean = sum(values.values()) / len(values)
    return f"{mean:.3g} (seeds: " + ", ".join(f"{values[s]:.3g}" for s in sorted(values)) + ")"


def _verdict(low: float, high: float, side: int) -> str:
    """`side` +1: the claim is difference > 0; -1: difference < 0."""
    if side * low > 0 and side * high > 0:
        return "held"
    if side * low < 0 and side * high < 0:
        return "not held"
    return "not resolved"


def _interval(comparison) -> str:
    return (f"{100 * comparison.difference:+.1f} [{100 * comparison.low:+.1f}, {100 * comparison.high:+.1f}]"
            if comparison is not None else "—")


def _cell(cells, algorithm: str, decoder: str, **config):
    for cell in cells:
        if cell.algorithm == algorithm and cell.decoder == decoder and all(
                cell.decoder_config.get(key) == value for key, value in config.items()):
            return cell
    return None


def _per_seed_sample_stats(bon_cell, problems: set[int] | None) -> tuple[dict, dict, int]:
    """Per seed: one sample's accuracy, pass@N and N, from a best-of-N job's candidates (all at the
    decoder's temperature), on `problems` (None: all)."""
    sample, pass_n, size = {}, {}, 0
    for run in bon_cell.runs:
        grouped = {p: rows for p, rows in _by_problem(run.generations()).items() if problems is None or p in problems}
        if not grouped:
            continue
        size = max(len(rows) for rows in grouped.values())
        seed = run.result.seed
        sample[seed] = sum(sum(r["correct"] for r in rows) / len(rows) for rows in grouped.values()) / len(grouped)
        pass_n[seed] = sum(any(r["correct"] for r in rows) for rows in grouped.values()) / len(grouped)
    return sample, pass_n, size


def _greedy_per_seed(greedy_cell, problems: set[int]) -> dict[int, float]:
    values = {}
    for seed, scores in (greedy_cell.scores_by_seed() or {}).items():
        common = [scores[p] for p in problems if p in scores]
        if common:
            values[seed] = sum(common) / len(common)
    return values


def _method_premises(cells, method: str) -> dict[str, dict[int, float]]:
    """key -> seed -> value from the `premises` records of a method's jobs (one model per seed)."""
    values: dict[str, dict[int, float]] = {}
    for cell in cells:
        if cell.algorithm != method:
            continue
        for run in cell.runs:
            for key, value in (run.result.premises or {}).items():
                values.setdefault(key, {})[run.result.seed] = value
    return values


def premises_lines(cells) -> list[str]:
    """The premises table of one (dataset, model) group, or [] when the sweep has nothing to measure."""
    rows = []
    greedy, bon = _cell(cells, "sft", "greedy"), _cell(cells, "sft", "bon")
    if greedy is not None:
        accuracy = {run.result.seed: run.result.metrics["accuracy"] for run in greedy.runs}
        mean = sum(accuracy.values()) / len(accuracy)
        rows.append(["SFT greedy accuracy", _seed_mean(accuracy), f"in [{GREEDY_RANGE[0]:.2f}, {GREEDY_RANGE[1]:.2f}]",
                     "yes" if GREEDY_RANGE[0] <= mean <= GREEDY_RANGE[1] else "no"])
        wrong = [r for run in greedy.runs for r in run.generations() if r.get("chosen") and not r["correct"]]
        if wrong:
            share = sum(wrong_equation(r.get("generation", "")) for r in wrong) / len(wrong)
            rows.append(["SFT greedy errors that state an arithmetic fact wrongly", f"{share:.3g} of {len(wrong)}",
                         "< 0.5 (errors in the plan, which methods can fix)", "yes" if share < 0.5 else "no"])
    if greedy is not None and bon is not None:
        scored = set.intersection(*(set(s) for s in (bon.scores_by_seed() or {0: {}}).values()))
        sample, pass_n, size = _per_seed_sample_stats(bon, scored)
        reference = _greedy_per_seed(greedy, scored)
        seeds = sorted(set(sample) & set(reference))
        if seeds:
            ratio = {s: sample[s] / reference[s] if reference[s] else float("nan") for s in seeds}
            gap = {s: pass_n[s] - reference[s] for s in seeds}
            temperature = bon.decoder_config.get("temperature")
            rows.append([f"SFT one sample at T = {temperature} / greedy ({len(scored)} problems)", _seed_mean(ratio),
                         f">= {SAMPLE_OVER_GREEDY_MIN}", "yes" if min(ratio.values()) >= SAMPLE_OVER_GREEDY_MIN else "no"])
            rows.append([f"SFT pass@{size} - greedy, points", _seed_mean({s: 100 * g for s, g in gap.items()}),
                         f">= {100 * PASS_N_OVER_GREEDY_MIN:.0f}",
                         "yes" if min(gap.values()) >= PASS_N_OVER_GREEDY_MIN else "no"])
    for method in ("bon_sft", "dpo"):
        values = _method_premises(cells, method)
        if "greedy_accuracy" not in values:
            continue
        reference = values["greedy_accuracy"]
        rows.append([f"{method}: greedy accuracy of its starting model on the {values['prompts'][min(values['prompts'])]:.0f} "
                     "sampled prompts", _seed_mean(reference), "", ""])
        for selector in ("logprob", "length_norm", "majority"):
            picked = values.get(f"best_of_n_{selector}", {})
            lift = {s: picked[s] - reference[s] for s in picked if s in reference}
            rows.append([f"{method}: best-of-{values['samples_per_prompt'][min(values['samples_per_prompt'])]:.0f} by "
                         f"{selector} - greedy, points", _seed_mean({s: 100 * v for s, v in lift.items()}),
                         "> 0 (the self-reward sharpens)", "yes" if lift and min(lift.values()) > 0 else "no"])
        if "targets_right_share" in values:
            right = values["targets_right_share"]
            rows.append([f"{method}: share of its SFT targets that are right", _seed_mean(right),
                         "> its starting model's greedy accuracy",
                         "yes" if all(right[s] > reference.get(s, 1) for s in right) else "no"])
        if "pairs_right_vs_wrong_share" in values:
            good, bad = values["pairs_right_vs_wrong_share"], values["pairs_wrong_vs_right_share"]
            rows.append([f"{method}: pairs preferring right over wrong", _seed_mean(good), "> the reverse",
                         "yes" if all(good[s] > bad.get(s, 1) for s in good) else "no"])
            rows.append([f"{method}: pairs preferring wrong over right", _seed_mean(bad), "", ""])
    pits = _method_premises(cells, "self_explore")
    if "pits" in pits:
        for where in ("at", "before", "after"):
            rows.append([f"self_explore: pits {where} the first wrong step",
                         _seed_mean(pits[f"pit_{where}_first_wrong_step_share"]),
                         "most at" if where == "at" else "", ""])
        at = pits["pit_at_first_wrong_step_share"]
        rows[-3][3] = "yes" if min(at.values()) > 0.5 else "no"
    groups = _method_premises(cells, "grpo")
    if "groups_rewards_differ_share" in groups:
        differ = groups["groups_rewards_differ_share"]
        rows.append(["grpo: groups whose rewards differ (the others give no gradient)", _seed_mean(differ),
                     f">= {GROUPS_DIFFER_MIN}", "yes" if min(differ.values()) >= GROUPS_DIFFER_MIN else "no"])
        share = lambda key: _seed_mean(groups[key])  # noqa: E731
        rows.append(["grpo: the same, first / last tenth of training; groups all right / all wrong",
                     f"{share('groups_rewards_differ_share_first_tenth')} / "
                     f"{share('groups_rewards_differ_share_last_tenth')}; {share('groups_all_right_share')} / "
                     f"{share('groups_all_wrong_share')}", "", ""])
    if not rows:
        return []
    return ["| premise | measured: mean (per seed) | wanted | holds |", "|---|---|---|---|",
            *("| " + " | ".join(row) + " |" for row in rows)]


def _selector_scores(bon_cell, selector: str) -> dict[int, dict[int, float]]:
    """Seed -> problem -> whether `selector` picks a right candidate among the job's candidates."""
    scores = {}
    for run in bon_cell.runs:
        per_problem = {}
        for problem, rows in _by_problem(run.generations()).items():
            if any(key not in row for row in rows for key in ("generation", "num_tokens", "logprob", "extracted")):
                return {}  # generations written without what the selectors read
            rows = sorted(rows, key=lambda r: r["candidate"])
            candidates = [Candidate(r["generation"], int(r["num_tokens"]), float(r["logprob"]), bool(r["finished"]), [])
                          for r in rows]
            per_problem[problem] = float(rows[select(selector, candidates, [r["extracted"] for r in rows])]["correct"])
        scores[run.result.seed] = per_problem
    return scores


def fidelity_lines(cells, compare: Callable, compare_scores: Callable) -> list[str]:
    """Each seed paper's qualitative claim, measured on this sweep: held / not held / not resolved.
    `compare(cell, reference)`: the report's paired comparison of two cells; `compare_scores(ours, theirs)`:
    the same on two seed -> problem -> score maps (common seeds and problems, paired bootstrap)."""
    rows = []

    def claim(paper: str, text: str, comparison, side: int) -> None:
        verdict = "no data" if comparison is None else _verdict(comparison.low, comparison.high, side)
        rows.append([paper, text, _interval(comparison), verdict])

    beams = sorted((c for c in cells if c.algorithm == "sft" and c.decoder == "beam"),
                   key=lambda c: c.decoder_config.get("num_beams", 0))
    for sft_beam in beams:
        width = sft_beam.decoder_config.get("num_beams")
        soc = _cell(cells, "soc", "beam", num_beams=width)
        claim("SOC", f"SOC >= SFT under beam search, width {width}", compare(soc, sft_beam), +1)
    greedy = _cell(cells, "sft", "greedy")
    if greedy is not None:
        for sft_beam in beams:
            claim("SOC", f"beam search (width {sft_beam.decoder_config.get('num_beams')}) on SFT falls below greedy",
                  compare(sft_beam, greedy), -1)
    bon = _cell(cells, "sft", "bon")
    if bon is not None and greedy is not None:
        size = bon.decoder_config.get("samples_per_prompt")
        logprob = _selector_scores(bon, "logprob")
        claim("sharpening", f"best-of-{size} by log-prob lifts over greedy (on SFT)",
              compare_scores(logprob, greedy.scores_by_seed()), +1)
        curves = [run.result.metrics.get("bon_accuracy_by_n") for run in bon.runs]
        if curves and all(curves):
            sizes = sorted({int(n) for curve in curves for n in curve})
            mean = {n: sum(curve[str(n)] for curve in curves) / len(curves) for n in sizes}
            if len(sizes) >= 3:
                first, last = mean[sizes[1]] - mean[sizes[0]], mean[sizes[-1]] - mean[sizes[-2]]
                rows.append(["sharpening", f"best-of-N by {bon.decoder_config.get('selector')} saturates with N "
                             "(the last doubling gains less than the first)",
                             ", ".join(f"N={n}: {100 * mean[n]:.1f}" for n in sizes) + " (expected accuracy, no interval)",
                             "held" if last < first else "not held"])
        claim("sharpening", f"majority vote >= log-prob among the same {size} samples (on SFT)",
              compare_scores(_selector_scores(bon, "majority"), logprob), +1)
        bon_sft = _cell(cells, "bon_sft", "greedy")
        if bon_sft is not None:
            claim("sharpening", "BoN-SFT (greedy) > its starting model's greedy", compare(bon_sft, greedy), +1)
            claim("sharpening", f"BoN-SFT (greedy) < inference-time best-of-{size} (on SFT)",
                  compare_scores(bon_sft.scores_by_seed(), logprob), -1)
    chain = [m for m in ("self_explore", "outcome_dpo", "rft", "sft") if _cell(cells, m, "greedy") is not None]
    for better, worse in zip(chain, chain[1:]):
        claim("Self-Explore", f"{better} > {worse} (greedy)",
              compare(_cell(cells, better, "greedy"), _cell(cells, worse, "greedy")), +1)
    if not rows:
        return []
    return ["| paper | claim | Δ, points [95% CI] | verdict |", "|---|---|---|---|",
            *("| " + " | ".join(row) + " |" for row in rows)]
