"""The report's text: report.md and report.csv (one row per method x decoder, from the cells), the
per-job table comparison.md / comparison.csv, the beam-width table and the best-of-N-by-N table."""
from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

from framework.report.aggregate import (
    BASELINE, UNDERTRAINED_MIN_STEPS, Cell, aggregate, beam_widths, compute_spent, decoder_footnote, greedy_jobs,
    job_greedy_reference, lift_percent, mean_or_none, method_rank, paired_comparison, paired_means,
    short_decoder_labels,
)
from framework.report.checks import run_checks
from framework.report.fidelity import fidelity_lines, premises_lines
from framework.report.plots import write_plots
from framework.report.statistics import (
    BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, SIGNIFICANCE_LEVEL, Comparison, minimum_detectable_difference,
    paired_scores_comparison,
)
from framework.report.sweep import Run
from framework.report.validation import best_on_validation_lines

# report.md's columns, report.csv's, and the per-job table's (comparison.md, comparison.csv)
REPORT_COLUMNS = ("method", "decoder", "seeds", "accuracy % [95% CI]", "lift vs greedy %", "pass@N %",
                  f"Δ vs {BASELINE}, points [95% CI]", "p (Holm)", "Δ vs control, points [95% CI]", "p (Holm) ",
                  "steps", "examples", "epochs", "loss first → last", "undertrained",
                  "train tokens", "sampled tokens", "eval tokens", "train s", "decode s")
CSV_COLUMNS = ("dataset", "model", "method", "decoder", "seeds", "num_problems", "accuracy", "ci_low", "ci_high",
               "interval", "lift_over_greedy_pct", "pass_n", "pass_at_n", "delta_vs_baseline", "delta_ci_low",
               "delta_ci_high", "p_value", "p_holm", "significant", "delta_vs_control", "control_ci_low",
               "control_ci_high", "control_p_value", "control_p_holm", "control_significant", "steps", "examples", "epochs", "first_loss", "last_loss", "undertrained",
               "train_tokens",
               "sampling_generated_tokens", "eval_generated_tokens", "train_seconds", "decode_seconds", "wall_seconds")
COLUMNS = ("algorithm", "decoder", "seed", "accuracy", "95% CI", "flexible", "pass@k", "lift vs greedy %",
           "mean tokens", "eval tokens", "train s", "decode s")


def _count(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _p(value: float | None) -> str:
    return "—" if value is None else ("<0.001" if value < 0.001 else f"{value:.3f}")


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.1f}"


def _delta(comparison: Comparison | None) -> list[str]:
    """The Δ cell and the p cell of a comparison."""
    if comparison is None:
        return ["—", "—"]
    return [f"{100 * comparison.difference:+.1f} [{100 * comparison.low:+.1f}, {100 * comparison.high:+.1f}]"
            + (" *" if comparison.significant else ""), f"{_p(comparison.p_value)} ({_p(comparison.p_holm)})"]


def _budget(cell: Cell) -> list[str]:
    """The method's own training stage: optimizer steps, examples (sequences, pairs or prompts) seen, epochs, the
    first and last logged training loss, and why it did not train, if it did not (aggregate.undertrained_reasons)."""
    budget = cell.budget
    if budget is None:
        return ["—", "—", "—", "—", ""]
    loss = "—" if budget.get("first_loss") is None else f"{budget['first_loss']:.3g} → {budget['last_loss']:.3g}"
    epochs = "—" if budget.get("epochs") is None else f"{budget['epochs']:.2g}"
    return [_count(budget.get("steps")), _count(budget.get("examples")), epochs, loss,
            ("**yes**: " + "; ".join(cell.undertrained)) if cell.undertrained else "no"]


# ---------------------------------------------------------------------------- report.md, report.csv
def report_rows(cells: list[Cell]) -> list[list[str]]:
    rows = []
    for cell in cells:
        rows.append([
            cell.algorithm, cell.decoder_short, str(len(cell.runs)),
            f"{100 * cell.accuracy:.1f} [{_percent(cell.ci_low)}, {_percent(cell.ci_high)}]",
            _signed(cell.lift), "—" if cell.pass_n is None else f"{100 * cell.pass_n[1]:.1f} (N={cell.pass_n[0]})",
            *_delta(cell.comparison), *_delta(cell.control_comparison), *_budget(cell),
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
            *((cell.budget or {}).get(key, "") for key in ("steps", "examples", "epochs", "first_loss", "last_loss")),
            "; ".join(cell.undertrained),
            *(cell.compute.get(key) for key in ("train_tokens", "sampling_generated_tokens", "eval_generated_tokens",
                                                  "train_seconds", "decode_seconds", "wall_seconds")),
        ])
    return buffer.getvalue()


def _markdown_table(header, rows) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _minimum_detectable_lines(cells: list[Cell]) -> list[str]:
    by_decoder: dict[str, list[float]] = {}
    for cell in cells:
        if cell.comparison is not None:
            by_decoder.setdefault(cell.decoder_short, []).append(minimum_detectable_difference(cell.comparison))
    if not by_decoder:
        return []
    parts = [f"{label} {100 * sorted(v)[len(v) // 2]:.1f} points ({len(v)} comparisons, "
             f"{100 * min(v):.1f}-{100 * max(v):.1f})" for label, v in by_decoder.items()]
    return ["Minimum detectable difference vs the baseline (80% power, two-sided 5%, unadjusted; median over "
            "methods, from each paired interval's standard error): " + "; ".join(parts) + ".", ""]


def environment_lines(runs: list[Run]) -> list[str]:
    """Where the numbers come from: the library versions and the machine of the jobs (results.json), which a
    reader needs to reproduce them (docs/reproducibility.md). Several environments in one sweep are each listed,
    with how many jobs ran in it."""
    def describe(run: Run) -> str:
        versions, hardware = run.result.versions or {}, run.result.hardware or {}
        libraries = ", ".join(f"{name} {version}" for name, version in versions.items()
                              if name not in ("framework", "python") and version)
        machine = hardware.get("gpu") or hardware.get("cpu") or hardware.get("platform") or "an unrecorded machine"
        threads = f", {hardware['torch_threads']} torch threads" if hardware.get("torch_threads") else ""
        return (f"framework {versions.get('framework', '?')}, Python {versions.get('python', '?')}, {libraries}; "
                f"{machine} ({hardware.get('cpu_count', '?')} CPUs{threads}, {hardware.get('device', '?')}, "
                f"{hardware.get('precision', '?')})")

    counts: dict[str, int] = {}
    for run in runs:
        described = describe(run)
        counts[described] = counts.get(described, 0) + 1
    if len(counts) == 1:
        return [f"Measured with {next(iter(counts))}."]
    return ["Measured in several environments (numbers may differ across them: docs/reproducibility.md):", "",
            *[f"- {jobs} job(s): {described}" for described, jobs in counts.items()]]


def report_markdown(cells: list[Cell], title: str, missing: list[str], checks: list[str],
                    plots: list[tuple[str, str | None]] | None, baseline: str = BASELINE,
                    resamples: int = BOOTSTRAP_RESAMPLES, environment: list[str] | None = None,
                    sections: list[str] = ()) -> str:
    """`environment`: where the numbers come from (environment_lines); `sections`: Markdown lines placed before
    the notes (the best-on-validation checkpoints, say)."""
    lines = [f"# Comparison report: {title}", ""]
    if environment:
        lines += [*environment, ""]
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
        if footnote := decoder_footnote(group):
            lines += [footnote, ""]
        lines += _minimum_detectable_lines(group)
        if premises := premises_lines(group):
            lines += ["### Premises: is the starting model in the regime the papers assume?", "", *premises, "",
                      "Measured from the jobs' generations and the `premises` records the launcher writes after a "
                      "method trains (framework/premises.py; gold answers are used there and here only).", ""]
        if claims := fidelity_lines(group, lambda a, b: paired_comparison(a, b, resamples),
                                    lambda a, b: paired_scores_comparison(a, b, resamples)):
            lines += ["### Fidelity: do the seed papers' claims hold here?", "", *claims, "",
                      "Verdict from the paired 95% interval (over problems and seeds, as the Δ columns; not "
                      "adjusted for multiplicity): held when it lies on the claimed side of 0, not held when on the "
                      "other side, not resolved when it contains 0.", ""]
    notes = [
        "Accuracy: mean over seeds and problems of each problem's share of correct chosen outputs (one "
        "output for greedy, beam and best-of-N; every sample for `sample`). 95% CI over both problems and "
        "seeds (crossed random-effects variance, normal interval; one seed: Wilson over problems).",
        "Lift vs greedy: 100 x (accuracy - greedy accuracy) / greedy accuracy of the same method on the "
        "seeds and problems both rows have (beam width 1 is greedy; best-of-N without either: its own greedy "
        "pass); comparison.md, --by-n and --by-width read the same reference.",
        "pass@N: share of problems with at least one correct of N samples (unbiased estimator), mean over seeds.",
        f"Δ vs {baseline}: accuracy difference in points to `{baseline}` with the same decoder, on the seeds and "
        f"problems both have, paired by seed and problem; with several seeds the 95% interval counts both which "
        f"problems were drawn and how much the difference moves from seed to seed (crossed random effects, "
        f"Student's t with Satterthwaite's degrees of freedom: 3 seeds give few, so intervals are wide), p its "
        f"t test; with one seed a paired bootstrap over problems ({resamples:,} resamples, seed {BOOTSTRAP_SEED}) "
        f"and its two-sided p-value for no difference; "
        f"in brackets Holm-adjusted over all "
        f"{sum((c.comparison is not None) + (c.control_comparison is not None) for c in cells)} comparisons "
        f"(both Δ columns); * marks Holm-adjusted p < {SIGNIFICANCE_LEVEL}.",
        "`<method> control`: SFT on the gold demonstrations from the model the method's last training stage "
        "started from, with the method's optimizer steps, batch, learning rate and schedule "
        "(evaluation.control_decoders). Δ vs control: the method against its own control, computed like Δ vs "
        f"{baseline}; it separates what the method's data does from what more optimizer steps do.",
        "steps, examples, epochs, loss first → last: the method's own (last) training stage, mean over seeds: "
        "optimizer steps, sequences (pairs for DPO, prompts for XPO) seen, epochs over its own data, and the first "
        "and last logged training loss. undertrained: **yes** when a seed's stage made fewer than "
        f"{UNDERTRAINED_MIN_STEPS} optimizer steps, spent the whole run in warmup, or ended with a DPO-style loss "
        "within 1% of ln 2 (where it starts): its row measures the budget, not the method.",
        "Compute, mean per job: train tokens, sampled tokens and train s are summed over every training stage "
        "the model depends on (cached stages included) when results.json records them (train s falls back to "
        "the job's own training time); eval tokens are the tokens generated on the test set, every sample of "
        "best-of-N and sampling, and num_beams x the kept output for beam search (a lower bound: the discarded "
        "beams' lengths are not recorded). comparison.md's train s and eval tokens are the same per job.",
    ]
    fallback = [c for c in cells if c.interval.startswith("per-seed")]
    if fallback:
        notes.append("Rows " + ", ".join(f"{c.algorithm}/{c.decoder_label}" for c in fallback) + " have no "
                     "per-problem scores: their interval combines each seed's own interval with the spread over "
                     "seeds (conservative), and they have no Δ.")
    lines += [*sections, "### Notes", ""] + [f"- {note}" for note in notes] + [""]
    if plots is not None:
        lines += ["### Plots", ""] + [f"- ![{name}]({name})" if reason is None else f"- {name}: not drawn ({reason})"
                                      for name, reason in plots] + [""]
    lines += ["### Checks", ""] + [f"- {line}" for line in checks]
    return "\n".join(lines)


def write_report(runs: list[Run], out_dir: Path, title: str, missing: list[str], baseline: str = BASELINE,
                 resamples: int = BOOTSTRAP_RESAMPLES, plots: bool = True) -> str:
    """Write report.md, report.csv and the plots into `out_dir`; return the Markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cells = aggregate(runs, baseline, resamples)
    checks = run_checks(runs)
    for line in checks[1:]:
        print(line, file=sys.stderr)
    drawn = None
    if plots:
        drawn = write_plots(cells, out_dir)
        for name, reason in drawn:
            if reason is not None:
                print(f"plot {name} skipped: {reason}", file=sys.stderr)
    text = report_markdown(cells, title, missing, checks, drawn, baseline, resamples, environment_lines(runs),
                           sections=best_on_validation_lines(runs))
    (out_dir / "report.md").write_text(text + "\n", encoding="utf-8")
    (out_dir / "report.csv").write_text(report_csv(cells), encoding="utf-8")
    return text


# ---------------------------------------------------------------------------- per-job table (comparison.md)
def job_table_rows(runs: list[Run], short_labels: bool = False) -> list[list[str]]:
    """One row per job. Lift, train s and eval tokens are read as report.md reads them (`job_greedy_reference`,
    `compute_spent`), so a job's row and its cell agree. `short_labels`: the decoder as tables show it (the
    Markdown); else the full label (the CSV)."""
    greedy = greedy_jobs(runs)
    shorts = short_decoder_labels((r.result.decoder, r.result.decoder_label, r.result.decoder_config) for r in runs)
    rows = []
    for run in runs:
        result, metrics = run.result, run.result.metrics
        pass_keys = sorted((key for key in metrics if key.startswith("pass@")), key=lambda k: int(k[5:]))
        spent = compute_spent(result)
        rows.append([
            run.method_label, shorts[result.decoder_label] if short_labels else result.decoder_label, str(result.seed),
            f"{100 * metrics['accuracy']:.1f}",
            f"[{100 * metrics['accuracy_ci_low']:.1f}, {100 * metrics['accuracy_ci_high']:.1f}]",
            f"{100 * metrics['accuracy_flexible']:.1f}",
            f"{pass_keys[-1]}={100 * metrics[pass_keys[-1]]:.1f}" if pass_keys else "",
            _signed(lift_percent(*job_greedy_reference(run, greedy))),
            f"{metrics['mean_tokens']:.1f}", _count(spent["eval_generated_tokens"]), _count(spent["train_seconds"]),
            f"{metrics['decode_seconds']:.1f}",
        ])
    return rows


def per_dataset(runs: list[Run]) -> list[tuple[tuple[str, str], list[Run]]]:
    """The runs by (dataset, model), the jobs' training datasets first: several pairs when the jobs scored their
    models on evaluation.datasets too (sweep.with_evaluations), each a table of its own in every view."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.result.dataset, run.result.model), []).append(run)
    return sorted(groups.items(), key=lambda item: (all(run.evaluation for run in item[1]), item[0]))


def _each_dataset(runs: list[Run], render) -> str:
    """`render(runs)` as it always was for one (dataset, model) pair; for several, one under each pair's heading."""
    groups = per_dataset(runs)
    if len(groups) <= 1:
        return render(runs)
    return "\n\n".join(f"### `{dataset}` with model `{model}`\n\n{render(group)}" for (dataset, model), group in groups)


def job_table_markdown(runs: list[Run], missing: list[str]) -> str:
    """comparison.md: one row per job (a table per dataset when the jobs scored several), with the jobs that left
    no results."""
    text = _each_dataset(runs, _job_table_markdown) if runs else _job_table_markdown(runs)
    if missing:
        text += f"\n\nJobs without results (failed or interrupted): {', '.join(missing)}"
    return text


def _job_table_markdown(runs: list[Run]) -> str:
    rows = job_table_rows(runs, short_labels=True)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    if runs:
        first = runs[0].result
        problems = "/".join(map(str, sorted({int(r.result.metrics["num_problems"]) for r in runs})))
        lines.append(f"\nAccuracy in % on {problems} test problems of `{first.dataset}` "
                     f"(model `{first.model}`); 95% interval over problems (Wilson; normal approximation for "
                     f"decoders scoring several samples per problem). Lift vs greedy: over the same method's "
                     f"greedy job of the same seed, on the problems both scored; train s: every training stage "
                     f"the model rests on, cached or not; eval tokens: beam search counts num_beams x its output "
                     f"(as report.md; docs/report.md).")
        shorts = short_decoder_labels((r.result.decoder, r.result.decoder_label, r.result.decoder_config)
                                      for r in runs)
        renamed = {short: full for full, short in shorts.items() if short != full}
        if renamed:
            lines.append("Decoders: " + "; ".join(f"`{short}` is `{full}`" for short, full in renamed.items()) + ".")
    return "\n".join(lines)


def write_job_table(runs: list[Run], missing: list[str], out_dir: Path) -> str:
    """Write comparison.md and comparison.csv (one row per job) into `out_dir`; return the Markdown."""
    text = job_table_markdown(runs, missing)
    (out_dir / "comparison.md").write_text(text + "\n")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    several = len(per_dataset(runs)) > 1  # jobs scored on evaluation.datasets: a dataset column tells rows apart
    writer.writerow([*COLUMNS, "dataset"] if several else COLUMNS)
    rows = job_table_rows(runs)  # the full decoder labels
    writer.writerows([[*row, run.result.dataset] for row, run in zip(rows, runs)] if several else rows)
    (out_dir / "comparison.csv").write_text(buffer.getvalue())
    return text


# ---------------------------------------------------------------------------- the papers' views
def width_table(runs: list[Run]) -> str:
    """Accuracy by beam width per method and beam ranking (SOC paper's view), pooled over seeds: one table per
    dataset (`_width_table`)."""
    return _each_dataset(runs, _width_table)


def _width_table(runs: list[Run]) -> str:
    """Accuracy by beam width per method and beam ranking (SOC paper's view), pooled over seeds.

    Each cell is the report's accuracy with its interval over seeds and problems (`seed_problem_interval`).
    Width 1 is the method's greedy job where the sweep has no beam-1 job (greedy is beam search of width 1),
    as in the width plot (`aggregate.beam_widths`). Beam regret is the accuracy at width k minus the
    accuracy at width 1 (else the smallest width), in points, on the seeds and problems both scored.
    Over-optimism: the share of outputs that are wrong yet more likely under the model than the gold
    demonstration (mean over seeds). Rows differ by `length_penalty` (transformers ranks running beams by
    summed log-prob either way; the penalty decides among finished ones).
    """
    if not any(r.result.decoder == "beam" and r.result.decoder_config is not None for r in runs):
        return "No beam-search runs in this directory."
    cells = aggregate(runs, compare=False)
    points = {key: widths for dataset_model in dict.fromkeys((c.dataset, c.model) for c in cells)
              for key, widths in beam_widths([c for c in cells if (c.dataset, c.model) == dataset_model]).items()}
    widths = sorted({w for by_width in points.values() for w in by_width})
    rows = sorted(points, key=lambda r: (method_rank(r[0]), r[1]))
    header = "| method | beam ranking | " + " | ".join(f"width {w}" + (" (greedy)" if w == 1 else "")
                                                       for w in widths) + " |"
    rule = "|---|---|" + "---|" * len(widths)
    lines = ["Accuracy (%) by beam width, mean [95% CI] over seeds and problems", "", header, rule]
    for key in rows:
        row = [f"{100 * c.accuracy:.1f} [{_percent(c.ci_low)}, {_percent(c.ci_high)}]" if (c := points[key].get(w))
               else "" for w in widths]
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(row) + " |")
    lines += ["", f"Beam regret (points vs width {widths[0]}) and over-optimism rate (%)", "", header, rule]
    for key in rows:
        by_width = points[key]
        first = by_width[min(by_width)]
        row = []
        for w in widths:
            cell = by_width.get(w)
            optimism = mean_or_none(run.result.metrics.get("over_optimism_rate") for run in cell.runs) if cell else None
            ours, reference = paired_means(cell, first) if cell is not None else (None, None)
            regret = "—" if ours is None or reference is None else f"{100 * (ours - reference):+.1f}"
            row.append("" if cell is None else f"{regret} / {_percent(optimism)}")
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(row) + " |")
    counts = sorted({len(cell.runs) for by_width in points.values() for cell in by_width.values()})
    lines.append(f"\nSeeds per cell: {', '.join(map(str, counts))}. Width 1 is greedy decoding where no beam-1 job "
                 "ran. The SOC paper's argument is about beam search ranked by accumulated (summed) log-probability: "
                 "the `sum log-prob` rows.")
    return "\n".join(lines)


def bon_curve_table(runs: list[Run]) -> str:
    """Best-of-N accuracy against N' (`_bon_curve_table`), one table per dataset."""
    return _each_dataset(runs, _bon_curve_table)


def _bon_curve_table(runs: list[Run]) -> str:
    """Best-of-N accuracy against N' per (method, selector, seed), from each job's subsampled curve
    (the sharpening paper's view): accuracy %, its lift over the same method's greedy accuracy, and
    pass@N' (coverage: any of N' samples correct). The greedy accuracy is the one report.md's lift uses
    (`aggregate.job_greedy_reference`): the greedy job of the same method and seed on the problems the
    best-of-N job scored, else the job's own greedy pass."""
    curves = [r for r in runs if "bon_accuracy_by_n" in r.result.metrics]
    if not curves:
        return "No best-of-N runs in this directory."
    greedy_of = greedy_jobs(runs)
    sizes = sorted({int(n) for r in curves for n in r.result.metrics["bon_accuracy_by_n"]})
    header = "| method | selector | seed | greedy | " + " | ".join(f"N={n}" for n in sizes) + " |"
    rule = "|---|---|---|---|" + "---|" * len(sizes)
    lines = ["Best-of-N accuracy % (lift over greedy %) by N", "", header, rule]
    coverage = ["", "Coverage: pass@N %", "", header, rule]
    by_row = sorted(curves, key=lambda r: (method_rank(r.method_label), r.result.decoder_config.get("selector", ""),
                                           r.result.seed))
    for run in by_row:
        metrics, selector = run.result.metrics, run.result.decoder_config.get("selector", "")
        _, greedy = job_greedy_reference(run, greedy_of)
        prefix = f"| {run.method_label} | {selector} | {run.result.seed} | {_percent(greedy)} | "
        curve = metrics["bon_accuracy_by_n"]
        cells = [f"{100 * curve[str(n)]:.1f} ({_signed(lift_percent(curve[str(n)], greedy))})"
                 if str(n) in curve else "" for n in sizes]
        lines.append(prefix + " | ".join(cells) + " |")
        covered = [f"{100 * metrics[f'pass@{n}']:.1f}" if f"pass@{n}" in metrics else "" for n in sizes]
        coverage.append(prefix + " | ".join(covered) + " |")
    return "\n".join(lines + coverage)
