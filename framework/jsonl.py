"""JSONL artifacts: one JSON object a line, UTF-8 as written (`ensure_ascii=False`), each line ending in a newline.

A leaf module (the standard library only), so that any stage, report or loader can use it without
importing what computes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable


def write_jsonl(path: Path, records: Iterable[dict]) -> None:
    """Write `records` to `path`, through a temporary file beside it: a reader sees the whole file or none."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    temporary.replace(path)


def read_jsonl(path: Path) -> list[dict]:
    """The records of `path`, in order; blank lines are skipped."""
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
