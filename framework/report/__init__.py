"""The comparison report of a sweep (`python -m framework.report <sweep dir>`, also run after every multirun)
or of a W&B group: report.md / report.csv per method x decoder (accuracy with a 95% interval over seeds and
problems, lift over greedy, pass@N, compute, paired comparisons with SFT and with the method's control,
Holm-corrected), the plots, the premises and fidelity sections, and comparison.md / comparison.csv per job.
Jobs that left no results are listed, and every job is recomputed from its generations.jsonl.

One module a layer, each importing only modules named before it:
sweep (each job's JobResult as a Run; missing jobs) and wandb_source (the same from a W&B group);
checks (results.json against generations.jsonl); statistics (intervals, paired bootstrap, Holm);
aggregate (cells, lift, comparisons); fidelity and plots (sections and figures of the cells);
render (the tables and files); callback (Hydra's, after a multirun) and __main__ (the command).
"""
# the public names, handed on
from framework.report.aggregate import BASELINE, Cell, aggregate  # noqa: F401
from framework.report.checks import check_against_generations, recompute_from_generations, run_checks  # noqa: F401
from framework.report.render import (  # noqa: F401
    bon_curve_table, job_table_markdown, width_table, write_job_table, write_report,
)
from framework.report.statistics import Comparison, holm, paired_bootstrap, seed_problem_interval  # noqa: F401
from framework.report.sweep import ReportError, Run, collect, missing_job_lines  # noqa: F401
from framework.report.wandb_source import collect_wandb  # noqa: F401
