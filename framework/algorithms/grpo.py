"""`algorithm=grpo`: Group Relative Policy Optimization with outcome supervision (Shao et al. 2024,
DeepSeekMath, arXiv 2402.03300, §4.1), the reinforcement-learning-with-a-verifier reference point. Uses gold
final answers, in the reward only (as Self-Explore's outcome supervision does).

    pi_theta = pi_ref = the starting model (`starting_point: sft`: the shared SFT stage)
    every optimizer step:
        x_1..x_B ~ the training questions, with gold answers a_j      B = global batch / G questions
        o_j1..o_jG ~ pi_theta(. | x_j)                                G = num_generations, temperature T, top_p
        r_ji = 1 if the dataset's checker judges o_ji right against a_j, else 0            (AnswerReward)
        A_ji = (r_ji - mean_i r_ji) / (std_i r_ji + 1e-4)             per group; std with Bessel's correction
        mu times (num_iterations) on these samples, with pi_old = pi_theta when they were drawn:
            ratio_t = pi_theta(o_t | x, o_<t) / pi_old(o_t | x, o_<t)
            KL_t    = pi_ref / pi_theta - log(pi_ref / pi_theta) - 1                 (the paper's estimator)
            loss    = -mean_ji 1/|o_ji| sum_t [min(ratio_t A_ji, clip(ratio_t, 1 - eps, 1 + eps) A_ji) - beta KL_t]

A group whose G rewards are equal has A = 0 for all its samples: it moves the policy through the KL term
only. The share of groups whose rewards differ is therefore GRPO's premise (framework/premises.py): every
group's mean reward and whether its rewards differ, per step, are recorded in the stage's record
(`reward_groups`) and in `ctx.artifacts`.

TRL's GRPOTrainer does all of the above (loss_type=grpo is the paper's per-sequence mean; scale_rewards=group
its normalisation). Sampling is TRL's too: transformers' `generate` under engine=transformers, TRL's colocated
vLLM under engine=vllm (`generation_arguments`). `GRPOTrainer` below adds only what TRL does not do: it
records the groups' rewards (and keeps them across a resume) and counts the tokens it trains on.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from datasets import Dataset
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOConfig as TRLGRPOConfig
from trl import GRPOTrainer as TRLGRPOTrainer

from framework import distributed, registry
from framework.algorithms import AlgorithmContext
from framework.algorithms.training import peft_config, train_in_stage, trainable_model, trainer_arguments
from framework.config import AlgorithmConfig, StartingPointConfig, TrainingConfig, require
from framework.models import ModelHandle

log = logging.getLogger(__name__)
LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo")  # TRL's token-aggregation variants of the same clipped objective
SCALE_REWARDS = ("group", "batch", "none")
# GRPOConfig fields this module sets from the keys above or from engine=: not settable under `trainer`
SET_HERE = ("max_completion_length", "use_vllm", "vllm_mode", "vllm_gpu_memory_utilization",
            "vllm_tensor_parallel_size", "vllm_max_model_length", "remove_unused_columns")
GROUPS_FILE = "reward_groups.json"  # in each checkpoint: the groups recorded up to it (restored on resume)


@dataclass
class GRPOAlgorithmConfig(TrainingConfig, StartingPointConfig, AlgorithmConfig):
    """DeepSeekMath's GRPO recipe (paper-recipes.md, GRPO; its numbers are UNCONFIRMED there): lr 1e-6, KL 0.04,
    64 samples a question, batch 1024 samples, one update per exploration stage. Not TRL's defaults (beta 0,
    loss dapo: later practice, DAPO / Dr. GRPO)."""

    TRL_CONFIG: ClassVar[str] = "trl:GRPOConfig"
    name: str = "grpo"
    starting_point: str = "sft"  # sft: the algorithm=sft model, as the Self-Explore family starts | base
    num_generations: int = 64  # G: samples per question (the paper's 64)
    beta: float = 0.04  # KL coefficient (the paper's; TRL's 0.0 loads no reference model)
    epsilon: float = 0.2  # clipping range of the ratio (PPO's; the paper does not state its value)
    loss_type: str = "grpo"  # grpo: 1/|o| per sequence, then the mean (the paper's) | dr_grpo | dapo | bnpo
    scale_rewards: str = "group"  # group: divide by the group's std (the paper's) | batch | none (Dr. GRPO)
    num_iterations: int = 1  # mu: updates per sampled batch (the paper: a single update per exploration stage)
    temperature: float = 1.0  # of the rollouts (not stated by the paper: sampling the policy itself)
    top_p: float = 1.0
    max_new_tokens: int = 512  # per rollout; the YAML follows the dataset (GSM8K 512, MATH 1024: the paper's 1024)
    learning_rate: float = 1e-6  # the paper's policy learning rate
    num_train_epochs: float = 1.0  # not stated by the paper
    per_device_train_batch_size: int = 8  # completions (rollouts) per device per micro-batch, as TRL counts
    gradient_accumulation_steps: int = 128  # x 8 = the paper's batch of 1024 samples (16 questions x 64) on one device
    max_length: int = 2048  # prompt + completion tokens: vLLM's context (engine.max_model_len unset) and the control's
    # the paper's KL gradient (the plain estimator's); TRL's default multiplies the KL term by the importance ratio
    trainer: dict[str, Any] = field(default_factory=lambda: {"use_bias_correction_kl": False})

    def checks(self, prefix: str) -> None:
        super().checks(prefix)
        require(self.num_generations >= 2, f"{prefix}.num_generations",
                "must be >= 2 (the advantage compares samples of one question)", self.num_generations)
        # the global batch must hold whole groups (TRL checks it only once the job has started)
        processes = distributed.launched_world_size()
        batch = self.per_device_train_batch_size * self.gradient_accumulation_steps * processes
        require(batch % self.num_generations == 0, f"{prefix}.num_generations",
                f"must divide the global batch of completions, per_device_train_batch_size x "
                f"gradient_accumulation_steps x processes = {batch}", self.num_generations)
        require(math.isfinite(self.beta) and self.beta >= 0, f"{prefix}.beta", "must be >= 0", self.beta)
        require(math.isfinite(self.epsilon) and self.epsilon > 0, f"{prefix}.epsilon", "must be > 0", self.epsilon)
        require(self.loss_type in LOSS_TYPES, f"{prefix}.loss_type", f"must be one of {list(LOSS_TYPES)}",
                self.loss_type)
        require(self.scale_rewards in SCALE_REWARDS, f"{prefix}.scale_rewards",
                f"must be one of {list(SCALE_REWARDS)}", self.scale_rewards)
        require(self.num_iterations >= 1, f"{prefix}.num_iterations", "must be >= 1", self.num_iterations)
        require(math.isfinite(self.temperature) and self.temperature > 0, f"{prefix}.temperature", "must be > 0",
                self.temperature)
        require(0 < self.top_p <= 1, f"{prefix}.top_p", "must be in (0, 1]", self.top_p)
        require(self.max_new_tokens >= 1, f"{prefix}.max_new_tokens", "must be >= 1", self.max_new_tokens)
        require(self.max_new_tokens < self.max_length, f"{prefix}.max_new_tokens",
                f"must be < max_length ({self.max_length}), which holds the prompt too", self.max_new_tokens)
        for key in SET_HERE:
            require(key not in self.trainer, f"{prefix}.trainer.{key}",
                    "is set by the framework (from algorithm.max_new_tokens or engine=)", self.trainer.get(key))


# ---------------------------------------------------------------------------- the reward
class AnswerReward:
    """TRL reward function: 1.0 where the dataset's checker judges a completion right against its row's gold
    answer (the strict reading evaluation scores), else 0.0. An unfinished completion or one without a final
    answer scores as evaluation would score it."""

    __name__ = "answer_correct"  # TRL logs each reward function's mean and std under rewards/<__name__>/

    def __init__(self, checker):
        self.checker = checker

    def __call__(self, prompts: list[str], completions: list[str], gold_answer: list[str], **kwargs) -> list[float]:
        return [float(self.checker.check(text, gold).correct) for text, gold in zip(completions, gold_answer)]


def group_summary(step: int, rewards: list[float], group_size: int) -> dict:
    """One generation round's groups (TRL orders a round's completions group by group): each group's mean
    reward and whether its rewards differ (else its advantages are all 0)."""
    groups = [rewards[start:start + group_size] for start in range(0, len(rewards), group_size)]
    return {"step": step, "mean_reward": [sum(group) / len(group) for group in groups],
            "rewards_differ": [max(group) > min(group) for group in groups]}


# ---------------------------------------------------------------------------- the TRL side
class GRPOTrainer(TRLGRPOTrainer):
    """TRL's GRPOTrainer that records every training round's groups into `reward_groups` (kept in checkpoints,
    restored on resume) and counts the non-padding tokens it trains on, as the framework's other trainers do."""

    def __init__(self, *args, reward_groups: list[dict], **kwargs):
        super().__init__(*args, **kwargs)
        self.reward_groups = reward_groups  # filled in place: the caller holds the same list

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        # TRL returns the rewards of every process's completions (gathered), in group order: what it normalises
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if self.model.training:
            total = torch.nansum(rewards * self.reward_weights.to(rewards.device).unsqueeze(0), dim=1)
            self.reward_groups.append(group_summary(self.state.global_step, total.tolist(), self.num_generations))
        return rewards

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.model.training:  # the tokens of the forward pass trained on (prompt and completion, no padding)
            tokens = inputs["prompt_mask"].sum() + inputs["completion_mask"].sum()
            self._total_train_tokens += self.accelerator.gather_for_metrics(tokens).sum().item()
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            (folder / GROUPS_FILE).write_text(json.dumps(self.reward_groups))

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None and (Path(checkpoint) / GROUPS_FILE).is_file():
            self.reward_groups[:] = json.loads((Path(checkpoint) / GROUPS_FILE).read_text())


def generation_arguments(engine: Any, max_length: int) -> dict:
    """GRPOConfig's generation keys from the run's engine: TRL's own (transformers) generation, or TRL's vLLM
    in colocate mode (one engine per process beside the trainer, weights synced every step) sized as engine=vllm
    says. engine.dtype, enforce_eager and per_request_seed have no GRPOConfig field: TRL's vLLM takes the weights'
    dtype and its own seeds."""
    if getattr(engine, "name", "transformers") != "vllm":
        return {"use_vllm": False}
    return {"use_vllm": True, "vllm_mode": "colocate",
            "vllm_gpu_memory_utilization": engine.gpu_memory_utilization,
            "vllm_tensor_parallel_size": engine.tensor_parallel_size,
            # not the model's own context (131k on some): the job's lengths
            "vllm_max_model_length": engine.max_model_len or max_length}


def grpo_arguments(config: GRPOAlgorithmConfig, ctx: AlgorithmContext, checkpoint_dir: str) -> dict:
    """Keyword arguments of TRL's GRPOConfig: the framework's training keys, the method's and the engine's."""
    arguments = trainer_arguments(config, ctx, checkpoint_dir)
    max_length = arguments.pop("max_length")  # GRPOConfig has no such field: prompts are not cut, completions are
    return {**arguments, "num_generations": config.num_generations, "beta": config.beta, "epsilon": config.epsilon,
            "loss_type": config.loss_type, "scale_rewards": config.scale_rewards,
            "num_iterations": config.num_iterations, "temperature": config.temperature, "top_p": config.top_p,
            "top_k": 0,  # no top-k cut: only temperature and top_p shape the rollouts
            "max_completion_length": config.max_new_tokens,
            "remove_unused_columns": False,  # the reward reads the gold_answer column
            **generation_arguments(ctx.engine, max_length)}


def make_grpo_trainer(ctx: AlgorithmContext, config: GRPOAlgorithmConfig, checkpoint_dir: str,
                      reward_groups: list[dict]) -> GRPOTrainer:
    """GRPOTrainer from `ctx.base` (policy; and, when beta > 0, its frozen copy as pi_ref) on the training
    questions and their gold answers."""
    if getattr(ctx.engine, "name", None) == "vllm" and ctx.engine.dtype != "auto":
        log.warning("engine.dtype=%s does not reach GRPO's rollouts: TRL's vLLM loads the weights' own dtype",
                    ctx.engine.dtype)
    train = Dataset.from_dict({"prompt": list(ctx.data.train["prompt"]),
                               "gold_answer": list(ctx.data.train["gold_answer"])})
    return GRPOTrainer(model=trainable_model(ctx, ctx.base), reward_funcs=AnswerReward(ctx.data.checker),
                       args=TRLGRPOConfig(**grpo_arguments(config, ctx, checkpoint_dir)), train_dataset=train,
                       processing_class=ctx.base.load_tokenizer(), peft_config=peft_config(ctx),
                       reward_groups=reward_groups)


@registry.algorithms.register("grpo", GRPOAlgorithmConfig)
def run(ctx: AlgorithmContext) -> ModelHandle:
    reward_groups: list[dict] = []  # the trainer fills it; the stage's record keeps it (train_in_stage commits it)
    # the rollouts' sampler is part of what the model is: vLLM's samples are not transformers'
    spec = ctx.stage_spec(algorithm=ctx.config, base=ctx.base, data=ctx.data,
                          rollouts=generation_arguments(ctx.engine, ctx.config.max_length))
    trained = train_in_stage(ctx, "grpo", spec,
                             lambda checkpoint_dir: make_grpo_trainer(ctx, ctx.config, checkpoint_dir, reward_groups),
                             code=__name__, metadata={"reward_groups": reward_groups})
    # from the record, so that a job reusing the trained model measures the same premise
    record = ctx.stages.record({"kind": "grpo", "key": trained.fingerprint["key"]})
    ctx.artifacts["reward_groups"] = record.get("reward_groups", [])
    return trained
