"""Read an offline W&B run back: the records of its `run-<id>.wandb` file, for tests.

Hand-written: wandb 0.31 writes this file from its Go core and ships no Python reader for it (the older
`wandb.sdk.internal.datastore` is gone). The format is LevelDB's log: a 7-byte header (`:W&B`, magic 0xBEE1,
version 0), then 32 KiB blocks of chunks, each `crc32 (4) | length (2) | type (1) | data`, where type 1 is a
whole record and 2, 3, 4 the first, middle and last piece of one; a record is a `wandb_internal_pb2.Record`.
Checksums are not verified: a test reads a file the run has just closed.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK_BYTES = 32 * 1024
HEADER_BYTES = 7
CHUNK_HEADER_BYTES = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    """Every Record in a .wandb file, in the order written."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is no W&B run file"
    position, pieces = HEADER_BYTES, b""
    while position + CHUNK_HEADER_BYTES <= len(data):
        if BLOCK_BYTES - position % BLOCK_BYTES < CHUNK_HEADER_BYTES:  # a block's tail too short for a chunk
            position += BLOCK_BYTES - position % BLOCK_BYTES
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + CHUNK_HEADER_BYTES])
        position += CHUNK_HEADER_BYTES
        if kind == 0:  # zero padding to the end of the block
            position += BLOCK_BYTES - position % BLOCK_BYTES if position % BLOCK_BYTES else 0
            continue
        pieces += data[position:position + length]
        position += length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            pieces = b""
            yield record


class OfflineRun:
    """An offline run's config (key -> value, JSON-decoded) and history (one dict per `log` call)."""

    def __init__(self, run_dir: Path):
        (file,) = Path(run_dir).glob("run-*.wandb")
        self.config: dict = {}
        self.history: list[dict] = []
        for record in records(file):
            kind = record.WhichOneof("record_type")
            updates = (record.run.config.update if kind == "run" else record.config.update if kind == "config"
                       else ())
            for item in updates:
                self.config["/".join(item.nested_key) or item.key] = json.loads(item.value_json)
            if kind == "history":
                self.history.append({"/".join(item.nested_key) or item.key: json.loads(item.value_json)
                                     for item in record.history.item})

    def series(self, prefix: str) -> list[dict]:
        """The history rows with keys under `prefix` (`train/sft/`), those keys only."""
        rows = [{key: value for key, value in row.items() if key.startswith(prefix)} for row in self.history]
        return [row for row in rows if row]


def offline_run(output_dir: Path) -> OfflineRun:
    """The one offline run a job wrote under `output_dir/wandb`."""
    (run_dir,) = Path(output_dir, "wandb").glob("offline-run-*")
    return OfflineRun(run_dir)
