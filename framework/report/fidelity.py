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
RFT_DISTINCT_MIN = 2.0  # distinct correct rationales per question, on average
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
    # each row of a sharpening method: `bon_sft(prompt_pool=heldout)` and `bon_sft(prompt_pool=test)` sample
    # different prompts, so each has its own premises (a control trains on demonstrations and has none)
    sharpening_rows = dict.fromkeys(cell.algorithm for cell in cells if cell.runs
                                    and cell.runs[0].result.algorithm in ("bon_sft", "dpo")
                                    and not any(run.result.control_of for run in cell.runs))
    for method in sharpening_rows:
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
    for method in ("rft", "outcome_dpo", "self_explore"):  # one rationale set for the family: its first method's
        values = _method_premises(cells, method)
        if "distinct_correct_per_question" in values:
            distinct = values["distinct_correct_per_question"]
            rows.append([f"{method}: distinct correct rationales per question in the rationale set "
                         f"({values['rationale_questions'][min(values['rationale_questions'])]:.0f} questions)",
                         _seed_mean(distinct), f">= {RFT_DISTINCT_MIN} (RFT learns from several ways to solve)",
                         "yes" if min(distinct.values()) >= RFT_DISTINCT_MIN else "no"])
            share = values["questions_with_a_correct_share"]
            rows.append([f"{method}: share of questions with at least one correct rationale", _seed_mean(share),
                         "", ""])
            break
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


def _method_cells(cells, name: str, decoder: str, **algorithm_keys) -> list:
    """Cells of algorithm `name` (any row label: `bon_sft(prompt_pool=test)` too, controls excluded) under
    `decoder`, whose jobs ran with `algorithm_keys`."""
    found = []
    for cell in cells:
        result = cell.runs[0].result
        config = result.algorithm_config or {}
        if result.algorithm == name and not result.control_of and cell.decoder == decoder and all(
                config.get(key) == value for key, value in algorithm_keys.items()):
            found.append(cell)
    return found


def _plain_cell(cells, name: str, decoder: str):
    """The cell of the method's plain row (its label is its name): `soc` under `decoder`, say."""
    return next((cell for cell in cells if cell.algorithm == name and cell.decoder == decoder), None)


def _ranking(config: dict) -> str:
    """How beam search ranks its hypotheses: by summed log-prob (length_penalty 0, the SOC paper's reading of
    beam search) or by log-prob per token^penalty."""
    penalty = float(config.get("length_penalty", 1.0))
    return "summed log-prob" if penalty == 0 else "mean log-prob" if penalty == 1 else f"sum / length^{penalty:g}"


def _lift_interval(comparison, reference: float | None) -> str:
    """A difference in points and its interval as % lift over `reference` (the sharpening paper's metric); the
    reference is held fixed (its own sampling error is not in the interval)."""
    if comparison is None or not reference:
        return _interval(comparison)
    scale = 100.0 / reference
    return (f"{scale * comparison.difference:+.1f}% [{scale * comparison.low:+.1f}, {scale * comparison.high:+.1f}] "
            f"({_interval(comparison)} points)")


def _curve_scores(bon_cell, size: int) -> dict[int, dict[int, float]]:
    """Seed -> problem -> the exact expected correctness of best-of-`size` by log-prob over random `size`-subsets
    of the job's samples (the sharpening paper's subsampled curve), per problem so that gains get intervals."""
    from framework.bon import expected_accuracy_of_argmax

    scores = {}
    for run in bon_cell.runs:
        per_problem = {}
        for problem, rows in _by_problem(run.generations()).items():
            rows = sorted(rows, key=lambda r: r["candidate"])
            if size > len(rows) or any("logprob" not in row for row in rows):
                return {}
            per_problem[problem] = expected_accuracy_of_argmax([float(r["logprob"]) for r in rows],
                                                               [bool(r["correct"]) for r in rows], size)
        scores[run.result.seed] = per_problem
    return scores


def _difference(first: dict, second: dict) -> dict:
    """Seed -> problem -> first - second, on the seeds and problems both have."""
    return {seed: {p: first[seed][p] - second[seed][p] for p in first[seed] if p in second.get(seed, {})}
            for seed in first if seed in second}


def _sample_scores(cell) -> dict[int, dict[int, float]]:
    """Seed -> problem -> the share of a sampling decoder's samples that are correct: one sample's expected
    accuracy at the decoder's temperature (every candidate of a best-of-N job is such a sample)."""
    return {run.result.seed: {p: sum(r["correct"] for r in rows) / len(rows)
                              for p, rows in _by_problem(run.generations()).items()} for run in cell.runs}


def _greedy_accuracy(cell) -> float | None:
    return cell.accuracy if cell is not None else None


def fidelity_lines(cells, compare: Callable, compare_scores: Callable) -> list[str]:
    """Each seed paper's claims, in the form the paper makes them, measured on this sweep: held / not held / not
    resolved. `compare(cell, reference)`: the report's paired comparison of two cells; `compare_scores(ours,
    theirs)`: the same on two seed -> problem -> score maps (common seeds and problems, paired bootstrap).

    - SOC (Zhang et al. 2025): SOC >= SFT at every beam width the sweep has (1 = greedy), under each ranking (the
      paper's reading of beam search ranks by summed log-prob), each width its own row and a summary row; and
      "beam search on SFT can fall below greedy": held when some width falls significantly below.
    - Sharpening (Huang et al. 2025), as % lift over greedy: inference-time best-of-N by log-prob on the SFT model;
      saturation (the last doubling of N gains less than the first, with a paired interval); majority vote against
      log-prob; BoN-SFT in the paper's protocol (`prompt_pool=test`: it sharpens the prompts it is scored on,
      without their labels), greedy and sampled at T = 1, against its starting model's greedy, and below
      inference-time best-of-N.
    - Self-Explore (Hwang et al. 2024): the chain self_explore > outcome DPO > RFT > SFT, and self_explore > SFT."""
    rows = []

    def claim(paper: str, text: str, comparison, side: int, shown: str | None = None) -> str:
        verdict = "no data" if comparison is None else _verdict(comparison.low, comparison.high, side)
        rows.append([paper, text, shown or _interval(comparison), verdict])
        return verdict

    # ---- SOC: every width, each ranking; width 1 is greedy (the same for both rankings: one row)
    greedy = _plain_cell(cells, "sft", "greedy")
    soc_greedy = _plain_cell(cells, "soc", "greedy")
    sft_beams = [c for c in cells if c.algorithm == "sft" and c.decoder == "beam"]
    width_one = None
    if greedy is not None and soc_greedy is not None:
        width_one = claim("SOC", "SOC >= SFT, width 1 (greedy)", compare(soc_greedy, greedy), +1)
    for ranking in sorted({_ranking(c.decoder_config) for c in sft_beams}):
        verdicts = [width_one] if width_one is not None else []
        widths = sorted((c for c in sft_beams if _ranking(c.decoder_config) == ranking),
                        key=lambda c: c.decoder_config.get("num_beams", 0))
        for sft_beam in widths:
            # the SOC job decoded with exactly this decoder (width and length penalty): one label, one pair
            soc = next((c for c in cells if c.algorithm == "soc" and c.decoder_label == sft_beam.decoder_label), None)
            verdicts.append(claim("SOC", f"SOC >= SFT, beam width {sft_beam.decoder_config.get('num_beams')}, "
                                  f"{ranking}", compare(soc, sft_beam) if soc is not None else None, +1))
        if len(verdicts) > 1:
            summary = ("not held" if "not held" in verdicts else "held" if all(v == "held" for v in verdicts)
                       else "not resolved")
            rows.append(["SOC", f"SOC >= SFT at every width, {ranking}",
                         f"held at {verdicts.count('held')} of {len(verdicts)} widths, not held at "
                         f"{verdicts.count('not held')}", summary])
    if greedy is not None and sft_beams:
        below = []
        for sft_beam in sorted(sft_beams, key=lambda c: (_ranking(c.decoder_config),
                                                         c.decoder_config.get("num_beams", 0))):
            comparison = compare(sft_beam, greedy)
            if comparison is not None:
                below.append((comparison, sft_beam))
        if below:
            lowest, cell = min(below, key=lambda item: item[0].high)
            held = any(_verdict(c.low, c.high, -1) == "held" for c, _ in below)
            none_below = all(_verdict(c.low, c.high, -1) == "not held" for c, _ in below)
            rows.append(["SOC", "beam search on SFT falls below greedy at some width",
                         f"lowest upper bound: width {cell.decoder_config.get('num_beams')}, "
                         f"{_ranking(cell.decoder_config)}: {_interval(lowest)}",
                         "held" if held else "not held" if none_below else "not resolved"])
    # ---- sharpening: % lift over greedy
    bon = _plain_cell(cells, "sft", "bon")
    if bon is not None and greedy is not None:
        size = bon.decoder_config.get("samples_per_prompt")
        logprob = _selector_scores(bon, "logprob")
        lift = compare_scores(logprob, greedy.scores_by_seed())
        claim("sharpening", f"best-of-{size} by log-prob lifts over greedy (on SFT), % lift", lift, +1,
              _lift_interval(lift, _greedy_accuracy(greedy)))
        if size and size >= 4:
            first_gain = _difference(_curve_scores(bon, 2), _curve_scores(bon, 1))
            last_gain = _difference(_curve_scores(bon, size), _curve_scores(bon, size // 2))
            if first_gain and last_gain:
                claim("sharpening", f"best-of-N by log-prob saturates: N {size // 2} -> {size} gains less than "
                      "N 1 -> 2 (points)", compare_scores(last_gain, first_gain), -1)
        claim("sharpening", f"majority vote >= log-prob among the same {size} samples (on SFT)",
              compare_scores(_selector_scores(bon, "majority"), logprob), +1)
        for bon_sft in _method_cells(cells, "bon_sft", "greedy", prompt_pool="test"):
            comparison = compare_scores(bon_sft.scores_by_seed(), greedy.scores_by_seed())
            claim("sharpening", f"BoN-SFT, paper protocol ({bon_sft.algorithm}), greedy > its starting model's "
                  "greedy, % lift", comparison, +1, _lift_interval(comparison, _greedy_accuracy(greedy)))
            claim("sharpening", f"BoN-SFT, paper protocol, greedy < inference-time best-of-{size} (on SFT)",
                  compare_scores(bon_sft.scores_by_seed(), logprob), -1)
        for sampled in _method_cells(cells, "bon_sft", "bon", prompt_pool="test"):
            temperature = sampled.decoder_config.get("temperature")
            comparison = compare_scores(_sample_scores(sampled), greedy.scores_by_seed())
            claim("sharpening", f"BoN-SFT, paper protocol, one sample at T = {temperature} > its starting model's "
                  "greedy, % lift", comparison, +1, _lift_interval(comparison, _greedy_accuracy(greedy)))
    # ---- Self-Explore: its chain, and over SFT
    chain = [m for m in ("self_explore", "outcome_dpo", "rft", "sft") if _plain_cell(cells, m, "greedy") is not None]
    for better, worse in zip(chain, chain[1:]):
        claim("Self-Explore", f"{better} > {worse} (greedy)",
              compare(_plain_cell(cells, better, "greedy"), _plain_cell(cells, worse, "greedy")), +1)
    if chain[:1] == ["self_explore"] and "sft" in chain[2:]:
        claim("Self-Explore", "self_explore > sft (greedy)",
              compare(_plain_cell(cells, "self_explore", "greedy"), greedy), +1)
    if not rows:
        return []
    return ["| paper | claim | Δ, points [95% CI] | verdict |", "|---|---|---|---|",
            *("| " + " | ".join(row) + " |" for row in rows)]

