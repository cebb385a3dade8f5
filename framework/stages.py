"""Stage outputs (base models, trained models, ...) stored once, keyed by what determines them.

A stage lives in `<cache_dir>/<kind>/<key>/`, where key = hash(kind, the spec that determines the
output, the code that computes it). Inside:

    checkpoints/   trainer checkpoints while the stage runs; a re-run of the same command resumes here
    output/        the finished artifact, moved into place atomically
    stage.json     written last: the spec and metadata; its presence means "done"

A file lock per stage makes concurrent sweep jobs that need the same stage wait for one computation
instead of racing (a run that waits says so after LOCK_NOTICE_SECONDS); `stages.reuse=false` recomputes and overwrites. (The `filelock` package does the
locking; it is the lock huggingface_hub and datasets already use.)

Several processes of one job (`accelerate launch`, `torchrun`; see framework/distributed.py):
- `open(kind, spec)`: the main process alone computes and commits the stage (sampling, exploration);
  the others wait until it is finished, then enter the block with `stage.done` true and read it.
- `open(kind, spec, collective=True)`: every process runs the block, because training needs them
  all. The main process holds the lock and commits; `new_output_dir()` gives the others a private
  scratch directory that is thrown away (trainers write the artifact from the main process). The
  main process commits once every process has reached `commit` (no process is still reading the
  stage's checkpoints/ or about to ask `stage.done`), and `commit` returns on every process once the
  stage is finished. The key includes the number of
  processes, since the global batch is per-device batch x processes x accumulation steps.
The cache directory must be one filesystem that every process (every node) sees.

What invalidates a stage: its spec (config values, upstream stage keys, data, seed) and its code. The code
fingerprint hashes the source of the modules the stage names (`code=`, e.g. the method's module) and of
every framework module they import, statically and transitively (except imports under `if TYPE_CHECKING:`
and the storage/dispatch/logging modules in INFRASTRUCTURE), plus the versions of the libraries that
compute (COMPUTING_LIBRARIES). Editing a loss in soc.py therefore retrains SOC (and re-evaluates it: the
evaluation keys on the trained model's key), while the report, the plots, the docs or another method's
module leave it alone. Upstream stages are covered by their keys: a change to the rationale rules changes
the keys of the stages built on the rationale set, and so of the models trained on them.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Iterator, Sequence

from filelock import FileLock, Timeout

from framework import __version__, distributed, memory

log = logging.getLogger(__name__)

DONE_MARKER = "stage.json"
PACKAGE = "framework"
PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # the directory holding framework/
# Modules that store, lock, dispatch and log stages but compute no output: left out of (and not followed by)
# code fingerprints, so that editing them does not throw every cached model away.
INFRASTRUCTURE = ("framework.stages", "framework.distributed", "framework.registry", "framework.errors",
                  "framework.tracking", "framework.results", "framework.paths", "framework.console",
                  "framework.checkpoints", "framework.sweeper", "framework.help", "framework.memory",
                  "framework.plan")
# the libraries whose code computes stage outputs (training loops, losses, generation, answer checking)
COMPUTING_LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "math-verify")


def _module_file(root: Path, module: str) -> Path | None:
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported_modules(source: str, root: Path) -> set[str]:
    """The framework modules a source imports anywhere (function bodies included), except under
    `if TYPE_CHECKING:`; parent packages count, as Python runs their __init__ too."""
    found: set[str] = set()

    def add(module: str) -> None:
        parts = module.split(".")
        for end in range(1, len(parts) + 1):
            if _module_file(root, ".".join(parts[:end])):
                found.add(".".join(parts[:end]))

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == PACKAGE:
            add(node.module)
            for alias in node.names:  # `from framework import registry`: registry may be a module
                if _module_file(root, f"{node.module}.{alias.name}"):
                    add(f"{node.module}.{alias.name}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found


@functools.lru_cache(maxsize=None)
def code_closure(modules: tuple[str, ...], root: Path = PACKAGE_ROOT) -> dict[str, str]:
    """module -> sha256 of its source, for `modules` and every framework module they import, transitively."""
    digests: dict[str, str] = {}
    pending = list(modules)
    while pending:
        module = pending.pop()
        if module in digests or module in INFRASTRUCTURE:
            continue
        path = _module_file(root, module)
        if path is None:  # a plugin's module outside the framework: its own file, its imports not followed
            path = _external_file(module)
            digests[module] = hashlib.sha256(path.read_bytes()).hexdigest()
            continue
        source = path.read_text(encoding="utf-8")
        digests[module] = hashlib.sha256(source.encode()).hexdigest()
        pending.extend(_imported_modules(source, root) - digests.keys())
    return dict(sorted(digests.items()))


def _external_file(module: str) -> Path:
    loaded = sys.modules.get(module)
    origin = getattr(loaded, "__file__", None)
    if origin is None:
        spec = importlib.util.find_spec(module)
        origin = spec.origin if spec is not None else None
    if origin is None or not Path(origin).is_file():
        raise ValueError(f"stage code {module!r}: no such module (neither under the framework nor importable)")
    return Path(origin)


def _library_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def code_fingerprint(modules: str | Sequence[str], root: Path = PACKAGE_ROOT) -> str:
    """What a stage's code is: its modules' import closure and the computing libraries' versions."""
    modules = (modules,) if isinstance(modules, str) else tuple(sorted(set(modules)))
    libraries = {name: _library_version(name) for name in COMPUTING_LIBRARIES}
    canonical = json.dumps({"modules": code_closure(modules, root), "libraries": libraries}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def stage_key(kind: str, spec: dict) -> str:
    canonical = json.dumps({"kind": kind, "spec": spec}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# How this process takes part in a stage (see the module docstring).
ALONE = "alone"            # computes and commits on its own: a single process, or the main process of a main-only stage
COLLECTIVE = "collective"  # every process runs the block (training); the main process commits
READER = "reader"          # a non-main process handed a main-only stage the main process has finished


# What this process is doing with stages, for the launcher's line after a Ctrl-C: the stages open now (innermost
# last), and the stages open, or the lock waited for, when a KeyboardInterrupt went through them.
_open_stages: list[Stage] = []
interrupted: list[str] = []
# How long a run waits for another run's stage lock before it says what it waits for (then again every so often)
LOCK_NOTICE_SECONDS = 5.0
LOCK_REMINDER_SECONDS = 300.0


def describe(stage: "Stage") -> str:
    return f"stage {stage.kind} ({stage.dir})"


class StageSyncError(RuntimeError):
    """The processes of one job disagree about a stage: the main process failed it, or they see different files."""


@dataclass
class Stage:
    kind: str
    key: str
    dir: Path
    spec: dict
    role: str = ALONE
    opened_at: float = field(default_factory=time.time)

    @property
    def output(self) -> Path:
        return self.dir / "output"

    @property
    def checkpoints(self) -> Path:
        return self.dir / "checkpoints"

    @property
    def done(self) -> bool:
        return (self.dir / DONE_MARKER).is_file() and self.output.exists()

    def metadata(self) -> dict:
        return json.loads((self.dir / DONE_MARKER).read_text())

    def _writes_artifact(self) -> bool:
        if self.role == READER:
            raise StageSyncError(f"stage {self.kind}/{self.key} is computed by the main process; this process "
                                 "only reads it (open it with collective=True if every process must compute it)")
        return self.role == ALONE or distributed.is_main_process()

    def new_output_dir(self) -> Path:
        """A fresh scratch directory to write the artifact into before `commit` moves it in place.

        In a collective stage a non-main process gets its own directory, discarded at commit, so
        that processes saving the same files never write over each other."""
        name = "output.partial" if self._writes_artifact() else f"output.partial.rank{distributed.rank()}"
        scratch = self.dir / name
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        return scratch

    def commit(self, metadata: dict | None = None) -> None:
        if self.role == ALONE:
            self._commit(metadata)
            return
        # Every process arrives before the main process commits: committing deletes checkpoints/ (the
        # generation shards another process may still be reading) and makes `done` true for a process
        # that has not yet asked it (it would skip its part of the block).
        if self._writes_artifact():  # the main process of a collective stage
            distributed.barrier()
            committed = False
            try:
                self._commit(metadata)
                committed = True
            finally:
                distributed.share_from_main(committed)  # the others wait in commit until the stage is done
            return
        shutil.rmtree(self.dir / f"output.partial.rank{distributed.rank()}", ignore_errors=True)
        distributed.barrier()
        if not distributed.share_from_main(None):
            raise StageSyncError(f"committing stage {self.kind}/{self.key} failed on the main process; see its log")
        if not self.done:
            raise StageSyncError(f"stage {self.kind}/{self.key} was committed by the main process but is not visible "
                                 f"here: stages.cache_dir ({self.dir.parent.parent}) must be a filesystem every "
                                 "node shares")

    def _commit(self, metadata: dict | None) -> None:
        scratch = self.dir / "output.partial"
        if scratch.exists():
            shutil.rmtree(self.output, ignore_errors=True)
            os.replace(scratch, self.output)
        record = {"kind": self.kind, "key": self.key, "spec": self.spec, "framework": __version__,
                  "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **(metadata or {})}
        # what computing this stage cost (its own work only; upstream stages have their own records)
        record["compute"] = {"seconds": time.time() - self.opened_at, **record.get("compute", {})}
        temporary = self.dir / (DONE_MARKER + ".tmp")
        temporary.write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
        os.replace(temporary, self.dir / DONE_MARKER)
        shutil.rmtree(self.checkpoints, ignore_errors=True)  # the artifact supersedes them

    def clear(self) -> None:
        (self.dir / DONE_MARKER).unlink(missing_ok=True)
        for name in ("output", "output.partial", "checkpoints"):
            shutil.rmtree(self.dir / name, ignore_errors=True)


@contextmanager
def _acquire(lock: FileLock, what: str) -> Iterator[None]:
    """Hold `lock`; when another run holds it for more than LOCK_NOTICE_SECONDS, say what this run waits for
    (and again every LOCK_REMINDER_SECONDS), and keep waiting: a concurrent run computing the same stage
    finishes it, and this run then reuses it."""
    waited_since, timeout = time.time(), LOCK_NOTICE_SECONDS
    try:
        while True:
            try:
                lock.acquire(timeout=timeout)
                break
            except Timeout:
                log.info("waiting for %s: another run is computing it and holds its lock %s (%.0f s so far)",
                         what, lock.lock_file, time.time() - waited_since)
                timeout = LOCK_REMINDER_SECONDS
    except KeyboardInterrupt:
        if not interrupted:
            interrupted.extend([*(describe(stage) for stage in _open_stages), f"waiting for the lock of {what}"])
        raise
    try:
        yield
    finally:
        lock.release()


class StageStore:
    def __init__(self, root: str | os.PathLike, reuse: bool = True):
        self.root = Path(os.path.expanduser(str(root))).resolve()
        self.reuse = reuse
        self._ledger: dict[str, dict] = {}
        self._shared: set[str] = set()  # ledger ids of the stages opened with shared=True

    def compute_ledger(self) -> list[dict]:
        """Every finished stage this store opened (computed here or reused), in the order they finished, with
        the compute it cost when it was computed (`compute` in its stage.json): what a job's model and
        evaluation rest on."""
        return list(self._ledger.values())

    def record(self, entry: dict) -> dict:
        """The stage.json of a ledger entry (what `commit` wrote: its spec, compute, a trainer's log_history)."""
        return json.loads((self.root / entry["kind"] / entry["key"] / DONE_MARKER).read_text())

    def compute_spent(self, entries: list[dict] | None = None) -> dict:
        """What a model cost, summed over the ledger `entries` it rests on (default: the whole ledger),
        whether computed now or reused; shared stages are listed under `stages` but not summed."""
        entries = self.compute_ledger() if entries is None else entries
        own = [entry for entry in entries if f"{entry['kind']}/{entry['key']}" not in self._shared]
        total = lambda key: sum(entry.get(key) or 0 for entry in own)
        return {"train_tokens": total("train_tokens"), "train_seconds": total("train_seconds"),
                "stage_seconds": total("seconds"), "sampling_generated_tokens": total("generated_tokens"),
                "exploration_rollouts": total("rollouts"), "stages": entries}

    @contextmanager
    def open(self, kind: str, spec: dict, collective: bool = False, code: str | Sequence[str] = (),
             processes_in_key: bool | None = None, shared: bool = False) -> Iterator[Stage]:
        """The stage for (kind, spec, code), noted in the compute ledger once finished (see `_open`).

        `code`: the module(s) that compute the stage (usually the caller's `__name__`); their import
        closure's fingerprint joins the spec (module docstring). Every framework call site names it.
        `processes_in_key` (default: `collective`): the number of processes joins the key, as it must for
        training (it sets the global batch); generation that splits across processes gives the same
        artifact for any number, so it passes False. `shared`: every method's model rests on this stage
        alike (the starting model) or it trains nothing (evaluation), so `compute_spent` leaves it out of
        a method's sums."""
        memory.release_if_worked()  # what the stage computed before this one made is unreachable by now: free it
        opened_at = time.time()
        if code:
            spec = {**spec, "code": code_fingerprint(code)}
        with self._open(kind, spec, collective, collective if processes_in_key is None else processes_in_key) as stage:
            stage.opened_at = opened_at
            _open_stages.append(stage)
            computed = not stage.done
            try:
                yield stage
            except KeyboardInterrupt:
                if not interrupted:  # the innermost stage sees it first
                    interrupted.extend(describe(open_stage) for open_stage in _open_stages)
                raise
            finally:
                _open_stages.remove(stage)
                if computed:
                    memory.note_work()
        if stage.done:
            compute = stage.metadata().get("compute", {})
            entry_id = f"{kind}/{stage.key}"
            self._ledger.setdefault(entry_id, {"kind": kind, "key": stage.key, **compute})
            if shared:
                self._shared.add(entry_id)

    @contextmanager
    def _open(self, kind: str, spec: dict, collective: bool = False, processes_in_key: bool = True) -> Iterator[Stage]:
        """Hold the stage's lock for the block; with reuse off, a finished stage is cleared first.

        `collective=True`: the block needs every process of a multi-process job (it trains); by
        default the main process runs it alone and the others wait (see the module docstring)."""
        distributed.setup()  # joins the launcher's process group, if any; nothing for one process
        if collective and distributed.world_size() > 1 and not distributed.synchronized():
            raise StageSyncError(f"stage {kind} needs every process, but was opened inside a stage that the main "
                                 "process computes alone; open the outer stage with collective=True")
        if not distributed.synchronized():
            with self._locked(kind, spec, ALONE) as stage:
                yield stage
        elif collective:
            keyed = {**spec, "world_size": distributed.world_size()} if processes_in_key else spec
            with self._collective(kind, keyed) as stage:
                yield stage
        else:
            with self._main_only(kind, spec) as stage:
                yield stage

    def _directory(self, kind: str, spec: dict) -> tuple[str, Path]:
        key = stage_key(kind, spec)
        return key, self.root / kind / key

    @contextmanager
    def _locked(self, kind: str, spec: dict, role: str) -> Iterator[Stage]:
        key, directory = self._directory(kind, spec)
        directory.mkdir(parents=True, exist_ok=True)
        with _acquire(FileLock(str(directory) + ".lock"), f"stage {kind} ({directory})"):
            stage = Stage(kind, key, directory, spec, role)
            if not self.reuse and stage.done:
                stage.clear()
            yield stage

    @contextmanager
    def _main_only(self, kind: str, spec: dict) -> Iterator[Stage]:
        key, directory = self._directory(kind, spec)
        if distributed.is_main_process():
            status = "failed"
            try:
                with distributed.main_process_alone(), self._locked(kind, spec, ALONE) as stage:
                    yield stage
                    status = "done" if stage.done else "left unfinished"
            finally:
                distributed.share_from_main(status)  # releases the others, also when the block raised
            return
        status = distributed.share_from_main(None)
        stage = Stage(kind, key, directory, spec, READER)
        if status != "done":
            raise StageSyncError(f"stage {kind}/{key} {status} on the main process (rank 0); see its log")
        if not stage.done:
            raise StageSyncError(f"stage {kind}/{key} was finished by the main process but is not visible here: "
                                 f"stages.cache_dir ({self.root}) must be a filesystem every node shares")
        yield stage

    @contextmanager
    def _collective(self, kind: str, spec: dict) -> Iterator[Stage]:
        key, directory = self._directory(kind, spec)
        if not distributed.is_main_process():
            done_on_main = distributed.share_from_main(None)
            stage = Stage(kind, key, directory, spec, COLLECTIVE)
            if stage.done != done_on_main:  # one process would train while another skips: a hang
                raise StageSyncError(f"stage {kind}/{key} is {'' if done_on_main else 'not '}finished on the main "
                                     f"process but {'' if stage.done else 'not '}here: stages.cache_dir "
                                     f"({self.root}) must be a filesystem every node shares")
            yield stage
            return
        # the main process alone locks: another process of this job blocking on the lock while the
        # main process trains would deadlock the trainer's collectives
        with self._locked(kind, spec, COLLECTIVE) as stage:
            distributed.share_from_main(stage.done)
            yield stage
