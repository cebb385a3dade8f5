"""The generation engine's stage plumbing: shards make an interrupted generation resume where it stopped (a
killed process, not a mock), and the resumed artifact equals an uninterrupted run's."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import FAST, PROMPTS
from framework.generation import Candidate, Request, ShardedEngine, TransformersEngine, generate_sharded


class CountingEngine:
    """Answers each prompt with its own text; records which prompts it was asked for."""

    def __init__(self):
        self.asked: list[str] = []

    def generate(self, prompts, request, *, seed, keys=None, progress=True):
        self.asked.extend(prompts)
        return [[Candidate(f"{prompt}|{key}", 1, -1.0, True, [1])] for prompt, key in zip(prompts, keys)]

    def close(self):
        pass


def test_written_shards_are_read_not_generated_again(tmp_path):
    prompts = [f"prompt {i:02d}" for i in range(10)]
    request = Request(max_new_tokens=4)
    first = CountingEngine()
    full = generate_sharded(first, prompts, request, seed=0, rows_per_shard=3, shard_dir=tmp_path)
    shards = tmp_path / "3-prompts-per-shard"
    assert sorted(first.asked) == prompts and len(list(shards.glob("shard-*.jsonl"))) == 4
    (shards / "shard-000002.jsonl").unlink()  # as if the run had been killed before this shard
    again = CountingEngine()
    assert generate_sharded(again, prompts, request, seed=0, rows_per_shard=3, shard_dir=tmp_path) == full
    assert len(again.asked) == 3  # one shard generated again


def test_shards_hold_rows_not_prompts_and_split_small_stages_across_processes():
    from framework.generation import shard_plan

    prompts = [f"prompt {i:02d}" + "x" * i for i in range(10)]  # longer prompts later: they come first
    assert shard_plan(prompts, rows_per_prompt=4, rows_per_shard=12) == [[9, 8, 7], [6, 5, 4], [3, 2, 1], [0]]
    assert shard_plan(prompts, rows_per_prompt=1, rows_per_shard=4096, processes=2) == [[9, 8, 7, 6, 5],
                                                                                       [4, 3, 2, 1, 0]]
    assert shard_plan(prompts, rows_per_prompt=50, rows_per_shard=16) == [[i] for i in range(9, -1, -1)]


def test_each_call_of_a_sharded_engine_has_its_own_directory(model_and_tokenizer, tmp_path):
    engine = ShardedEngine(TransformersEngine(*model_and_tokenizer), tmp_path, rows_per_shard=2)
    greedy = engine.generate(PROMPTS, Request(max_new_tokens=6), seed=0)
    sampled = engine.generate(PROMPTS, Request(max_new_tokens=6, samples_per_prompt=2, temperature=1.0), seed=0)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["call-000", "call-001"]
    assert len(greedy[0]) == 1 and len(sampled[0]) == 2


SAMPLING = ["algorithm=bon_sft", "algorithm.starting_point=base", "algorithm.samples_per_prompt=4",
            "algorithm.train_prompts=48", "engine.rows_per_shard=8", "algorithm.max_new_tokens=24",
            "algorithm.require_finished=false", "algorithm.max_steps=1", "algorithm.per_device_train_batch_size=8",
            "dataset.train_size=48"]


def _environment(cache):
    env = {**os.environ, "FRAMEWORK_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


@pytest.mark.slow
def test_a_killed_sampling_stage_resumes_from_its_shards_and_equals_an_uninterrupted_run(tmp_path):
    args = [sys.executable, "-m", "framework", *FAST, *SAMPLING, "hydra.run.dir=run"]
    cache = tmp_path / "cache"
    process = subprocess.Popen(args, cwd=tmp_path, env=_environment(cache), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    shards = lambda: list(cache.glob("samples/*/checkpoints/generation/call-000/*/shard-*.jsonl"))  # noqa: E731
    while time.time() < deadline and len(shards()) < 4:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # a crash mid-stage: no chance to clean up
    process.wait()
    written = len(shards())
    assert 4 <= written < 24 and not list(cache.glob("samples/*/stage.json")), "killed while sampling"

    resumed = subprocess.run(args, cwd=tmp_path, env=_environment(cache), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert "resuming generation:" in log and "of 24 shards already written" in log
    reused = int(log.split("resuming generation: ")[1].split(" of ")[0])
    assert reused >= written  # every complete shard was read back (the kill may have landed after one more)

    uninterrupted = subprocess.run([*args[:-1], "hydra.run.dir=run2"], cwd=tmp_path, env=_environment(tmp_path / "c2"),
                                   capture_output=True, text=True, timeout=300)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    first, = cache.glob("samples/*/output/samples.jsonl")
    second, = (tmp_path / "c2").glob("samples/*/output/samples.jsonl")
    assert first.read_text() == second.read_text()
    print(f"killed after {written} of 24 shards; the rerun read {reused} and generated {24 - reused}")
    assert json.loads((tmp_path / "run" / "results.json").read_text())["algorithm"] == "bon_sft"
