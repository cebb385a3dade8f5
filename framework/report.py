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

COLUMNS = ("algorithm", "decoder", "seed", "accuracy", "95% CI", "flexible", "pass@k", "mean tokens",
           "train s", "decode s")


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


class ComparisonTableCallback(Callback):
    """Hydra callback: print and save the comparison table when a multirun ends."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.is_dir():
            print("\n" + write(sweep_dir) + f"\n\n(saved to {sweep_dir}/comparison.md and comparison.csv)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun directory (or any directory of job outputs)")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"error: {args.sweep_dir} is not a directory", file=sys.stderr)
        return 2
    print(write(args.sweep_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
