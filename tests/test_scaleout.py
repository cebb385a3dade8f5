"""Scale-out: the accelerate configs in launch/accelerate, the SLURM/local launcher presets, the stage
store's rank logic (ranks simulated by threads), and real 2-process runs on CPU (gloo)."""
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import FAST, REPO, compose_config
from framework import distributed, tracking
from framework.errors import ConfigError
from framework.stages import READER, StageStore, StageSyncError, stage_key

LAUNCH = REPO / "launch" / "accelerate"

# name -> (distributed_type, the accelerate config section, the keys it must hold)
ACCELERATE_CONFIGS = {
    "ddp": ("MULTI_GPU", None, {}),
    "deepspeed_zero2": ("DEEPSPEED", "deepspeed_config", {"zero_stage": 2, "offload_optimizer_device": "none"}),
    "deepspeed_zero3": ("DEEPSPEED", "deepspeed_config",
                        {"zero_stage": 3, "zero3_save_16bit_model": True, "zero3_init_flag": False}),
    "fsdp": ("FSDP", "fsdp_config", {"fsdp_version": 2, "fsdp_state_dict_type": "FULL_STATE_DICT",
                                     "fsdp_cpu_ram_efficient_loading": False, "fsdp_reshard_after_forward": True}),
}


def test_every_accelerate_config_is_covered_here():
    assert sorted(path.stem for path in LAUNCH.glob("*.yaml")) == sorted(ACCELERATE_CONFIGS)


@pytest.mark.parametrize("name", sorted(ACCELERATE_CONFIGS))
def test_accelerate_config_parses_with_accelerates_loader(name):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    distributed_type, section, keys = ACCELERATE_CONFIGS[name]
    config = load_config_from_file(str(LAUNCH / f"{name}.yaml"))  # raises on unknown keys
    assert config.distributed_type == DistributedType[distributed_type]
    assert config.mixed_precision == "no"  # model.precision decides, not the launcher
    assert config.num_processes == -1  # not set: accelerate asks for --num_processes
    assert config.num_machines == 1 and not config.use_cpu
    if section:
        assert {key: getattr(config, section)[key] for key in keys} == keys


def _launch_args(name, *extra):
    """What `accelerate launch` makes of a command line: its own parser and validation (no processes start)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(LAUNCH / f"{name}.yaml"), *extra])
    return _validate_launch_command(args)


def _launch_environment(args, defaults) -> dict:
    """The environment `accelerate launch` gives each process (as in accelerate's launch_command)."""
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        return prepare_deepspeed_cmd_env(args)[1]
    return prepare_multi_gpu_env(args)


@pytest.mark.parametrize("name", sorted(ACCELERATE_CONFIGS))
def test_accelerate_launch_hands_the_overrides_to_the_framework(name, tmp_path):
    overrides = ["algorithm=sft", "decoder=beam", "algorithm.gradient_accumulation_steps=4",
                 f"hydra.run.dir={tmp_path}/run"]
    args, defaults, _ = _launch_args(name, "--num_processes", "4", "-m", "framework", *overrides)
    assert args.module and args.training_script == "framework" and args.training_script_args == overrides
    assert args.num_processes == 4
    env = _launch_environment(args, defaults)
    assert env["ACCELERATE_MIXED_PRECISION"] == "no"
    # DeepSpeed's accumulation and clipping stay "auto": the trainer takes them from the algorithm's keys
    assert "ACCELERATE_GRADIENT_ACCUMULATION_STEPS" not in env and "ACCELERATE_GRADIENT_CLIPPING" not in env
    if name.startswith("deepspeed"):
        assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
        assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == name[-1]
    if name == "deepspeed_zero3":
        assert env["ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL"] == "true"
    if name == "fsdp":
        assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"

    cfg = compose_config(args.training_script_args, tmp_path / "cache")  # the framework side of the same line
    assert (cfg.algorithm.name, cfg.decoder.name, cfg.algorithm.gradient_accumulation_steps) == ("sft", "beam", 4)
    from framework.config import to_validated

    to_validated(cfg)


def test_fsdp_environment_gives_the_plugin_the_trainer_uses(monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin

    args, defaults, _ = _launch_args("fsdp", "--num_processes", "2", "-m", "framework")
    for key, value in _launch_environment(args, defaults).items():
        if key.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()  # what the Accelerator builds from that environment
    assert plugin.fsdp_version == 2 and plugin.state_dict_type.name == "FULL_STATE_DICT"
    assert plugin.reshard_after_forward is True and plugin.cpu_ram_efficient_loading is False


def test_accelerate_asks_for_the_number_of_processes():
    with pytest.raises(ValueError, match="--num_processes"):
        _launch_args("ddp", "-m", "framework")


# ------------------------------------------------------------------------------------ hydra launchers
def _launcher_config(overrides):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from framework.__main__ import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


def test_slurm_preset_selects_submitits_slurm_launcher_and_writes_the_sbatch_script(tmp_path, monkeypatch):
    launcher = _launcher_config(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=2",
                                 "hydra.launcher.timeout_min=90", f"hydra.sweep.dir={tmp_path}/sweep"])
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher["tasks_per_node"] == 2  # one process per GPU, following gpus_per_node
    assert launcher["max_num_timeout"] == 3 and launcher["submitit_folder"] == f"{tmp_path}/sweep/.submitit/%j"

    # The sbatch script submitit would submit, built by submitit itself; a stand-in `srun` on PATH
    # lets its Slurm executor start on a machine without SLURM.
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    params = {key: value for key, value in launcher.items() if key != "_target_"}
    executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    shared = set(OmegaConf.structured(BaseQueueConf).keys())  # the plugin's own mapping of its keys
    executor.update_parameters(**{key if key in shared else f"slurm_{key}": value for key, value in params.items()})
    script = executor._executor._make_submission_file_text("python -m framework", "uid")
    for line in ("--partition=gpu", "--gpus-per-node=2", "--ntasks-per-node=2", "--time=90", "--cpus-per-task=8",
                 "--job-name=framework"):
        assert f"#SBATCH {line}\n" in script, script
    assert "export SLURM_KILL_BAD_EXIT=1\n" in script  # one failed process ends the job's others


def test_local_preset_selects_submitits_local_launcher(tmp_path):
    launcher = _launcher_config(["hydra/launcher=local", f"hydra.sweep.dir={tmp_path}"])
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"
    assert launcher["tasks_per_node"] == 1


def test_submitit_tasks_become_torch_ranks(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE"):
        monkeypatch.setenv(key, "")  # recorded, so the values exported below are undone after the test
        monkeypatch.delenv(key)
    for key, value in {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": "1234", "SUBMITIT_LOCAL_NTASKS": "2",
                       "SUBMITIT_LOCAL_GLOBALID": "1", "SUBMITIT_LOCAL_LOCALID": "1",
                       "SUBMITIT_LOCAL_JOB_NUM_NODES": "1", "SUBMITIT_LOCAL_NODEID": "0"}.items():
        monkeypatch.setenv(key, value)
    distributed._export_submitit_environment()
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("1", "2", "1")
    assert os.environ["MASTER_ADDR"] and int(os.environ["MASTER_PORT"]) > 0
    assert distributed.launched_world_size() == 2


def test_device_pinned_to_one_gpu_is_refused_with_several_processes(monkeypatch):
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="device: 'cuda:1' pins all 2 processes to one GPU"):
        distributed.check_device("cuda:1")
    distributed.check_device("cuda")
    distributed.check_device("auto")
    monkeypatch.setenv("WORLD_SIZE", "1")
    distributed.check_device("cuda:1")


# ------------------------------------------------------------------- rank logic, ranks as threads
class Ranks:
    """Processes of one job simulated by threads: `rank()` per thread, and the main process's broadcast
    as a real rendezvous (every rank blocks until all arrive, as torch.distributed's does)."""

    def __init__(self, monkeypatch, size=2):
        self.size, self.local, self.slot = size, threading.local(), None
        self.barrier = threading.Barrier(size, timeout=20)  # a missing rank fails the test instead of hanging it
        monkeypatch.setattr(distributed, "rank", lambda: self.local.rank)
        monkeypatch.setattr(distributed, "world_size", lambda: size)
        monkeypatch.setattr(distributed, "_broadcast_from_main", self._broadcast)

    def _broadcast(self, value):
        if self.local.rank == 0:
            self.slot = value
        self.barrier.wait()  # everyone is here: the main process's value is in place
        value = self.slot
        self.barrier.wait()  # everyone has read it before a later broadcast overwrites it
        return value

    def run(self, body) -> list:
        """body(rank) on every rank at once; per rank its return value or the exception it raised."""
        outcomes = [None] * self.size

        def target(rank):
            self.local.rank = rank
            try:
                outcomes[rank] = body(rank)
            except Exception as error:  # noqa: BLE001 - handed to the test
                outcomes[rank] = error

        threads = [threading.Thread(target=target, args=(rank,)) for rank in range(self.size)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads), "a rank hung"
        return outcomes


def test_main_only_stage_is_computed_by_the_main_process_and_read_by_the_others(tmp_path, monkeypatch):
    ranks, computed = Ranks(monkeypatch), []

    def body(rank):
        with StageStore(tmp_path).open("samples", {"prompts": 8}) as stage:
            if not stage.done:
                computed.append(rank)
                time.sleep(0.2)  # a rank that did not wait would now find the stage unfinished
                (stage.new_output_dir() / "samples.jsonl").write_text(f"sampled by rank {rank}")
                stage.commit({"samples": 16})
            return (stage.output / "samples.jsonl").read_text(), stage.role, stage.key

    outcomes = ranks.run(body)
    assert computed == [0]
    assert [outcome[0] for outcome in outcomes] == ["sampled by rank 0"] * 2
    assert outcomes[1][1] == READER
    assert outcomes[0][2] == stage_key("samples", {"prompts": 8})  # the same key as a single process's


def test_a_failure_on_the_main_process_releases_the_waiting_ranks(tmp_path, monkeypatch):
    ranks = Ranks(monkeypatch)

    def body(rank):
        with StageStore(tmp_path).open("samples", {}) as stage:
            if not stage.done:
                raise ValueError("out of memory while sampling")
            return "read"

    outcomes = ranks.run(body)
    assert isinstance(outcomes[0], ValueError)
    assert isinstance(outcomes[1], StageSyncError) and "failed on the main process" in str(outcomes[1])


def test_collective_stage_runs_on_every_rank_and_keeps_the_main_processs_artifact(tmp_path, monkeypatch):
    ranks, trained = Ranks(monkeypatch), []

    def body(rank):
        with StageStore(tmp_path).open("sft", {"lr": 1e-4}, collective=True) as stage:
            if not stage.done:
                trained.append(rank)
                scratch = stage.new_output_dir()
                (scratch / "weights").write_text(f"saved by rank {rank}")
                stage.commit({"global_step": 2})
            return stage.done, (stage.output / "weights").read_text(), stage.spec, stage.key, stage.dir

    outcomes = ranks.run(body)
    assert sorted(trained) == [0, 1]
    assert [outcome[:2] for outcome in outcomes] == [(True, "saved by rank 0")] * 2
    spec, key, directory = outcomes[0][2:]
    assert spec == {"lr": 1e-4, "world_size": 2}  # the global batch depends on the number of processes
    assert key == stage_key("sft", spec) != stage_key("sft", {"lr": 1e-4})
    assert sorted(path.name for path in directory.iterdir()) == ["output", "stage.json"]  # rank 1's scratch is gone

    trained.clear()
    assert [outcome[1] for outcome in ranks.run(body)] == ["saved by rank 0"] * 2 and trained == []  # reused


def test_collective_commit_waits_until_every_rank_is_done_with_the_stages_files(tmp_path, monkeypatch):
    """A slow rank 1 still reads a generation shard in checkpoints/ and only then asks `stage.done`:
    rank 0's commit (which deletes checkpoints/ and marks the stage done) must wait for it."""
    ranks, trained = Ranks(monkeypatch), []

    def body(rank):
        with StageStore(tmp_path).open("samples", {}, collective=True, processes_in_key=False) as stage:
            if rank == 0:
                stage.checkpoints.mkdir(parents=True)
                (stage.checkpoints / "shard-0").write_text("batch 0")
            distributed.barrier()  # as generate_sharded's barrier before every rank reads every shard
            if rank == 1:
                time.sleep(0.3)
            shard = (stage.checkpoints / "shard-0").read_text()
            if not stage.done:
                trained.append(rank)
                (stage.new_output_dir() / "samples.jsonl").write_text(shard)
                stage.commit()
            return (stage.output / "samples.jsonl").read_text()

    outcomes = ranks.run(body)
    assert outcomes == ["batch 0", "batch 0"] and sorted(trained) == [0, 1]
    assert not (tmp_path / "samples" / stage_key("samples", {}) / "checkpoints").exists()


def test_collective_stage_inside_a_main_only_stage_is_refused(tmp_path, monkeypatch):
    ranks, store = Ranks(monkeypatch), StageStore(tmp_path)

    def body(rank):
        with store.open("samples", {}) as outer:
            if not outer.done:
                with store.open("sft", {}, collective=True):
                    pass

    outcomes = ranks.run(body)
    assert isinstance(outcomes[0], StageSyncError) and "needs every process" in str(outcomes[0])
    assert isinstance(outcomes[1], StageSyncError)


def test_reuse_false_recomputes_on_the_main_process_only(tmp_path, monkeypatch):
    with StageStore(tmp_path).open("samples", {}) as stage:  # a finished stage from an earlier single-process run
        (stage.new_output_dir() / "samples.jsonl").write_text("old")
        stage.commit()
    ranks = Ranks(monkeypatch)

    def body(rank):
        with StageStore(tmp_path, reuse=False).open("samples", {}) as stage:
            if not stage.done:
                (stage.new_output_dir() / "samples.jsonl").write_text(f"new from rank {rank}")
                stage.commit()
            return (stage.output / "samples.jsonl").read_text()

    assert ranks.run(body) == ["new from rank 0"] * 2


def test_ranks_that_do_not_share_the_cache_directory_stop_with_a_clear_error(tmp_path, monkeypatch):
    finished = StageStore(tmp_path / "node0")
    with finished.open("sft", {"world_size": 2}) as stage:  # what a collective stage's spec holds with 2 processes
        (stage.new_output_dir() / "weights").write_text("w")
        stage.commit()
    ranks = Ranks(monkeypatch)

    def body(rank):  # rank 0 sees node0's cache, rank 1 an empty one
        with StageStore(tmp_path / f"node{rank}").open("sft", {}, collective=True) as stage:
            return stage.done

    outcomes = ranks.run(body)
    assert outcomes[0] is True
    assert isinstance(outcomes[1], StageSyncError) and "filesystem every node shares" in str(outcomes[1])


def test_the_evaluation_result_reaches_the_waiting_ranks(monkeypatch):
    ranks = Ranks(monkeypatch)

    def body(rank, failed):
        if rank == 0:
            distributed.release_waiting({"accuracy": 0.5}, failed, "decoding the test split")
            return None
        return distributed.wait_for_main("decoding the test split")

    assert ranks.run(lambda rank: body(rank, False)) == [None, {"accuracy": 0.5}]
    outcome = ranks.run(lambda rank: body(rank, True))[1]
    assert isinstance(outcome, distributed.MainProcessFailed) and "decoding the test split failed" in str(outcome)


def test_one_process_needs_no_process_group(tmp_path):
    import torch.distributed as dist

    assert distributed.world_size() == 1 and distributed.is_main_process()
    with StageStore(tmp_path).open("sft", {"lr": 1}, collective=True) as stage:
        assert stage.spec == {"lr": 1}  # no world_size key: single-process keys are unchanged
        stage.commit()
    assert not dist.is_initialized()
    assert distributed.share_from_main("x") == "x"


def test_only_the_main_process_starts_a_wandb_run(tmp_path, monkeypatch):
    from framework.config import WandbLoggerConfig

    monkeypatch.setattr(distributed, "rank", lambda: 1)
    tracker = tracking.start(WandbLoggerConfig(mode="offline"), {}, tmp_path, "run", None, "sft")
    assert type(tracker) is tracking.NullTracker and tracker.report_to == "none"
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------- real processes (gloo on CPU)
TINY = [o for o in FAST if not o.startswith("model.pretrain_steps")] + ["model.pretrain_steps=0"]
SHARPENING = ["algorithm=bon_sft", "algorithm.starting_point=base", "algorithm.samples_per_prompt=2",
              "algorithm.train_prompts=8", "algorithm.max_new_tokens=16", "algorithm.require_finished=false",
              "algorithm.max_steps=2", "algorithm.per_device_train_batch_size=4", "algorithm.save_steps=1"]


def _environment(cache):
    env = {**os.environ, "FRAMEWORK_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "WANDB_MODE": "offline"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


@pytest.mark.slow
def test_two_processes_split_the_sampling_train_once_and_write_one_result(tmp_path):
    """The sampled set's shards are split across the two processes and gathered: the artifact equals a
    single process's, byte for byte (counter-based sampling: a sample does not depend on its batch)."""
    # pretrain_steps=0: the tiny base model needs no training here (docs/embedded-task.md: the base-tiny stage)
    split = ["engine.rows_per_shard=4"]  # 4 shards of the 8 prompts x 2 samples: 2 per process
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "framework", *SHARPENING, *TINY, *split, "logger=wandb", "hydra.run.dir=run"]
    result = subprocess.run(command, cwd=tmp_path, env=_environment(tmp_path / "cache"), capture_output=True,
                            text=True, timeout=240)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert output.count("process 0 of 2") == 1 and output.count("process 1 of 2") == 1
    assert output.count("sampling 2 responses for each of 8 training prompts") == 2  # both processes sample
    assert output.count("BoN-SFT on 8 best-of-2 targets") == 2  # every process trains
    run = tmp_path / "run"
    assert json.loads((run / "results.json").read_text())["metrics"]["num_problems"] == 6
    assert (run / "config.yaml").is_file() and len(list((run / "wandb").glob("offline-run-*"))) == 1
    samples, = (tmp_path / "cache" / "samples").glob("*/stage.json")
    assert "world_size" not in json.loads(samples.read_text())["spec"]  # any number of processes: one artifact
    trained, = (tmp_path / "cache" / "bon_sft").glob("*/stage.json")
    assert json.loads(trained.read_text())["spec"]["world_size"] == 2
    assert not list((tmp_path / "cache").glob("*/*/output.partial*"))
    # one process, its own cache: the same sampled set
    single = subprocess.run([sys.executable, "-m", "framework", *SHARPENING, *TINY, *split, "logger=none",
                             "hydra.run.dir=run1"], cwd=tmp_path, env=_environment(tmp_path / "cache1"),
                            capture_output=True, text=True, timeout=240)
    assert single.returncode == 0, (single.stdout + single.stderr)[-3000:]
    alone, = (tmp_path / "cache1" / "samples").glob("*/output/samples.jsonl")
    together, = (tmp_path / "cache" / "samples").glob("*/output/samples.jsonl")
    # (their stage keys differ only through the base model's: a trained stage's key holds its process count)
    assert together.read_text() == alone.read_text()
    # the premises' greedy pass was split too, and measures what one process measures
    premises = [json.loads((tmp_path / name / "results.json").read_text())["premises"] for name in ("run", "run1")]
    assert "greedy_accuracy" in premises[0] and premises[0] == premises[1]


@pytest.mark.slow  # about a minute on 2 cores: one job as two processes, then as one
def test_two_processes_split_the_evaluation_and_write_what_one_process_writes(tmp_path):
    """Both processes decode their shards of the test split (best-of-4 and its greedy reference: two sharded
    calls); the main process scores them. The generations equal a single process's, byte for byte."""
    job = ["algorithm=none", "decoder=bon", "decoder.samples_per_prompt=4", "decoder.curve_draws=5", *TINY,
           "engine.rows_per_shard=2"]  # shards of 2 rows: the same shards for 1 and 2 processes, 3 to 12 of them
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "framework", *job, "hydra.run.dir=run"]
    result = subprocess.run(command, cwd=tmp_path, env=_environment(tmp_path / "cache"), capture_output=True,
                            text=True, timeout=400)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert output.count("decoding 6 test prompts: its shards on rank 0 of 2") == 1
    assert output.count("decoding 6 test prompts: its shards on rank 1 of 2") == 1  # the other process generates too
    single = subprocess.run([sys.executable, "-m", "framework", *job, "hydra.run.dir=run1"], cwd=tmp_path,
                            env=_environment(tmp_path / "cache1"), capture_output=True, text=True, timeout=400)
    assert single.returncode == 0, (single.stdout + single.stderr)[-3000:]
    together, alone = (tmp_path / "run" / "generations.jsonl"), (tmp_path / "run1" / "generations.jsonl")
    assert together.read_bytes() == alone.read_bytes()
    metrics = [json.loads((tmp_path / name / "results.json").read_text())["metrics"] for name in ("run", "run1")]
    for values in metrics:
        values.pop("decode_seconds")
    assert metrics[0] == metrics[1]
    evaluated, = (tmp_path / "cache" / "evaluation").glob("*/stage.json")
    assert "world_size" not in json.loads(evaluated.read_text())["spec"]  # any number of processes: one evaluation
    assert not list((tmp_path / "cache").glob("*/*/output.partial*"))


@pytest.mark.slow  # about 80 s on 2 cores: two jobs of two processes each
def test_local_submitit_multirun_of_two_jobs_with_two_processes_each(tmp_path):
    command = [sys.executable, "-m", "framework", "-m", "hydra/launcher=local", "hydra.launcher.tasks_per_node=2",
               "algorithm=sft", "decoder=greedy,beam", *TINY, "algorithm.max_steps=2",
               "algorithm.per_device_train_batch_size=8", "algorithm.save_steps=1", "hydra.sweep.dir=sweep"]
    result = subprocess.run(command, cwd=tmp_path, env=_environment(tmp_path / "cache"), capture_output=True,
                            text=True, timeout=400)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    results = sorted((tmp_path / "sweep").glob("*/results.json"))
    assert [path.parent.name for path in results] == ["0_greedy", "1_beam"]  # named for the swept value
    trained, = (tmp_path / "cache" / "sft").glob("*/stage.json")  # both jobs share one training (the lock)
    assert json.loads(trained.read_text())["spec"]["world_size"] == 2
    logs = "".join(path.read_text() for path in (tmp_path / "sweep").glob("*/__main__.log"))
    assert logs.count("process 1 of 2") == 2  # each job ran as two processes
