"""The launcher as a user runs it: bad input exits non-zero with a readable message before any
training; a multirun writes one result per job; a killed training run resumes with the same command."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FAST, FAST_TRAINING, REPO


def launch(args, cache, cwd, **kwargs):
    env = {**os.environ, "FRAMEWORK_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "framework", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600, **kwargs)


def _bad_rows(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text(json.dumps({"question": "q?", "answer": "1 + 1 = 2\n#### 2"}) + "\n" +
                                      json.dumps({"question": "q2?", "answer": "no final answer here"}) + "\n")
    (data / "test.jsonl").write_text(json.dumps({"question": "q?", "answer": "#### 2"}) + "\n")
    return data


@pytest.mark.parametrize("case, overrides, expected", [
    ("unknown algorithm", ["algorithm=nope"], "Could not find 'algorithm/nope'"),
    ("unknown budget", ["budget=fast"], "Could not find 'budget/fast'"),
    ("emptied group", ["budget=null"], "error: budget needs an option (got 'budget=null')"),
    ("deleted group", ["~decoder"], "error: decoder needs an option (got '~decoder')"),
    ("beam width 0", ["decoder=beam", "decoder.num_beams=0"], "decoder.num_beams must be >= 1"),
    ("negative temperature", ["decoder=sample", "decoder.temperature=-1"], "decoder.temperature must be > 0"),
    ("string for a number", ["algorithm.learning_rate=fast"], "learning_rate"),
    ("missing dataset path", ["dataset.path=/no/such/dir"], "dataset.path: '/no/such/dir' is not a directory"),
    ("hub model offline", ["model=hf", "model.name_or_path=someone/some-model"], "model.name_or_path"),
    ("row without answer", ["dataset.path={bad_rows}"], "train.jsonl:2: the answer has no final '#### <number>'"),
])
def test_bad_input_fails_fast_with_a_readable_message(tmp_path, case, overrides, expected):
    overrides = [o.replace("{bad_rows}", str(_bad_rows(tmp_path))) if "{bad_rows}" in o else o for o in overrides]
    result = launch([*overrides, "logger=none"], tmp_path / "cache", tmp_path)
    assert result.returncode != 0, case
    assert expected in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "cache").exists()  # nothing was built or trained


def test_multirun_writes_one_result_per_job_and_a_table(tmp_path):
    # `algorithm=none,sft` at full size is the README's command; presets keep SFT to two steps here.
    result = launch(["-m", f"hydra.searchpath=[file://{REPO}/tests/conf]", "experiment=fast_none,fast_sft",
                     "decoder=greedy,beam", "decoder.max_new_tokens=16",
                     *[o for o in FAST if not o.startswith("decoder")], "hydra.sweep.dir=sweep"],
                    tmp_path / "cache", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    results = sorted((tmp_path / "sweep").glob("*/results.json"))
    assert len(results) == 4
    combos = {(json.loads(f.read_text())["algorithm"], json.loads(f.read_text())["decoder"]) for f in results}
    assert combos == {("none", "greedy"), ("none", "beam"), ("sft", "greedy"), ("sft", "beam")}
    assert "| algorithm | decoder |" in result.stdout and (tmp_path / "sweep" / "comparison.md").is_file()


def test_killed_training_resumes_with_the_same_command(tmp_path):
    cache = tmp_path / "cache"
    args = [*FAST, "algorithm.max_steps=60", "algorithm.save_steps=5", "algorithm.per_device_train_batch_size=8",
            "hydra.run.dir=run"]
    env = {**os.environ, "FRAMEWORK_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "framework", *args], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list((cache / "sft").glob("*/checkpoints/checkpoint-10")):
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # a crash: no chance to clean up
    process.wait()
    stage_dirs = list((cache / "sft").glob("*"))
    assert stage_dirs and not list((cache / "sft").glob("*/stage.json")), "killed before it could finish"

    result = launch(args, cache, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming sft from" in result.stdout + result.stderr
    stage = json.loads(next((cache / "sft").glob("*/stage.json")).read_text())
    assert stage["global_step"] == 60
