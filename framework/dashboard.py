"""A W&B workspace for one sweep group, with panels for the report's views:
`python -m framework.dashboard GROUP --entity ENTITY [--project P] [--sweep-dir DIR] [--save]`.

Built with wandb-workspaces (optional extra: `pip install -e '.[report]'`). Building is offline: the
workspace object and its JSON spec (`--spec-out FILE`) need no network; only `--save` talks to W&B,
and it refuses in offline mode. The runs are filtered to the group (a multirun's runs share the
sweep directory's name as their group; `logger.group` sets it) and grouped by method and decoder, so
bar panels show the mean over seeds with its standard error.

Sections:
1. accuracy by method x decoder, lift over greedy, pass@N;
2. accuracy vs beam width (decoder.num_beams);
3. best-of-N accuracy vs N, one bar per N' of `eval/bon_accuracy_by_n`, grouped by selector;
4. accuracy vs compute (training tokens, tokens generated at evaluation, run time).
The compute panel reads `compute/train_tokens`, which the launcher logs to the run summary.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from framework.errors import OneLineArgumentParser
from framework.results import JobResult

DEFAULT_PROJECT = "reasoning-posttrain"
DEFAULT_BON_SIZES = (1, 2, 4, 8, 16)
NO_EXTRA = "the dashboard needs wandb-workspaces: pip install -e '.[report]'"
ACCURACY = "eval/accuracy"


def _imports():
    try:
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws
    except ImportError as error:
        raise SystemExit(f"error: {NO_EXTRA} ({error})") from None
    return ws, wr


def bon_sizes_from_sweep(sweep_dir: Path) -> tuple[int, ...]:
    """The N' values of every best-of-N curve in a local sweep directory (empty if none)."""
    sizes = set()
    for file in Path(sweep_dir).rglob("results.json"):
        try:
            sizes |= {int(n) for n in JobResult.read(file).metrics.get("bon_accuracy_by_n", {})}
        except (OSError, ValueError):  # a job killed mid-write: nothing to learn from it
            continue
    return tuple(sorted(sizes))


def build_workspace(group: str, entity: str, project: str = DEFAULT_PROJECT,
                    bon_sizes: tuple[int, ...] = DEFAULT_BON_SIZES):
    """The workspace object (not saved). `bon_sizes`: the N' bars of the best-of-N section."""
    ws, wr = _imports()
    method = wr.Config("method")  # set by the launcher beside the Hydra config; survives W&B sweep agents
    by_group = {"groupby_aggfunc": "mean", "groupby_rangefunc": "stderr"}
    sections = [
        ws.Section(name="Accuracy by method x decoder", is_open=True, panels=[
            wr.BarPlot(title="accuracy (mean over seeds, stderr)", metrics=[ACCURACY], orientation="v", **by_group),
            wr.BarPlot(title="lift over greedy, %", metrics=["eval/lift_over_greedy"], orientation="v", **by_group),
            wr.BarPlot(title="pass@N (coverage)", metrics=[f"eval/pass@{n}" for n in bon_sizes], orientation="v",
                       **by_group),
        ]),
        ws.Section(name="Accuracy vs beam width", is_open=True, panels=[
            wr.ScatterPlot(title="accuracy vs beam width", x=wr.Config("decoder.num_beams"),
                           y=wr.SummaryMetric(ACCURACY)),
            wr.BarPlot(title="accuracy by beam width", metrics=[ACCURACY], groupby=wr.Config("decoder.num_beams"),
                       orientation="v", **by_group),
        ]),
        ws.Section(name="Best-of-N accuracy vs N", is_open=True, panels=[
            wr.BarPlot(title="best-of-N accuracy by N' (bars) per selector",
                       metrics=[f"eval/bon_accuracy_by_n.{n}" for n in bon_sizes],
                       groupby=wr.Config("decoder.selector"), orientation="v", **by_group),
            wr.BarPlot(title="greedy reference accuracy", metrics=["eval/greedy_accuracy"], groupby=method,
                       orientation="v", **by_group),
        ]),
        ws.Section(name="Accuracy vs compute", is_open=True, panels=[
            wr.ScatterPlot(title="accuracy vs training tokens", x=wr.SummaryMetric("compute/train_tokens"),
                           y=wr.SummaryMetric(ACCURACY)),
            wr.ScatterPlot(title="accuracy vs tokens generated at evaluation",
                           x=wr.SummaryMetric("eval/generated_tokens"), y=wr.SummaryMetric(ACCURACY)),
            wr.ScatterPlot(title="accuracy vs run time (s)", x=wr.Metric("Runtime"), y=wr.SummaryMetric(ACCURACY)),
        ]),
    ]
    return ws.Workspace(
        name=f"Comparison: {group}", entity=entity, project=project, sections=sections,
        runset_settings=ws.RunsetSettings(
            filters=[ws.Metric("Group") == group], groupby=[ws.Config("method"), ws.Config("decoder_label")],
            pinned_columns=[f"summary:{ACCURACY}", "summary:eval/accuracy_ci_low", "summary:eval/accuracy_ci_high",
                            "config:seed"]),
    )


def workspace_spec(workspace) -> dict:
    """The JSON the W&B app stores for the workspace (built offline; for review and tests)."""
    return workspace._to_model().model_dump(by_alias=True, exclude_none=True)


def _argument_problem(args) -> str | None:
    """One line for an argument that names nothing or cannot be written to; None when all are usable."""
    for flag, value in (("group", args.group), ("--entity", args.entity), ("--project", args.project)):
        if not value.strip():
            return f"{flag}: empty name"
    if args.sweep_dir is not None:
        if not args.sweep_dir.is_dir():
            return f"--sweep-dir {args.sweep_dir} is not a directory"
        if not any(args.sweep_dir.rglob("results.json")):
            return f"--sweep-dir {args.sweep_dir} holds no job's results.json (a multirun directory holds one per job)"
    if args.spec_out is not None:
        if args.spec_out.is_dir():
            return f"--spec-out {args.spec_out} is a directory; give a file name"
        if not args.spec_out.parent.is_dir():
            return f"--spec-out {args.spec_out}: no directory {args.spec_out.parent}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = OneLineArgumentParser(prog="python -m framework.dashboard", description=__doc__.splitlines()[0])
    parser.add_argument("group", help="the W&B group of the sweep's runs (a multirun: its directory name)")
    parser.add_argument("--entity", required=True, help="W&B entity (user or team) owning the project")
    parser.add_argument("--project", default=DEFAULT_PROJECT)
    parser.add_argument("--sweep-dir", type=Path, help="local sweep directory: takes the best-of-N sizes from it")
    parser.add_argument("--spec-out", type=Path, help="write the workspace's JSON spec here (offline)")
    parser.add_argument("--save", action="store_true", help="create the workspace on W&B (online only)")
    args = parser.parse_args(argv)
    problem = _argument_problem(args)  # before the workspace is built or anything written
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    sizes = (bon_sizes_from_sweep(args.sweep_dir) if args.sweep_dir else ()) or DEFAULT_BON_SIZES
    workspace = build_workspace(args.group, args.entity, args.project, sizes)
    for section in workspace.sections:
        print(f"{section.name}: " + "; ".join(panel.title or type(panel).__name__ for panel in section.panels))
    if args.spec_out:
        args.spec_out.write_text(json.dumps(workspace_spec(workspace), indent=2))
        print(f"spec written to {args.spec_out}")
    if not args.save:
        print("not saved (pass --save, online, to create it on W&B)")
        return 0
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled"):
        print(f"error: --save needs W&B online, but WANDB_MODE={os.environ['WANDB_MODE']}", file=sys.stderr)
        return 2
    try:
        workspace.save()
    except Exception as error:  # no login, no network: one line, not a traceback
        print(f"error: could not save the workspace to W&B ({error}); `wandb login` first", file=sys.stderr)
        return 2
    try:
        where = workspace.url
    except Exception:  # the URL needs one more API call; the save itself went through
        where = f"project {args.entity}/{args.project}"
    print(f"saved workspace {workspace.name!r}: {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
