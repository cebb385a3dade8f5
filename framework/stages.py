"""Stage outputs (base models, trained models, ...) stored once, keyed by what determines them.

A stage lives in `<cache_dir>/<kind>/<key>/`, where key = hash(kind, the spec that determines the
output, the framework version). Inside:

    checkpoints/   trainer checkpoints while the stage runs; a re-run of the same command resumes here
    output/        the finished artifact, moved into place atomically
    stage.json     written last: the spec and metadata; its presence means "done"

A file lock per stage makes concurrent sweep jobs that need the same stage wait for one computation
instead of racing; `stages.reuse=false` recomputes and overwrites. (The `filelock` package does the
locking; it is the lock huggingface_hub and datasets already use.)
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from filelock import FileLock

from framework import __version__

DONE_MARKER = "stage.json"


def stage_key(kind: str, spec: dict) -> str:
    canonical = json.dumps({"kind": kind, "spec": spec, "framework": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass
class Stage:
    kind: str
    key: str
    dir: Path
    spec: dict

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

    def new_output_dir(self) -> Path:
        """A fresh scratch directory to write the artifact into before `commit` moves it in place."""
        scratch = self.dir / "output.partial"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        return scratch

    def commit(self, metadata: dict | None = None) -> None:
        scratch = self.dir / "output.partial"
        if scratch.exists():
            shutil.rmtree(self.output, ignore_errors=True)
            os.replace(scratch, self.output)
        record = {"kind": self.kind, "key": self.key, "spec": self.spec, "framework": __version__,
                  "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **(metadata or {})}
        temporary = self.dir / (DONE_MARKER + ".tmp")
        temporary.write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
        os.replace(temporary, self.dir / DONE_MARKER)
        shutil.rmtree(self.checkpoints, ignore_errors=True)  # the artifact supersedes them

    def clear(self) -> None:
        (self.dir / DONE_MARKER).unlink(missing_ok=True)
        for name in ("output", "output.partial", "checkpoints"):
            shutil.rmtree(self.dir / name, ignore_errors=True)


class StageStore:
    def __init__(self, root: str | os.PathLike, reuse: bool = True):
        self.root = Path(os.path.expanduser(str(root))).resolve()
        self.reuse = reuse

    @contextmanager
    def open(self, kind: str, spec: dict) -> Iterator[Stage]:
        """Hold the stage's lock for the block; with reuse off, a finished stage is cleared first."""
        key = stage_key(kind, spec)
        directory = self.root / kind / key
        directory.mkdir(parents=True, exist_ok=True)
        with FileLock(str(directory) + ".lock"):
            stage = Stage(kind, key, directory, spec)
            if not self.reuse and stage.done:
                stage.clear()
            yield stage
