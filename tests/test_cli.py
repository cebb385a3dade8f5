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


UNKNOWN = "unknown key; {option} has no such key (python -m framework --cfg job {option} lists its keys)"


@pytest.mark.parametrize("case, overrides, expected", [
    ("unknown algorithm", ["algorithm=nope"],
     "error: algorithm=nope: no such option; available: bon_sft, dpo, none, outcome_dpo, rft, self_explore, sft, soc"),
    ("unknown experiment", ["experiment=fast"], "error: experiment=fast: no such option; available: "),
    ("emptied group", ["experiment=null"], "error: experiment needs an option (got 'experiment=null'); experiment=none"),
    ("deleted group", ["~decoder"], "error: decoder needs an option (got '~decoder')"),
    ("beam width 0", ["decoder=beam", "decoder.num_beams=0"], "error: decoder.num_beams must be >= 1"),
    ("negative temperature", ["decoder=sample", "decoder.temperature=-1"], "error: decoder.temperature must be > 0"),
    ("string for a number", ["algorithm.learning_rate=fast"],
     "error: algorithm.learning_rate: Value 'fast' of type 'str' could not be converted to Float"),
    ("missing dataset path", ["dataset.path=/no/such/dir"], "error: dataset.path: '/no/such/dir' is not a directory"),
    ("hub model offline", ["model=hf", "model.name_or_path=someone/some-model"], "error: model.name_or_path"),
    ("row without answer", ["dataset.path={bad_rows}"],
     "error: {bad_rows}/train.jsonl:2: the answer has no final '#### <number>'"),
    # keys no schema knows, added with `+` (which Hydra lets through) or not (which Hydra refuses)
    ("added unknown key", ["+algorithm.foo=1"], "error: algorithm.foo: " + UNKNOWN.format(option="algorithm=sft")),
    ("unknown key", ["algorithm.foo=1"], "error: algorithm.foo: " + UNKNOWN.format(option="algorithm=sft")),
    ("added _target_", ["+algorithm._target_=os.system"],
     "error: algorithm._target_: " + UNKNOWN.format(option="algorithm=sft")),
    ("added top-level key", ["+foo=1"], "error: foo: unknown key; the run config has no such key"),
    ("added nested key", ["algorithm=dpo", "+algorithm.sft.foo=1"],
     "error: algorithm.sft.foo: " + UNKNOWN.format(option="algorithm=dpo")),
    ("added LoRA key", ["+model.lora.foo=1"], "error: model.lora.foo: " + UNKNOWN.format(option="model=tiny")),
    ("misspelt key", ["algorithm.learning_rte=1e-5"],
     "error: algorithm.learning_rte: unknown key (did you mean algorithm.learning_rate?); algorithm=sft has no such"),
])
@pytest.mark.slow
def test_bad_input_fails_fast_with_a_readable_message(tmp_path, case, overrides, expected):
    bad_rows = str(_bad_rows(tmp_path)) if any("{bad_rows}" in o for o in overrides) else ""
    overrides = [o.replace("{bad_rows}", bad_rows) for o in overrides]
    result = launch([*overrides, "logger=none"], tmp_path / "cache", tmp_path)
    assert result.returncode == 2, (case, result.stderr[-2000:])
    assert result.stderr.splitlines() == [result.stderr.strip()], result.stderr[-2000:]  # one line, no traceback
    assert result.stderr.startswith(expected.replace("{bad_rows}", bad_rows)), result.stderr
    assert not (tmp_path / "cache").exists()  # nothing was built or trained


@pytest.mark.slow
def test_a_failed_sweep_job_does_not_stop_the_others_and_fails_the_sweep_in_one_line(tmp_path):
    result = launch(["-m", "algorithm=none", "decoder=beam", "decoder.num_beams=0,1", "decoder.max_new_tokens=16",
                     *[o for o in FAST if not o.startswith("decoder")], "hydra.sweep.dir=sweep"],
                    tmp_path / "cache", tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: decoder.num_beams must be >= 1 (got 0)"]
    assert "Traceback" not in result.stderr
    assert [path.parent.name for path in (tmp_path / "sweep").glob("*/results.json")] == ["1_none_beam_seed0"]
    report = (tmp_path / "sweep" / "report.md").read_text()  # written although the sweep failed
    assert "0_none_beam_seed0" in report and "| none | beam |" in report  # the short label, its full one below
    assert "`beam` is `beam(num_beams=1)`" in report


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_sweep_preset_runs_from_another_directory(tmp_path):
    """The README's `python -m framework -m sweeps=headline`, launched outside the repository (Hydra finds
    sweeps/ by the absolute path in conf/config.yaml); its grid pinned to one cheap job on the command line,
    which Hydra's sweeper lets win over the sweep file's values, while the file still sets the experiment."""
    result = launch(["-m", "sweeps=headline", "seed=0", "algorithm=none", "decoder=greedy", *FAST,
                     "hydra.sweep.dir=sweep"], tmp_path / "cache", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = [path.parent for path in (tmp_path / "sweep").glob("*/results.json")]
    assert len(jobs) == 1
    assert "experiment=headline" in (jobs[0] / ".hydra" / "overrides.yaml").read_text()


@pytest.mark.slow
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
