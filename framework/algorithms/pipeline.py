"""The data stages every method builds its training set in: JSONL records computed once per spec.

    stored_records     a stage whose output is one JSONL file, `compute() -> (records, summary)`
                       (outcome pairs, step-level pairs: built from upstream stages, no model)
    generated_records  the same for a stage that generates with a model, `generate(engine) -> (records,
                       summary)` (sampled sets, rationale sets, exploration): every process takes part (the
                       batches split across them; their number stays out of the key, the records do not
                       depend on it), every `engine.generate` call writes shards under the stage's
                       checkpoints/ (an interrupted stage resumes from them), and the engine's identity
                       joins the spec

Both return the records as read back from the file, the stage key (what a downstream spec names) and
the stage's record (the summary, the spec, the compute it cost).
"""
from __future__ import annotations

import logging
from typing import Callable

from framework.algorithms import AlgorithmContext
from framework.generation import ShardedEngine, TransformersEngineConfig, engine_identity, open_engine
from framework.jsonl import read_jsonl, write_jsonl
from framework.models import ModelHandle

log = logging.getLogger(__name__)
GENERATION_SHARDS = "generation"  # under the stage's checkpoints/: one directory of shards per generate call


def stored_records(ctx: AlgorithmContext, kind: str, spec: dict, file: str,
                   compute: Callable[[], tuple[list[dict], dict]], *, code: str) -> tuple[list[dict], str, dict]:
    """The records `compute()` returns, written once per spec to `file` of stage `kind` (computed by the main
    process alone; `code`: the module that computes them)."""
    return _records_stage(ctx, kind, spec, file, lambda stage: compute(), code=code, generates=False)


def generated_records(ctx: AlgorithmContext, kind: str, spec: dict, file: str, model: ModelHandle,
                      generate: Callable[[ShardedEngine], tuple[list[dict], dict]], *,
                      code: str) -> tuple[list[dict], str, dict]:
    """The records `generate(engine)` returns with `model` on the run's engine (`ctx.engine`), written once
    per spec to `file` of stage `kind`; the engine is open for the whole call and every one of its
    `generate` calls is sharded (module docstring)."""
    engine_config = ctx.engine or TransformersEngineConfig()

    def compute(stage) -> tuple[list[dict], dict]:
        with open_engine(model, engine_config, ctx.runtime, ctx.seed) as engine:
            return generate(ShardedEngine(engine, stage.checkpoints / GENERATION_SHARDS, engine_config.rows_per_shard))

    spec = {**spec, "engine": engine_identity(engine_config)}
    return _records_stage(ctx, kind, spec, file, compute, code=code, generates=True)


def _records_stage(ctx: AlgorithmContext, kind: str, spec: dict, file: str, compute: Callable, *, code: str,
                   generates: bool) -> tuple[list[dict], str, dict]:
    with ctx.stages.open(kind, spec, code=code, collective=generates, processes_in_key=False) as stage:
        if stage.done:
            log.info("reusing %s %s", kind, stage.output / file)
        else:
            records, summary = compute(stage)
            output = stage.new_output_dir()
            write_jsonl(output / file, records)
            stage.commit(summary)
        return read_jsonl(stage.output / file), stage.key, stage.metadata()
