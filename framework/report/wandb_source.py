"""Reading a W&B group instead of a sweep directory: each finished run's config and summary as a Run, its
per-problem scores from the logged generations table (through W&B's public API, online)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from framework.paths import CONF_DIR
from framework.report.sweep import ReportError, Run, label_runs, scores_from_rows, with_evaluations
from framework.results import EvaluationSummary, JobResult

GROUPS = ("model", "dataset", "algorithm", "decoder", "logger")


def decoder_label_from_config(decoder: dict) -> str:
    """The launcher's decoder label (`bon(selector=..., ...)`) rebuilt from a W&B run's decoder config."""
    from dataclasses import fields

    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from framework import registry

    registry.load_plugins()
    try:
        schema = OmegaConf.get_type(ConfigStore.instance().load(f"decoder/{decoder['name']}_schema.yaml").node)
        names = {f.name for f in fields(schema)}
        return schema(**{k: v for k, v in decoder.items() if k in names}).label()
    except Exception:  # an unknown plugin's decoder: still a readable, stable label
        return str(decoder.get("name", "?"))


def _resolved_wandb_config(config: dict) -> dict:
    """A W&B run's config in the launcher's nested shape.

    A run started by a W&B sweep agent has its sweep parameters merged over the launcher's config, so a
    swept group reads `algorithm: "sft"` instead of `{name: sft, ...}` and a swept field sits in a flat
    `decoder.selector` key. Such a run's config is recomposed with Hydra from those overrides (the
    same thing the agent's command line did), so labels and decoder settings match the launcher's.
    """
    if all(isinstance(config.get(group), dict) for group in GROUPS if group in config):
        return config
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from framework import registry

    overrides = [f"{key}={value}" for key, value in config.items()
                 if not isinstance(value, dict) and (key in GROUPS or "." in key or key in ("sweeps", "seed"))]
    registry.load_plugins()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return OmegaConf.to_container(compose(config_name="config", overrides=overrides), resolve=True)


def _logged_scores(run, summary: dict, prefix: str, metrics: dict, scratch: Path) -> dict[int, float] | None:
    """Per-problem scores from the generations table logged under `<prefix>generations`, None unless it holds
    every problem."""
    table = summary.get(f"{prefix}generations")
    if not (isinstance(table, dict) and table.get("path")):
        return None
    downloaded = run.file(table["path"]).download(root=str(scratch), replace=True)
    downloaded.close()
    content = json.loads((scratch / table["path"]).read_text())
    rows = [dict(zip(content["columns"], row)) for row in content["data"]]
    logged = scores_from_rows(rows) if rows and "chosen" in rows[0] else {}
    return logged if len(logged) == metrics.get("num_problems") else None


def _metrics_under(summary: dict, prefix: str) -> dict:
    """The evaluation metrics logged under `prefix` (eval/ or eval/<dataset>/), its generations table aside."""
    return {key[len(prefix):]: value for key, value in summary.items()
            if key.startswith(prefix) and "/" not in key[len(prefix):] and key != f"{prefix}generations"}


def _runs_from_wandb(run, scratch: Path) -> list[Run]:
    """The Runs of a W&B run's config and summary: its training dataset's, then one per evaluation dataset
    (`eval/<name>/` keys); per-problem scores come from each logged generations table when it holds every
    problem (`logger.max_table_rows` large enough)."""
    # summary_metrics: plain JSON (run.summary wraps nested values such as the table reference)
    config, summary = _resolved_wandb_config(dict(run.config)), dict(run.summary_metrics)
    metrics = _metrics_under(summary, "eval/")
    compute = {key[len("compute/"):]: value for key, value in summary.items() if key.startswith("compute/")}
    decoder = dict(config.get("decoder") or {})
    result = JobResult(
        algorithm=config["algorithm"]["name"], decoder=decoder.get("name"),
        decoder_label=decoder_label_from_config(decoder), dataset=config["dataset"]["name"],
        model=config["model"]["name"], seed=config["seed"], metrics=metrics, algorithm_config=config["algorithm"],
        decoder_config=decoder, train_seconds=compute.get("train_seconds", 0.0), wall_seconds=summary.get("_runtime"),
        compute=compute or None)
    # evaluation.datasets: each dataset's metrics under eval/<name>/ (its decoder settings are the job's: the
    # generation length a dataset gave it is not in the run's config)
    entries = ((config.get("evaluation") or {}).get("datasets") or {})
    evaluations = {name: EvaluationSummary(dataset=entry.get("name", name), decoder_config=decoder,
                                           metrics=_metrics_under(summary, f"eval/{name}/"), evaluation_reused=False)
                   for name, entry in entries.items() if f"eval/{name}/accuracy" in summary}
    result.evaluations = evaluations or None
    source = getattr(run, "url", run.name)
    runs = with_evaluations(Run(result, source=source))
    for each in runs:
        prefix = f"eval/{each.evaluation}/" if each.evaluation else "eval/"
        each.logged_scores = _logged_scores(run, summary, prefix, each.result.metrics, scratch)
    return runs


def collect_wandb(group: str, project: str, entity: str | None = None, api=None) -> tuple[list[Run], list[str]]:
    """(runs, runs without results) of every run in a W&B group, through the public API (online)."""
    if api is None:
        if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled"):
            raise ReportError(f"reading W&B group {group!r} needs the W&B API, but WANDB_MODE="
                              f"{os.environ['WANDB_MODE']}; pass the sweep directory instead (offline runs "
                              "leave results.json there), or unset WANDB_MODE and `wandb login`")
        import wandb

        try:
            api = wandb.Api(timeout=60)
        except Exception as error:  # no API key, no network
            raise ReportError(f"cannot reach the W&B API to read group {group!r} ({error}); pass the sweep "
                              "directory instead, or `wandb login` on a machine with network") from None
    path = f"{entity}/{project}" if entity else project
    runs, missing = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for run in api.runs(path, filters={"group": group}):
            if run.state != "finished" or "eval/accuracy" not in run.summary_metrics:
                missing.append(f"`{run.name}` (W&B state {run.state})")
                continue
            runs += _runs_from_wandb(run, Path(scratch) / run.id)
    if not runs and not missing:
        raise ReportError(f"no runs in W&B group {group!r} of project {path!r}")
    return label_runs(runs), missing
