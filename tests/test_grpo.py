"""GRPO: the reward against hand-scored completions, TRL's advantages on a hand-computed group (through the
trainer, with scripted completions), the recorded groups and the premise they give, config checks, the
mapping of the run's engine to GRPOConfig, and training runs on a tiny random model: optimizer steps, the
control's steps, the premise against TRL's own log, and a resumed run."""
import json
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset

from conftest import FAST
from framework import premises
from framework.algorithms import AlgorithmContext
from framework.algorithms.grpo import (AnswerReward, GRPOAlgorithmConfig, GRPOTrainer, generation_arguments,
                                       group_summary, grpo_arguments, make_grpo_trainer, run)
from framework.config import to_validated
from framework.data.answers import NumericAnswerChecker
from framework.data.loaders import TaskData
from framework.errors import ConfigError
from framework.generation import TransformersEngineConfig, VLLMEngineConfig
from framework.job import run as run_job
from framework.models import ModelHandle, Runtime
from framework.stages import StageStore

CHECKER = NumericAnswerChecker()
PROMPTS = ["Ann has 3 pens. Ann finds 4 more. How many pens does Ann have now?\n",
           "Ben has 12 coins. Ben loses 2. How many coins does Ben have now?\n"]
GOLD = ["7", "10"]


# ---------------------------------------------------------------------------- the reward
def test_the_reward_is_one_for_a_right_final_answer_and_zero_otherwise():
    completions = {
        "3 + 4 = 7\n#### 7": 1.0,                 # right
        "3 + 4 = 8\n#### 8": 0.0,                 # wrong
        "3 + 4 = 7\n7 + 1 =": 0.0,                # unfinished: cut before its answer line
        "3 + 4 = 7\nso Ann has 7 pens": 0.0,      # no final-answer mark: the strict reading evaluation scores
        "3 + 4 = 7\n#### 7.00": 1.0,              # the same number written otherwise
    }
    reward = AnswerReward(CHECKER)
    assert reward(prompts=[PROMPTS[0]] * 5, completions=list(completions), gold_answer=["7"] * 5,
                  completion_ids=[[]] * 5, trainer_state=None) == list(completions.values())
    # each completion is judged against its own row's gold answer
    assert reward(prompts=PROMPTS, completions=["#### 7", "#### 7"], gold_answer=GOLD) == [1.0, 0.0]


def test_a_group_summary_gives_each_groups_mean_and_whether_its_rewards_differ():
    assert group_summary(3, [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0], 4) == {
        "step": 3, "mean_reward": [0.25, 1.0, 0.0], "rewards_differ": [True, False, False]}


def test_the_premise_is_the_share_of_groups_whose_rewards_differ():
    # 10 rounds of 2 groups: the first round has one spread group, the last none (all right), the others one each
    rounds = [{"step": 0, "mean_reward": [0.25, 0.0], "rewards_differ": [True, False]}]
    rounds += [{"step": s, "mean_reward": [0.5, 1.0], "rewards_differ": [True, False]} for s in range(1, 9)]
    rounds += [{"step": 9, "mean_reward": [1.0, 1.0], "rewards_differ": [False, False]}]
    values = premises.reward_group_premises(rounds)
    assert values["reward_rounds"] == 10 and values["reward_groups"] == 20
    assert values["groups_rewards_differ_share"] == pytest.approx(9 / 20)
    assert values["groups_rewards_differ_share_first_tenth"] == 0.5
    assert values["groups_rewards_differ_share_last_tenth"] == 0.0
    assert values["groups_all_right_share"] == pytest.approx(10 / 20)
    assert values["groups_all_wrong_share"] == pytest.approx(1 / 20)
    assert values["reward_first_tenth"] == pytest.approx(0.125) and values["reward_last_tenth"] == 1.0
    assert premises.reward_group_premises([]) == {}
    assert premises.measure({"reward_groups": rounds}, SimpleNamespace(
        train=Dataset.from_dict({"prompt": [], "gold_answer": []}), test=None, heldout=None),
                            CHECKER)["groups_rewards_differ_share"] == pytest.approx(9 / 20)


# ---------------------------------------------------------------------------- config
@pytest.mark.parametrize("key, value", [
    ("num_generations", 1), ("num_generations", 3),  # 3 does not divide the 8 x 128 completions of a step
    ("beta", -0.1), ("beta", float("nan")), ("epsilon", 0.0), ("loss_type", "ppo"), ("scale_rewards", "std"),
    ("num_iterations", 0), ("temperature", 0.0), ("top_p", 0.0), ("top_p", 1.5), ("max_new_tokens", 0),
    ("max_new_tokens", 2048), ("starting_point", "instruct"), ("learning_rate", 0.0),
])
def test_bad_values_are_refused_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=rf"^algorithm\.{key} "):
        GRPOAlgorithmConfig(**{key: value}).validate("algorithm")


@pytest.mark.parametrize("override, message", [
    ("algorithm.num_generations=6", "algorithm.num_generations must divide the global batch of completions"),
    ("+algorithm.trainer.use_vllm=true", "algorithm.trainer.use_vllm is set by the framework"),
    ("+algorithm.trainer.max_completion_length=64", "algorithm.trainer.max_completion_length is set by the framework"),
    ("+algorithm.trainer.beta=0.1", "has a key of its own: set algorithm.beta"),
    ("+algorithm.trainer.num_generation=4", "algorithm.trainer.num_generation is not a field of trl.GRPOConfig"),
])
def test_a_bad_command_line_fails_in_one_line_naming_the_key(compose_cfg, override, message):
    with pytest.raises(ConfigError) as error:
        to_validated(compose_cfg(["algorithm=grpo", override]))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_yaml_restates_the_schema_and_the_embedded_preset_trains_fifty_steps(compose_cfg):
    assert to_validated(compose_cfg(["algorithm=grpo", "experiment=none", "dataset=gsm8k"])).algorithm \
        == GRPOAlgorithmConfig()
    embedded = to_validated(compose_cfg(["algorithm=grpo"])).algorithm
    assert embedded.max_steps >= 50 and embedded.starting_point == "sft"
    batch = embedded.per_device_train_batch_size * embedded.gradient_accumulation_steps
    assert batch % embedded.num_generations == 0


# ---------------------------------------------------------------------------- the engine -> GRPOConfig
def _arguments_context(engine, **config):
    return SimpleNamespace(model_config=SimpleNamespace(gradient_checkpointing=False), seed=0, report_to="none",
                           runtime=Runtime("cpu", "fp32"), engine=engine), GRPOAlgorithmConfig(**config)


def test_the_methods_keys_reach_grpo_config(tmp_path):
    from trl import GRPOConfig

    ctx, config = _arguments_context(TransformersEngineConfig(), num_generations=4, per_device_train_batch_size=8,
                                     gradient_accumulation_steps=2, max_new_tokens=96,
                                     trainer={"use_bias_correction_kl": False, "mask_truncated_completions": True})
    args = GRPOConfig(**grpo_arguments(config, ctx, str(tmp_path)))
    assert (args.num_generations, args.beta, args.epsilon, args.loss_type, args.scale_rewards) == (
        4, 0.04, 0.2, "grpo", "group")
    assert (args.max_completion_length, args.temperature, args.top_p, args.top_k, args.learning_rate) == (
        96, 1.0, 1.0, 0, 1e-6)
    assert not args.use_bias_correction_kl and args.mask_truncated_completions and not args.remove_unused_columns
    # one generation round per optimizer step: the step's 16 completions = 4 questions x 4
    assert (args.steps_per_generation, args.generation_batch_size, args.num_iterations) == (2, 16, 1)
    assert not args.use_vllm


def test_engine_vllm_becomes_trls_colocated_vllm_sized_by_the_engine_config(tmp_path):
    from trl import GRPOConfig

    engine = VLLMEngineConfig(gpu_memory_utilization=0.35, tensor_parallel_size=2)  # not validated: no vllm here
    ctx, config = _arguments_context(engine, max_length=1536)
    args = GRPOConfig(**grpo_arguments(config, ctx, str(tmp_path)))
    assert (args.use_vllm, args.vllm_mode, args.vllm_gpu_memory_utilization, args.vllm_tensor_parallel_size) == (
        True, "colocate", 0.35, 2)
    assert args.vllm_max_model_length == 1536  # the job's prompt + completion length, not the model's context
    engine.max_model_len = 4096
    assert generation_arguments(engine, 1536)["vllm_max_model_length"] == 4096
    assert generation_arguments(None, 1536) == {"use_vllm": False}


def test_the_rollouts_engine_is_part_of_the_trained_models_key(monkeypatch, tmp_path):
    """A model trained on transformers' rollouts is not reused for engine=vllm (their samples differ)."""
    import framework.algorithms.grpo as grpo

    specs = []

    def capture(ctx, kind, spec, *args, **kwargs):
        specs.append(spec)
        raise StopIteration

    monkeypatch.setattr(grpo, "train_in_stage", capture)
    data = TaskData(train=Dataset.from_dict({"prompt": PROMPTS, "gold_answer": GOLD}), test=None, checker=CHECKER,
                    fingerprint={"test": "grpo"})
    for engine in (TransformersEngineConfig(), VLLMEngineConfig(), TransformersEngineConfig(compile=True)):
        ctx = AlgorithmContext(config=GRPOAlgorithmConfig(), base=ModelHandle("base", {"base": "b"}), data=data,
                               stages=None, runtime=None, seed=0, report_to="none", output_dir=tmp_path, engine=engine)
        with pytest.raises(StopIteration):
            run(ctx)
    transformers, vllm, compiled = specs
    assert transformers != vllm and vllm["rollouts"]["use_vllm"]
    assert transformers == compiled  # TRL's generation reads none of the transformers engine's keys


# ---------------------------------------------------------------------------- through TRL's trainer
def _context(model_and_tokenizer, tmp_path, **config) -> AlgorithmContext:
    model, tokenizer = model_and_tokenizer
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    train = Dataset.from_dict({"question": [p.strip() for p in PROMPTS], "prompt": PROMPTS, "gold_answer": GOLD,
                               "completion": ["3 + 4 = 7\n#### 7", "12 - 2 = 10\n#### 10"]})
    data = TaskData(train=train, test=train, checker=CHECKER, fingerprint={"test": "grpo"})
    settings = dict(starting_point="base", max_steps=2, num_generations=4, per_device_train_batch_size=8,
                    gradient_accumulation_steps=1, max_new_tokens=12, learning_rate=1e-3, logging_steps=1,
                    save_steps=1)
    return AlgorithmContext(config=GRPOAlgorithmConfig(**{**settings, **config}),
                            base=ModelHandle(str(tmp_path / "base"), {"base": "test-random"}), data=data,
                            stages=StageStore(tmp_path / "cache"), runtime=Runtime("cpu", "fp32"), seed=0,
                            report_to="none", output_dir=tmp_path / "out")


def test_trls_advantages_on_a_hand_scored_group(model_and_tokenizer, tmp_path, monkeypatch):
    """Scripted completions through TRL's own scoring: group 1 (gold 7) has one right answer of four, group 2
    (gold 10) four right. By hand: group 1 mean 0.25, std (Bessel) sqrt((0.75^2 + 3 x 0.25^2) / 3) = 0.5, so
    A = 0.75 / 0.5001 for the right one and -0.25 / 0.5001 for the others; group 2 std 0, A = 0."""
    ctx = _context(model_and_tokenizer, tmp_path)
    _, tokenizer = model_and_tokenizer
    texts = ["3 + 4 = 7\n#### 7", "3 + 4 = 8\n#### 8", "3 + 4 =", "Ann has pens",
             "#### 10", "12 - 2 = 10\n#### 10", "#### 10.0", "10\n#### 10"]
    groups: list[dict] = []
    trainer = make_grpo_trainer(ctx, ctx.config, str(tmp_path / "checkpoints"), groups)
    scripted = [tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for text in texts]
    monkeypatch.setattr(trainer, "_generate_single_turn", lambda prompt_ids, *args, **kwargs: (scripted, None))
    trainer.model.train()
    rows = [{"prompt": prompt, "gold_answer": gold} for prompt, gold in zip(PROMPTS, GOLD) for _ in range(4)]
    output = trainer._generate_and_score_completions(rows)
    right, wrong = 0.75 / (0.5 + 1e-4), -0.25 / (0.5 + 1e-4)
    torch.testing.assert_close(output["advantages"], torch.tensor([right, wrong, wrong, wrong, 0.0, 0.0, 0.0, 0.0]))
    assert groups == [{"step": 0, "mean_reward": [0.25, 1.0], "rewards_differ": [True, False]}]
    assert trainer._metrics["train"]["frac_reward_zero_std"] == [0.5]  # TRL's count agrees: one group of two


class Interrupted(Exception):
    pass


@pytest.mark.slow  # three GRPO steps, twice: about a minute on 2 busy cores
def test_an_interrupted_run_resumes_with_the_groups_recorded_before_its_checkpoint(model_and_tokenizer, tmp_path,
                                                                                 monkeypatch):
    ctx = _context(model_and_tokenizer, tmp_path, max_steps=3)
    original_step = GRPOTrainer.training_step
    steps = []

    def step(self, *args, **kwargs):
        if getattr(self, "interrupt_at", None) == self.state.global_step:
            raise Interrupted  # as a kill after checkpoint-2 was written
        steps.append(self.state.global_step)
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(GRPOTrainer, "training_step", step)
    monkeypatch.setattr(GRPOTrainer, "interrupt_at", 2, raising=False)
    with pytest.raises(Interrupted):
        run(ctx)
    assert steps == [0, 1]
    monkeypatch.setattr(GRPOTrainer, "interrupt_at", None, raising=False)
    ctx.artifacts.clear()
    handle = run(ctx)
    assert steps == [0, 1, 2]  # only the third step ran again
    stage = json.loads((tmp_path / "cache" / "grpo" / handle.fingerprint["key"] / "stage.json").read_text())
    assert stage["global_step"] == 3
    assert [row["step"] for row in stage["reward_groups"]] == [0, 1, 2]  # rounds 0 and 1 from checkpoint-2
    assert all(len(row["mean_reward"]) == 2 for row in stage["reward_groups"])  # 8 completions = 2 groups of 4
    assert ctx.artifacts["reward_groups"] == stage["reward_groups"]
    assert stage["compute"]["train_tokens"] > 0


def _varied_reward(self, prompts, completions, gold_answer, **kwargs):
    """A random model gets no answer right: reward the completions' length parity instead, so that groups
    differ and the recorded groups can be checked against TRL's own log."""
    return [float(len(text) % 2) for text in completions]


@pytest.mark.slow  # a whole job: SFT, GRPO, its control, two evaluations
def test_a_job_trains_optimizer_steps_its_control_copies_them_and_the_premise_matches_trls_log(
        compose_cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(AnswerReward, "__call__", _varied_reward)
    cache = tmp_path / "cache"
    overrides = ["algorithm=grpo", *FAST, "algorithm.sft.max_steps=2", "algorithm.sft.per_device_train_batch_size=8",
                 "algorithm.max_steps=3", "algorithm.per_device_train_batch_size=4",
                 "algorithm.gradient_accumulation_steps=2", "algorithm.num_generations=4",
                 "algorithm.max_new_tokens=12", "algorithm.logging_steps=1", "algorithm.save_steps=10",
                 "evaluation.control_decoders=[greedy]"]
    results = run_job(compose_cfg(overrides, cache), tmp_path / "job")
    stage = json.loads((cache / "grpo" / results["policy"]["key"] / "stage.json").read_text())
    # 3 optimizer steps of 2 micro-batches of 4 completions: 3 rounds of 8 completions = 2 groups of 4
    assert stage["global_step"] == 3 and stage["spec"]["base"]["stage"] == "sft"
    assert [len(row["mean_reward"]) for row in stage["reward_groups"]] == [2, 2, 2]
    # the premise per round is TRL's share of completions in groups of non-zero reward std, complemented
    logged = [entry for entry in stage["log_history"] if "frac_reward_zero_std" in entry]
    assert len(logged) == 3
    for row, entry in zip(stage["reward_groups"], logged):
        assert sum(row["rewards_differ"]) / 2 == pytest.approx(1 - entry["frac_reward_zero_std"])
        assert sum(row["mean_reward"]) / 2 == pytest.approx(entry["reward"])
    share = sum(sum(row["rewards_differ"]) for row in stage["reward_groups"]) / 6
    assert results["premises"]["groups_rewards_differ_share"] == pytest.approx(share)
    # the control: SFT from the same SFT model for as many optimizer steps, with GRPO's batch and rate
    control = json.loads((tmp_path / "job" / "control" / "results.json").read_text())
    record = json.loads((cache / control["policy"]["stage"] / control["policy"]["key"] / "stage.json").read_text())
    assert record["global_step"] == 3
    assert record["spec"]["base"] == stage["spec"]["base"]  # an sft stage from GRPO's start
    training = record["spec"]["algorithm"]
    assert (training["per_device_train_batch_size"], training["gradient_accumulation_steps"],
            training["learning_rate"]) == (4, 2, results["algorithm_config"]["learning_rate"])
