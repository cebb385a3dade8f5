"""One optimizer step of each loss this project writes (or configures), through the real trainer, so a test
can compare the parameter update across ways of splitting the same 32 rows: one batch of 32, or batches of
8 with 4 accumulation steps, or (run with torchrun) 2 processes. Plain SGD with a constant rate makes the
update exactly -lr x the gradient, so a loss term scaled by the accumulation steps or the processes shows.

    python -m torch.distributed.run --nproc_per_node 2 tests/gradient_steps.py soc_token_mean 16 1 update.pt
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from types import MethodType, SimpleNamespace

import torch

ROWS = 32
METHODS = ("sft", "soc_token_mean", "soc_sequence_mean", "soc_all_states", "dpo_squared", "dpo_sigmoid",
           "self_explore_dpo", "xpo", "grpo")


def _context(workdir: Path, config, seed: int = 0):
    from framework import tiny
    from framework.algorithms import AlgorithmContext
    from framework.data.loaders import ArithDatasetConfig, load_arith
    from framework.models import ModelHandle, Runtime
    from framework.stages import StageStore

    tokenizer = tiny.build_tokenizer()
    model = tiny.build_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                             max_positions=256, seed=0)
    base = workdir / "base"
    if not (base / "config.json").exists():
        model.save_pretrained(base)
        tokenizer.save_pretrained(base)
    data = load_arith(ArithDatasetConfig(train_size=ROWS, test_size=2))
    return AlgorithmContext(config=config, base=ModelHandle(str(base), {"base": "gradient-steps"}), data=data,
                            stages=StageStore(workdir / "cache"), runtime=Runtime("cpu", "fp32"), seed=seed,
                            report_to="none", output_dir=workdir / "out")


def _training_keys(batch: int, accumulation: int) -> dict:
    return dict(learning_rate=0.5, max_steps=1, per_device_train_batch_size=batch,
                gradient_accumulation_steps=accumulation, lr_scheduler_type="constant", warmup_ratio=0.0,
                weight_decay=0.0, max_grad_norm=1e9, logging_steps=1, save_steps=100)


def _pairs(data) -> list[dict]:
    """32 pairs of distinct lengths: chosen = the demonstration, rejected = its first line."""
    return [{"prompt": p, "chosen": c, "rejected": c.split("\n")[0] + "\n"}
            for p, c in zip(data.train["prompt"], data.train["completion"])]


def _fake_xpo_sample(self, model, prompt_ids, prompt_mask):
    """Deterministic samples, a function of the prompt and of which model is asked (policy or pi_base):
    the update then depends on the loss alone, not on how sampling streams split across batches."""
    reference = model is self.ref_model
    eos, pad = self.eos_token_ids[0], self._tokenizer.pad_token_id
    rows = []
    for ids, mask in zip(prompt_ids.tolist(), prompt_mask.tolist()):
        key = sum(token for token, keep in zip(ids, mask) if keep)
        length = 3 + key % 5 + (2 if reference else 0)
        vocabulary = len(self._tokenizer) - 10  # ids 10.. stay clear of the special tokens
        rows.append([10 + (key * (j + 3) + (17 if reference else 0)) % vocabulary for j in range(length)] + [eos])
    width = max(map(len, rows))
    completion = torch.tensor([row + [pad] * (width - len(row)) for row in rows], device=prompt_ids.device)
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows], device=prompt_ids.device)
    return completion, mask


class _LengthParity:
    """A checker whose verdict is the completion's length parity: a random model's groups then differ in reward."""

    def check(self, text, gold):
        return SimpleNamespace(correct=len(text) % 2 == 0)


def _fake_grpo_rollouts(self, prompt_ids, *args, **kwargs):
    """Deterministic rollouts, a function of the prompt and of the row's place in its group (TRL repeats each
    prompt G times in a row), so that both ways of splitting the step train on the same 32 completions."""
    eos, vocabulary = self.eos_token_ids[0], len(self._tokenizer) - 10
    rows = []
    for index, ids in enumerate(prompt_ids):
        key = sum(ids) + index % self.num_generations
        rows.append([10 + (key * (j + 3)) % vocabulary for j in range(3 + key % 5)] + [eos])
    return rows, None


def make_trainer(method: str, batch: int, accumulation: int, workdir: Path):
    from framework.algorithms.dpo import SquaredSharpeningDPOTrainer
    from framework.algorithms.sft_stage import SFTAlgorithmConfig, make_sft_trainer
    from framework.algorithms.soc import SOCConfig, SOCTrainer
    from framework.algorithms.training import trainer_arguments
    from framework.algorithms.xpo import XPOConfig, make_xpo_trainer

    keys = _training_keys(batch, accumulation)
    checkpoints = str(workdir / f"checkpoints-{method}-{batch}x{accumulation}")
    if method == "sft":
        ctx = _context(workdir, SFTAlgorithmConfig(**keys))
        return make_sft_trainer(ctx, ctx.config, checkpoints)
    if method.startswith("soc"):
        extra = {"soc_token_mean": {}, "soc_sequence_mean": {"normalisation": "sequence_mean"},
                 "soc_all_states": {"value_states": "all"}}[method]
        ctx = _context(workdir, SOCConfig(**keys, value_coef=0.2, **extra))
        trainer = make_sft_trainer(ctx, ctx.config, checkpoints, trainer_class=SOCTrainer)
        trainer.soc = ctx.config
        return trainer
    if method in ("dpo_squared", "dpo_sigmoid"):
        from datasets import Dataset
        from trl import DPOConfig, DPOTrainer

        ctx = _context(workdir, SFTAlgorithmConfig(**keys))
        args = DPOConfig(**trainer_arguments(ctx.config, ctx, checkpoints), beta=0.5, loss_type=["sigmoid"])
        trainer_class = SquaredSharpeningDPOTrainer if method == "dpo_squared" else DPOTrainer
        return trainer_class(model=ctx.base.load_model(ctx.runtime), ref_model=ctx.base.load_model(ctx.runtime),
                             args=args, train_dataset=Dataset.from_list(_pairs(ctx.data)),
                             processing_class=ctx.base.load_tokenizer())
    if method == "self_explore_dpo":  # the family's DPO helper, with its rejected-without-EOS collator
        from framework.algorithms import preference
        from framework.algorithms.preference import PreferenceTrainingConfig

        ctx = _context(workdir, None)
        made = []
        original = preference.train_in_stage
        preference.train_in_stage = lambda ctx, kind, spec, make, *, code, start, metadata: made.append(make(checkpoints))
        try:
            config = PreferenceTrainingConfig(**keys, beta=0.5)
            preference.train_dpo(ctx, "test", {"pairs": "pairs"}, ctx.base, _pairs(ctx.data), config,
                                 rejected_eos=config.rejected_eos, code=__name__)
        finally:
            preference.train_in_stage = original
        return made[0]
    if method == "xpo":
        ctx = _context(workdir, XPOConfig(**keys, starting_point="base", alpha=[0.05], max_new_tokens=12))
        ctx = type(ctx)(**{**vars(ctx), "data": ctx.data.without_labels()})
        trainer = make_xpo_trainer(ctx, ctx.config, checkpoints)
        trainer._sample = MethodType(_fake_xpo_sample, trainer)
        return trainer
    if method == "grpo":  # one generation round of 8 prompts x 4 rollouts, split into the micro-batches
        from framework.algorithms.grpo import GRPOAlgorithmConfig, make_grpo_trainer

        ctx = _context(workdir, GRPOAlgorithmConfig(**keys, starting_point="base", num_generations=4,
                                                    max_new_tokens=12))
        ctx.data.checker = _LengthParity()
        trainer = make_grpo_trainer(ctx, ctx.config, checkpoints, [])
        trainer._generate_single_turn = MethodType(_fake_grpo_rollouts, trainer)
        return trainer
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def one_step_update(method: str, batch: int, accumulation: int, workdir: Path) -> dict[str, torch.Tensor]:
    """parameter name -> change after one optimizer step (plain SGD, constant rate 0.5)."""
    trainer = make_trainer(method, batch, accumulation, workdir)
    trainer.args.optim = "sgd"
    model = trainer.accelerator.unwrap_model(trainer.model)
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    trainer.train()
    assert trainer.state.global_step == 1
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {name: p.detach() - before[name] for name, p in model.named_parameters() if name in before}


if __name__ == "__main__":  # under torchrun: every rank trains, rank 0 writes the update
    method, batch, accumulation, output = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from framework import registry

    registry.load_plugins()
    update = one_step_update(method, batch, accumulation, output.parent / f"work-rank{os.environ.get('RANK', 0)}")
    if os.environ.get("RANK", "0") == "0":
        torch.save(update, output)
