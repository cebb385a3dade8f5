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
     "error: algorithm=nope: no such option; available: bon_sft, dpo, grpo, none, outcome_dpo, rft, self_explore, sft, soc"),
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
    # judged by the TRL config class before the W&B run starts or the model loads
    ("trainer value", ["+algorithm.trainer.optim=adafactorr"],
     "error: algorithm.trainer.optim is not a valid OptimizerNames (did you mean adafactor?); one of adamw_torch, "),
    # the evaluation list (evaluation.datasets): each entry a dataset option, loaded before training
    ("unknown evaluation dataset", ["+dataset@evaluation.datasets.x=gsm8kk"],
     "error: dataset@evaluation.datasets.x=gsm8kk: no such option; available: arith, gaokao2023en, gsm8k, "),
    ("evaluation entry no dataset", ["+evaluation.datasets.x=5"],
     "error: evaluation.datasets.x: is not a dataset option (got 5)"),
    ("evaluation dataset path", ["+dataset@evaluation.datasets.x=gsm8k", "evaluation.datasets.x.path=/no/such/dir"],
     "error: evaluation.datasets.x: dataset.path: "),
    ("schema as an option", ["algorithm=sft_schema"],
     "error: algorithm=sft_schema: a schema, not an option; available: bon_sft, dpo, grpo, none, outcome_dpo, rft, "),
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
def test_a_sweep_refuses_a_bad_grid_point_before_its_first_job_in_one_line(tmp_path):
    result = launch(["-m", "dataset.test_size=20,-5", "logger=none", "hydra.sweep.dir=sweep"], tmp_path / "cache",
                    tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr == "error: sweep job 1 of 2 (dataset.test_size=-5): dataset.test_size must be >= 1 or null " \
                            "(got -5)\n"
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "cache").exists()  # job 0 never ran


def _good_rows(tmp_path):
    data = tmp_path / "good"
    data.mkdir()
    rows = [{"question": f"Ann has {n} pens. Ann finds 1 more. How many pens does Ann have now?",
             "answer": f"Ann has {n} + 1 = {n + 1} pens.\n#### {n + 1}"} for n in range(4)]
    for split in ("train", "test"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return data


@pytest.mark.slow
def test_a_job_failing_at_run_time_does_not_stop_the_others_and_fails_the_sweep_in_one_line(tmp_path):
    """A missing data directory is found by the job that reads it: the sweep's other jobs still run, each in a
    directory named for its swept value, and the report lists the failed one."""
    good = _good_rows(tmp_path)
    result = launch(["-m", "algorithm=none", f"dataset.path={tmp_path}/missing,{good}", "decoder.max_new_tokens=16",
                     *[o for o in FAST if not o.startswith(("decoder", "dataset"))], "hydra.sweep.dir=sweep"],
                    tmp_path / "cache", tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: dataset.path: '{tmp_path}/missing' is not a directory")
    assert "Traceback" not in result.stderr
    assert [path.parent.name for path in (tmp_path / "sweep").glob("*/results.json")] == ["1_path=good"]
    report = (tmp_path / "sweep" / "report.md").read_text()  # written although the sweep failed
    assert "0_path=missing" in report and "| none | greedy |" in report


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
                     "hydra.sweeper.grids=[]",  # the headline's further grids (beam widths, best-of-16) left out
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


@pytest.mark.slow
def test_ctrl_c_stops_with_where_it_stopped_and_how_to_resume_and_no_traceback(tmp_path):
    cache = tmp_path / "cache"
    args = [*FAST, "algorithm.max_steps=200", "algorithm.save_steps=5", "algorithm.per_device_train_batch_size=8",
            "hydra.run.dir=run"]
    env = {**os.environ, "FRAMEWORK_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    process = subprocess.Popen([sys.executable, "-m", "framework", *args, "logger=wandb"], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list((cache / "sft").glob("*/checkpoints/checkpoint-5")):
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C sends the terminal's foreground process group
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-3000:]
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err
    stage, = (cache / "sft").glob("*/")
    assert f"stopped (Ctrl-C): job run, stage sft ({stage.resolve()})." in err
    assert err.rstrip().endswith("The same command resumes: finished stages are reused, and training goes on from "
                                 "its last checkpoint.")
    assert list(stage.glob("checkpoints/checkpoint-*")) and not (stage / "stage.json").exists()


@pytest.mark.slow
def test_killed_base_pretraining_resumes_and_equals_an_uninterrupted_run(tmp_path):
    """base-tiny checkpoints every 20th of its steps, like any training stage: a rerun after a kill resumes from
    the last complete checkpoint (not from step 0), and its weights are those of a run never killed."""
    from safetensors.torch import load_file

    shrunk = [o for o in FAST if not o.startswith("model.pretrain")]
    args = [*shrunk, "model.pretrain_steps=40", "model.pretrain_examples=64", "model.pretrain_batch_size=8",
            "algorithm=none", "evaluation.diagnostics=false", "hydra.run.dir=run"]
    cache = tmp_path / "cache"
    env = {**os.environ, "FRAMEWORK_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "framework", *args], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list((cache / "base-tiny").glob("*/checkpoints/checkpoint-10")):
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # a crash: no chance to clean up
    process.wait()
    assert not list((cache / "base-tiny").glob("*/stage.json")), "killed before it could finish"

    resumed = launch(args, cache, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    step = int(log.split("resuming base-tiny pretraining from ")[1].split("checkpoint-")[1].split()[0])
    assert 8 <= step < 40  # checkpoint-10 appeared before the kill; a save cut short falls back to checkpoint-8
    uninterrupted = launch([*args[:-1], "hydra.run.dir=run2"], tmp_path / "cache2", tmp_path)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    first, = cache.glob("base-tiny/*/output/model.safetensors")
    second, = (tmp_path / "cache2").glob("base-tiny/*/output/model.safetensors")
    one, two = load_file(first), load_file(second)
    assert one.keys() == two.keys()
    assert max(float((one[key] - two[key]).abs().max()) for key in one) < 1e-5
    print(f"killed at checkpoint {step} of 40 steps; resumed there")
