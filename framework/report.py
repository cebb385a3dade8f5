"""Comparison table of a sweep: `python -m framework.report <sweep dir>` (also printed after every multirun).

Reads each job's results.json under the directory, and lists the jobs that left no results (failed
or killed) so a missing row is never silent. Writes comparison.md and comparison.csv beside them.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from hydra.experimental.callback import Callback

COLUMNS = ("algorithm", "decoder", "seed", "accuracy", "95% CI", "flexible", "pass@k", "lift vs greedy %",
           "mean tokens", "train s", "decode s")


def collect(sweep_dir: Path) -> tuple[list[dict], list[str]]:
    """(results records, names of job directories without results.json)."""
    results, missing = [], []
    job_dirs = sorted({path.parent for path in sweep_dir.rglob(".hydra")} | {p.parent for p in sweep_dir.rglob("results.json")})
    for job_dir in job_dirs:
        file = job_dir / "results.json"
        if file.is_file():
            record = json.loads(file.read_text())
            record["job_dir"] = str(job_dir)
            results.append(record)
        else:
            missing.append(str(job_dir.relative_to(sweep_dir)) if job_dir != sweep_dir else job_dir.name)
    results.sort(key=lambda r: (r["algorithm"], r["decoder_label"], r["seed"]))
    return results, missing


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


def _per_problem_correctness(job_dir: Path) -> dict[int, float]:
    """Problem index -> share of the job's chosen outputs that were correct."""
    totals: dict[int, list[int]] = {}
    with (Path(job_dir) / "generations.jsonl").open() as handle:
        for line in handle:
            record = json.loads(line)
            if record["chosen"]:
                totals.setdefault(record["problem"], []).append(int(record["correct"]))
    return {problem: sum(values) / len(values) for problem, values in totals.items()}


def width_table(results: list[dict]) -> str:
    """Accuracy by beam width per method (SOC paper's view), pooled over seeds.

    The interval is over problems, each scored by its mean correctness over seeds (normal
    approximation when seeds disagree on a problem, Wilson otherwise). Beam regret is the accuracy
    at width k minus the accuracy at width 1 (greedy), in points. Over-optimism: the share of
    outputs that are wrong yet more likely under the model than the gold demonstration.
    """
    from framework.evaluation import mean_interval

    beam_runs = [r for r in results if r["decoder"] == "beam" and "decoder_config" in r]
    widths = sorted({r["decoder_config"]["num_beams"] for r in beam_runs})
    methods = sorted({r["algorithm"] for r in beam_runs})
    if not beam_runs:
        return "No beam-search runs in this directory."
    cells, regret, optimism, seeds = {}, {}, {}, {}
    for method in methods:
        for width in widths:
            runs = [r for r in beam_runs if r["algorithm"] == method and r["decoder_config"]["num_beams"] == width]
            if not runs:
                continue
            per_seed = [_per_problem_correctness(Path(r["job_dir"])) for r in runs]
            problems = sorted(set.intersection(*(set(p) for p in per_seed)))
            pooled = [sum(p[i] for p in per_seed) / len(per_seed) for i in problems]
            cells[method, width] = mean_interval(pooled)
            seeds[method, width] = len(runs)
            rates = [r["metrics"].get("over_optimism_rate") for r in runs]
            optimism[method, width] = sum(rates) / len(rates) if None not in rates else None
        for width in widths:
            if (method, width) in cells and (method, widths[0]) in cells:
                regret[method, width] = 100 * (cells[method, width][0] - cells[method, widths[0]][0])
    header = "| method | " + " | ".join(f"width {w}" for w in widths) + " |"
    rule = "|---|" + "---|" * len(widths)
    lines = ["Accuracy (%) by beam width, mean [95% CI] over seeds and problems", "", header, rule]
    for method in methods:
        row = [f"{100 * cells[method, w][0]:.1f} [{100 * cells[method, w][1]:.1f}, {100 * cells[method, w][2]:.1f}]"
               if (method, w) in cells else "" for w in widths]
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    lines += ["", f"Beam regret (points vs width {widths[0]}) and over-optimism rate (%)", "", header, rule]
    for method in methods:
        row = [f"{regret[method, w]:+.1f} / {100 * optimism[method, w]:.1f}"
               if (method, w) in regret and optimism.get((method, w)) is not None else "" for w in widths]
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    counts = sorted(set(seeds.values()))
    lines.append(f"\nSeeds per cell: {', '.join(map(str, counts))}.")
    return "\n".join(lines)


def _signed(value: float | None) -> str:
    return "" if value is None else f"{value:+.1f}"


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


class ComparisonTableCallback(Callback):
    """Hydra callback: print and save the comparison table when a multirun ends."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            print("\n" + write(sweep_dir) + f"\n\n(saved to {sweep_dir}/comparison.md and comparison.csv)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun directory (or any directory of job outputs)")
    parser.add_argument("--by-width", action="store_true", help="accuracy by beam width per method (SOC sweep)")
    parser.add_argument("--by-n", action="store_true", help="best-of-N accuracy, lift and pass@N by N (sharpening)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"error: {args.sweep_dir} is not a directory", file=sys.stderr)
        return 2
    print(write(args.sweep_dir))
    if args.by_width:
        table = width_table(collect(args.sweep_dir)[0])
        (args.sweep_dir / "accuracy_by_width.md").write_text(table + "\n")
        print("\n" + table)
    if args.by_n:
        table = bon_curve_table(collect(args.sweep_dir)[0])
        (args.sweep_dir / "bon_by_n.md").write_text(table + "\n")
        print("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
