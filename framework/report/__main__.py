"""The comparison report of a sweep: `python -m framework.report <sweep dir>` (also run after every multirun),
or `python -m framework.report --wandb-group NAME` for runs logged online to W&B.

Writes report.md, report.csv, the plots and comparison.md / comparison.csv beside the jobs (or into
--out); --by-width adds accuracy_by_width.md, --by-n bon_by_n.md. The package's docstring lists them.
"""
from __future__ import annotations

import sys
from pathlib import Path

from framework.config import WandbLoggerConfig
from framework.errors import OneLineArgumentParser
from framework.report.aggregate import BASELINE
from framework.report.render import bon_curve_table, width_table, write_job_table, write_report
from framework.report.statistics import BOOTSTRAP_RESAMPLES
from framework.report.sweep import ReportError, collect, missing_job_lines
from framework.report.wandb_source import collect_wandb

DEFAULT_PROJECT = WandbLoggerConfig.project  # the logger's default project


def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(prog="python -m framework.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, nargs="?",
                        help="a multirun directory (or any directory of job outputs)")
    parser.add_argument("--wandb-group", help="read the runs of this W&B group instead (online)")
    parser.add_argument("--project", help=f"W&B project of --wandb-group (default: {DEFAULT_PROJECT})")
    parser.add_argument("--entity", help="W&B entity of --wandb-group (default: your default entity)")
    parser.add_argument("--out", type=Path, help="where to write (default: the sweep directory; "
                                                 "reports/<group> for --wandb-group)")
    parser.add_argument("--baseline", help=f"the method every other one is compared with (default: {BASELINE})")
    parser.add_argument("--resamples", type=int, default=BOOTSTRAP_RESAMPLES, help="paired bootstrap resamples")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    parser.add_argument("--by-width", action="store_true", help="accuracy by beam width per method (SOC sweep)")
    parser.add_argument("--by-n", action="store_true", help="best-of-N accuracy, lift and pass@N by N (sharpening)")
    args = parser.parse_args(argv)
    try:
        _check_arguments(args)  # everything that needs no job read: before anything is read or printed
        if args.wandb_group:
            runs, missing = collect_wandb(args.wandb_group, args.project or DEFAULT_PROJECT, args.entity)
            out_dir, title = args.out or Path("reports") / args.wandb_group, f"W&B group {args.wandb_group}"
        else:
            runs, missing = collect(args.sweep_dir)
            out_dir, title = args.out or args.sweep_dir, args.sweep_dir.name
        methods = sorted({run.method_label for run in runs})
        if args.baseline is not None and args.baseline not in methods:
            raise ReportError(f"--baseline {args.baseline}: no such method in "
                              f"{args.sweep_dir or 'W&B group ' + args.wandb_group}; "
                              f"available: {', '.join(methods) or 'none (no job has results)'}")
    except ReportError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not args.wandb_group:
        print(write_job_table(runs, missing, args.sweep_dir) + "\n")
        missing = missing_job_lines(args.sweep_dir, missing)
    baseline = args.baseline or BASELINE
    print(write_report(runs, out_dir, title, missing, baseline, args.resamples, plots=not args.no_plots))
    print(f"\n(saved to {out_dir}/report.md and report.csv)")
    if args.by_width:
        table = width_table(runs)
        (out_dir / "accuracy_by_width.md").write_text(table + "\n")
        print("\n" + table)
    if args.by_n:
        table = bon_curve_table(runs)
        (out_dir / "bon_by_n.md").write_text(table + "\n")
        print("\n" + table)
    return 0


def _check_arguments(args) -> None:
    """ReportError, one line, for arguments that cannot work together or name nothing."""
    if args.wandb_group and args.sweep_dir is not None:
        raise ReportError(f"give a sweep directory or --wandb-group, not both (got {args.sweep_dir} and "
                          f"--wandb-group {args.wandb_group})")
    if not args.wandb_group:
        if args.sweep_dir is None:
            raise ReportError("give a sweep directory or --wandb-group NAME")
        if not args.sweep_dir.is_dir():
            raise ReportError(f"{args.sweep_dir} is not a directory (for a W&B group use --wandb-group NAME)")
        for flag, value in (("--project", args.project), ("--entity", args.entity)):
            if value is not None:
                raise ReportError(f"{flag} {value}: only read with --wandb-group (a sweep directory holds its jobs)")
    if args.wandb_group is not None and not args.wandb_group.strip():
        raise ReportError("--wandb-group: empty group name")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise ReportError(f"--out {args.out}: a file, not a directory")
    if args.resamples < 1:
        raise ReportError(f"--resamples must be >= 1 (got {args.resamples})")


if __name__ == "__main__":
    sys.exit(main())
