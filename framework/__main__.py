"""The launcher: `python -m framework [overrides]` or `python -m framework -m [sweep overrides]`.

It parses (Hydra composes the config), refuses what Hydra cannot compose with one readable line, and
dispatches each job to framework/job.py, which validates, builds, trains, evaluates and records it. The
launcher knows no algorithm, dataset, decoder or model by name.
"""
from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path

# Before any Hugging Face import: no telemetry pings (TRL sends one per trainer) on offline machines.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from framework import console, registry  # noqa: E402
from framework.config import GROUP_BASES  # noqa: E402
from framework.errors import ConfigError, composition_error_line  # noqa: E402
from framework.help import refuse_schema_choices, register_resolver  # noqa: E402
from framework.job import run  # noqa: E402
from framework.results import JobResult  # noqa: E402
from framework.paths import CONF_DIR  # noqa: E402

register_resolver()  # --help's listing (conf/config.yaml, hydra.help.template); here, where every launcher imports


def _hydra_context() -> tuple[Path, str | None, list[str]]:
    """This job's output directory, the sweep's name when in a multirun, and the job's overrides."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_config = HydraConfig.get()
    output_dir = Path(hydra_config.runtime.output_dir)
    group = Path(hydra_config.sweep.dir).name if hydra_config.mode == RunMode.MULTIRUN else None
    return output_dir, group, list(hydra_config.overrides.task)


# the job this process is running (its output directory), for the line a Ctrl-C prints
_current_job: Path | None = None
_PLAN_ONLY = False  # `--plan`: print each job's memory and time plan instead of running it (framework/plan.py)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def hydra_entry(cfg: DictConfig) -> float:
    global _current_job
    from hydra.core.hydra_config import HydraConfig

    console.quiet()  # again: a submitit job runs in a fresh process, where main() never ran
    output_dir, group, overrides = _hydra_context()
    _current_job = output_dir
    try:
        refuse_schema_choices(HydraConfig.get().runtime.choices)
        if _PLAN_ONLY:
            from framework.plan import plan_only

            print(plan_only(cfg) + "\n", flush=True)
            return 0.0
        # accuracy on the test split, or on the validation split with evaluation.objective=validation
        return JobResult.from_dict(run(cfg, output_dir, group, overrides)).objective_value()
    except ConfigError as error:
        if group is not None:  # in a sweep: fail this job only; Hydra runs the others and reports it
            raise
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(2)


def _refuse_emptied_groups(arguments: list[str]) -> None:
    """Every run needs one option per group. Hydra answers `decoder=null` or `~decoder` with a traceback
    (the defaults list interpolates the chosen options), so say it in one line instead."""
    for argument in arguments:
        key, _, value = argument.lstrip("~").partition("=")
        if key in (*GROUP_BASES, "experiment") and (argument.startswith("~") or value == "null"):
            hint = "experiment=none turns presets off" if key == "experiment" else "`python -m framework --help` lists them"
            print(f"error: {key} needs an option (got {argument!r}); {hint}", file=sys.stderr)
            sys.exit(2)


def _raised_in_job(error: BaseException) -> bool:
    """Whether `error` came out of a job's own code (a bug, to show with its traceback) rather than out of
    Hydra composing a config: the task function's frame is on its traceback."""
    task_code = inspect.unwrap(hydra_entry).__code__
    frame = error.__traceback__
    while frame is not None:
        if frame.tb_frame.f_code is task_code:
            return True
        frame = frame.tb_next
    return False


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def _interrupted_lines() -> str:
    """What a Ctrl-C stopped (the job, the stages open or the lock waited for) and how to go on."""
    from framework import stages

    where = []
    if _current_job is not None:
        job = _current_job.relative_to(Path.cwd()) if _current_job.is_relative_to(Path.cwd()) else _current_job
        where.append(f"job {job}")
    where += stages.interrupted[-1:]  # the innermost: what was running
    place = ", ".join(where) if where else "before the first job started"
    return (f"stopped (Ctrl-C): {place}.\n"
            "The same command resumes: finished stages are reused, and training goes on from its last checkpoint.")


def _plan_only_arguments() -> None:
    """`--plan` is the launcher's flag, not Hydra's: take it out of argv, and keep Hydra from writing anything
    (its run or sweep directory goes to a scratch directory removed at exit, no logs, no report)."""
    global _PLAN_ONLY
    import atexit
    import shutil
    import tempfile

    sys.argv.remove("--plan")
    _PLAN_ONLY = True
    scratch = tempfile.mkdtemp(prefix="framework-plan-")
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    sys.argv += [f"hydra.run.dir={scratch}", f"hydra.sweep.dir={scratch}", "hydra.output_subdir=null",
                 "hydra/job_logging=disabled", "hydra/hydra_logging=disabled", "~hydra.callbacks.comparison_table"]


def main() -> None:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    _refuse_emptied_groups(sys.argv[1:])
    if "--plan" in sys.argv[1:]:
        _plan_only_arguments()
    try:
        console.quiet()
        registry.load_plugins()  # registers every schema in the ConfigStore before Hydra composes
    except KeyboardInterrupt:
        print(f"\n{_interrupted_lines()}", file=sys.stderr, flush=True)
        sys.exit(130)
    traceback_wanted = os.environ.get("HYDRA_FULL_ERROR") == "1"  # the user asked for Hydra's full traces
    # Hydra prints its own errors over several lines unless this is set; then it re-raises, and we print one
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        hydra_entry()
    except KeyboardInterrupt:  # no traceback: where it stopped and how to go on; 130, as a shell reports SIGINT
        if traceback_wanted:
            raise
        from framework.report.callback import write_pending_reports

        console.close_progress_bars()
        write_pending_reports(brief=True)  # a sweep's report of its finished jobs, named in one line
        print(f"\n{_interrupted_lines()}", file=sys.stderr, flush=True)
        sys.exit(130)
    except ConfigError as error:  # a sweep job's bad value, raised once the sweep's other jobs have run
        if traceback_wanted:
            raise
        _fail(str(error))
    except (HydraException, OmegaConfBaseException) as error:
        if traceback_wanted or _raised_in_job(error):  # a job's own failure is a bug: keep its traceback
            raise
        _fail(composition_error_line(error, sys.argv[1:]))
    except OSError as error:  # Hydra could not create or write the run's directory, before any job started
        if traceback_wanted or _raised_in_job(error):
            raise
        key = "hydra.sweep.dir" if {"-m", "--multirun"} & set(sys.argv[1:]) else "hydra.run.dir"
        _fail(f"{key}: {error.strerror or error}: {error.filename!r} (the run's output directory must be one this "
              "process can create and write)")


if __name__ == "__main__":
    sys.exit(main())
