"""The default sweeper of `python -m framework -m`: Hydra's basic sweeper (the grid of every swept value, run in
batches), which checks every job of the grid before the first one runs and names each job's directory for the
swept values that tell it apart.

A sweep may also run several grids (`hydra.sweeper.grids`, a list of params maps, each expanded like `params`
and run after it, the command line's overrides applying to every grid): a study whose claims need their own
decoders (the headline's SOC widths, the sharpening paper's protocol) stays one command and one report, without
the cartesian product of everything with everything. Hydra's basic sweeper has one grid; this is the only
thing added to its expansion.

Hydra's basic sweeper composes each batch before launching it, so a misspelt option fails early; a value,
though, is checked by the job itself once it runs: `-m dataset.test_size=20,-5` trained and evaluated job 0
before job 1 refused -5. Here every job of every batch is composed and validated (framework.job.check) first,
and the first bad one is refused in one line naming its overrides and the key: nothing runs, no sweep
directory is made.

Hydra instantiates sweepers only from its `hydra_plugins` namespace, so the class Hydra sees is defined in
hydra_plugins/framework_sweeper/ (installed with this package) from the mixin here and Hydra's BasicSweeper;
conf/default_sweeper.yaml selects it (`hydra/sweeper: checked`). (A mixin, not a subclass: Hydra's plugin scan
executes basic_sweeper.py again, which makes a new BasicSweeper class; the plugin module, scanned after it,
subclasses that one.) The Optuna sweeper (sweeps=search_sft) draws its trials one at a time from the
results before them, so its grid is not known in advance: each trial is checked when it starts.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeperConf
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict, read_write

from framework.errors import ConfigError, composition_error_line
from framework.help import refuse_schema_choices

SWEEPER_TARGET = "hydra_plugins.framework_sweeper.CheckedSweeper"
MAX_NAME_CHARACTERS = 80  # a job directory's name; longer ones are cut and end with a digest of the whole
UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")  # characters a directory name on any filesystem (and a shell) takes as-is


@dataclass
class CheckedSweeperConf(BasicSweeperConf):
    _target_: str = SWEEPER_TARGET
    # name each job's directory `<job number>_<the swept values that differ>` (hydra.sweep.subdir); false, or a
    # hydra.sweep.subdir given on the command line, keeps hydra.sweep.subdir
    name_job_dirs: bool = True
    # further grids of the same sweep, each a params map expanded like `params` and run after it
    grids: list[dict[str, str]] = field(default_factory=list)


ConfigStore.instance().store(group="hydra/sweeper", name="checked", node=CheckedSweeperConf, provider="framework")


def _split(override: str) -> tuple[str, str]:
    key, _, value = override.partition("=")
    return key.lstrip("+~").split("@")[0], value


def job_labels(jobs: Sequence[Sequence[str]], groups: set[str]) -> list[str]:
    """Each job's swept values that differ among `jobs`, short and filesystem-safe: a config group's option by
    its name (`sft`), any other key by its last part and value (`test_size=-5`; the whole key where two swept
    keys share a last part), a path by its last part. `groups`: the config groups' names (`algorithm`, ...)."""
    values: dict[str, set[str]] = {}
    for job in jobs:
        for override in job:
            key, value = _split(override)
            values.setdefault(key, set()).add(value)
    # a key that only some jobs set (another grid's) tells them apart too
    varying = [key for key, seen in values.items()
               if len(seen) > 1 or sum(any(_split(o)[0] == key for o in job) for job in jobs) < len(jobs)]
    last = [key.rsplit(".", 1)[-1] for key in varying]
    labels = []
    for job in jobs:
        parts = []
        for override in job:
            key, value = _split(override)
            if key not in varying:
                continue
            short = key.rsplit(".", 1)[-1]
            if "/" in value.strip("/"):  # a path: its last part tells the jobs apart
                value = value.rstrip("/").rsplit("/", 1)[-1]
            parts.append(value if key in groups else f"{short if last.count(short) == 1 else key}={value}")
        label = UNSAFE.sub("-", "_".join(parts)).strip("-")
        if len(label) > MAX_NAME_CHARACTERS:  # keep it unique: the digest of what was cut
            digest = hashlib.sha256(label.encode()).hexdigest()[:8]
            label = f"{label[:MAX_NAME_CHARACTERS - 9]}-{digest}"
        labels.append(label)
    return labels


def _differing(job: Sequence[str], common: set[str]) -> str:
    """The overrides of `job` that not every job of the sweep shares (`common`), else all of them."""
    return " ".join(override for override in job if override not in common) or " ".join(job)


class CheckedSweeperMixin:
    """For Hydra's BasicSweeper: compose and validate every job of the grid before launching the first, and name
    each job's directory for its swept values."""

    def __init__(self, max_batch_size: Optional[int], params: Optional[dict] = None, name_job_dirs: bool = True,
                 grids: Optional[list] = None):
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.name_job_dirs = name_job_dirs
        self.grids = [dict(grid) for grid in grids or []]
        self._arguments: list[str] = []
        self._subdirs: dict[int, str] = {}  # job number -> its directory's name
        self._next_job = 0

    def split_arguments(self, overrides, max_batch_size):
        """BasicSweeper's batches of the `params` grid, then those of every further grid (`grids`)."""
        batches = super().split_arguments(overrides, max_batch_size)
        if not self.grids:
            return batches
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        for grid in self.grids:
            extra = parser.parse_overrides([*(f"{key}={value}" for key, value in grid.items()), *self._arguments])
            batches.extend(super().split_arguments(extra, max_batch_size))
        return batches

    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.hydra_context is not None
        self._arguments = list(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*self._parse_config(), *arguments])
        jobs = [job for batch in self.split_arguments(overrides, self.max_batch_size) for job in batch]
        self.check_jobs(jobs)
        hydra_overrides = OmegaConf.to_container(self.config.hydra.overrides.hydra)  # unresolved: they may hold ${}
        own_subdir = any(str(item).startswith("hydra.sweep.subdir=") for item in hydra_overrides)
        if self.name_job_dirs and not own_subdir:
            groups = {str(group).split("@")[0] for group in self.config.hydra.runtime.choices}
            labels = job_labels(jobs, groups)
            self._subdirs = {number: f"{number}_{label}" if label else str(number)
                             for number, label in enumerate(labels)}
        return super().sweep(arguments)

    def check_jobs(self, jobs: Sequence[Sequence[str]]) -> None:
        """Compose and validate every job as it would run; ConfigError (one line) for the first that cannot."""
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        from framework.job import check

        common = set.intersection(*(set(job) for job in jobs)) if len(jobs) > 1 else set()
        for number, job in enumerate(jobs):
            where = f"sweep job {number} of {len(jobs)} ({_differing(job, common)})"
            try:
                config = self.hydra_context.config_loader.load_sweep_config(master_config=self.config,
                                                                             sweep_overrides=list(job))
                refuse_schema_choices(config.hydra.runtime.choices, self.hydra_context.config_loader)
                with read_write(config), open_dict(config):
                    del config["hydra"]  # the job's own config, as Hydra hands it to the task function
                check(config)
            except ConfigError as error:
                raise ConfigError(f"{where}: {error}") from None
            except (HydraException, OmegaConfBaseException) as error:
                raise ConfigError(f"{where}: {composition_error_line(error, job)}") from None

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Every job was composed and validated in `sweep` before the first batch."""

    def get_job_batch(self) -> Sequence[Sequence[str]]:
        batch = super().get_job_batch()
        named = []
        for job in batch:
            subdir = self._subdirs.get(self._next_job)
            named.append([*job, f"hydra.sweep.subdir='{subdir}'"] if subdir else list(job))
            self._next_job += 1
        return named


def is_grid_sweeper(target: str) -> bool:
    """Whether a sweeper `_target_` expands its grid as Hydra's basic sweeper does (the report reads its jobs)."""
    return target.rsplit(".", 1)[-1] in ("BasicSweeper", "CheckedSweeper")
