"""What the label-free sharpening methods share (Huang et al. 2025, algorithms.md §3).

    for each training prompt x (no gold answer anywhere):
        y_1..y_N ~ pi_base(. | x)                  one batched `generate`, temperature T
        r_self(y_i) = log pi_base(y_i | x)         from the generation's own scores, no second pass
    BoN-SFT: SFT on (x, the selector's pick among y_1..y_N)
    DPO:     pairs (y+, y-) with r_self(y+) > r_self(y-), trained with DPO against pi_base

The self-reward is the one the `bon` decoder uses (framework/self_reward.py; `selector`: logprob |
length_norm | majority), so inference-time and trained sharpening rank samples identically. The sampled
set is a stage of its own (`samples`): BoN-SFT and DPO with the same sampling keys and starting model
read one file, `samples.jsonl`, which is also the artifact to inspect.
"""
from __future__ import annotations

import hashlib

import logging
import random
from dataclasses import asdict, dataclass

from framework.algorithms import AlgorithmContext
from framework.algorithms.pipeline import generated_records
from framework.config import PromptPoolConfig, TrainingSamplingConfig, require
from framework.decoding import sample_request
from framework.generation import Candidate
from framework.self_reward import SELECTOR_NAMES, select, self_rewards

log = logging.getLogger(__name__)
PAIR_STRATEGIES = ("best_vs_worst", "best_vs_random", "random_pair", "random_pairs")
SAMPLES_FILE = "samples.jsonl"


@dataclass
class SelfRewardSamplingConfig(PromptPoolConfig, TrainingSamplingConfig):
    """How the N responses per prompt of the pool are drawn and scored (keys shared by bon_sft and dpo)."""

    samples_per_prompt: int = 50  # N; the sharpening paper's
    temperature: float = 1.0  # the paper samples at 1.0; r_self stays at temperature 1 whatever this is
    train_prompts: int | None = 256  # the paper sharpens the 256 prompts it evaluates, per task
    selector: str = "logprob"  # self-reward: logprob | length_norm | majority (votes of the extracted answer)

    def checks(self, prefix: str) -> None:
        super().checks(prefix)
        require(self.samples_per_prompt >= 1, f"{prefix}.samples_per_prompt", "must be >= 1", self.samples_per_prompt)
        require(self.selector in SELECTOR_NAMES, f"{prefix}.selector", f"must be one of {', '.join(SELECTOR_NAMES)}",
                self.selector)

    def sampling_keys(self) -> dict:
        """The keys that determine the sampled set, its stage spec (TrainingSamplingConfig.draw_keys). Not the
        selector: the stored samples hold the checker's extracted answers, which every selector reads, so
        BoN-SFT and DPO under any selector share one sampled set."""
        return {**self.draw_keys(), "samples_per_prompt": self.samples_per_prompt}


# ---------------------------------------------------------------------------- pairs
def build_pairs(selector: str, candidates: list[Candidate], answers: list[str | None], strategy: str,
                rng: random.Random) -> list[tuple[int, int]]:
    """(chosen, rejected) index pairs among one prompt's candidates, chosen with strictly higher r_self.

    best_vs_worst:  the selector's pick vs the lowest r_self (first among ties)       -> 0 or 1 pair
    best_vs_random: the selector's pick vs a random candidate with strictly lower r_self -> 0 or 1 pair
    random_pair:    two distinct random candidates, ordered by r_self (the paper's (y, y') ~ pi_base)  -> 0 or 1 pair
    random_pairs:   the candidates shuffled and paired off, each pair so ordered: N // 2 independent pairs of
                    independent samples, the theory's pairs, as many as N samples give    -> up to N // 2 pairs
    Pairs whose two candidates score the same are left out: there is no preference to learn.
    """
    if len(candidates) < 2:
        return []
    rewards = self_rewards(selector, candidates, answers)
    if strategy in ("random_pair", "random_pairs"):
        order = rng.sample(range(len(candidates)), len(candidates) if strategy == "random_pairs" else 2)
        pairs = []
        for first, second in zip(order[0::2], order[1::2]):
            if rewards[first] != rewards[second]:
                pairs.append((first, second) if rewards[first] > rewards[second] else (second, first))
        return pairs
    best = select(selector, candidates, answers)  # the `bon` decoder's pick, ties included
    lower = [i for i in range(len(candidates)) if rewards[i] < rewards[best]]
    if not lower:
        return []
    if strategy == "best_vs_worst":
        return [(best, min(lower, key=lambda i: (rewards[i], i)))]
    if strategy == "best_vs_random":
        return [(best, rng.choice(lower))]
    raise ValueError(f"unknown pair strategy {strategy!r}; expected one of {PAIR_STRATEGIES}")


# ---------------------------------------------------------------------------- the sampled set
@dataclass
class SampledPrompt:
    prompt: str
    candidates: list[Candidate]
    answers: list[str | None]  # the model's own extracted final answers (for majority), never gold ones

    def to_record(self) -> dict:
        return {"prompt": self.prompt, "answers": self.answers,
                "candidates": [asdict(candidate) for candidate in self.candidates]}

    @classmethod
    def from_record(cls, record: dict) -> "SampledPrompt":
        return cls(record["prompt"], [Candidate(**c) for c in record["candidates"]], record["answers"])

    def usable(self, require_finished: bool) -> "SampledPrompt":
        """Only the candidates that ended with EOS when `require_finished`."""
        if not require_finished:
            return self
        keep = [i for i, candidate in enumerate(self.candidates) if candidate.finished]
        return SampledPrompt(self.prompt, [self.candidates[i] for i in keep], [self.answers[i] for i in keep])


def sample_training_set(ctx: AlgorithmContext, config: SelfRewardSamplingConfig) -> list[SampledPrompt]:
    """N self-scored samples per prompt of the pool from `ctx.base`, computed once per (model, data, keys)."""
    prompts = config.pool_prompts(ctx.data, config.train_prompts)

    def generate(engine):
        log.info("sampling %d responses for each of %d training prompts", config.samples_per_prompt, len(prompts))
        request = sample_request(config.samples_per_prompt, config.temperature, config.top_p, config.max_new_tokens,
                                 ctx.data.stop)
        outputs = engine.generate(prompts, request, seed=ctx.seed)
        sampled = [SampledPrompt(prompt, candidates, [ctx.data.checker.extract(c.text) for c in candidates])
                   for prompt, candidates in zip(prompts, outputs)]
        summary = sampled_set_summary(sampled)
        summary["compute"] = {"generated_tokens": sum(c.num_tokens for candidates in outputs for c in candidates)}
        return [prompt.to_record() for prompt in sampled], summary

    # the prompts themselves, not only how many: the pool (held-out, test or train prompts) is drawn from the same
    # data, so a count alone would hand a prompt_pool=test job the held-out pool's samples
    prompt_key = {"pool": config.prompt_pool, "count": len(prompts),
                  "sha256": hashlib.sha256("\x1e".join(prompts).encode()).hexdigest()}
    spec = ctx.stage_spec(sampling=config.sampling_keys(), base=ctx.base, data=ctx.data, prompts=prompt_key)
    records, _, _ = generated_records(ctx, "samples", spec, SAMPLES_FILE, ctx.base, generate, code=__name__)
    sampled = [SampledPrompt.from_record(record) for record in records]
    ctx.log({f"samples/{key}": value for key, value in sampled_set_summary(sampled).items()})
    ctx.artifacts["sampled_set"] = (sampled, ctx.base)  # scored against gold by the launcher (premises.py)
    return sampled


def sampled_set_summary(sampled: list[SampledPrompt]) -> dict:
    candidates = [c for prompt in sampled for c in prompt.candidates]
    answers = [a for prompt in sampled for a in prompt.answers]
    return {
        "prompts": len(sampled),
        "samples": len(candidates),
        "finished_share": sum(c.finished for c in candidates) / max(len(candidates), 1),
        "with_answer_share": sum(a is not None for a in answers) / max(len(answers), 1),
        "mean_tokens": sum(c.num_tokens for c in candidates) / max(len(candidates), 1),
        "distinct_answers_per_prompt": sum(len({a for a in p.answers if a is not None}) for p in sampled)
        / max(len(sampled), 1),
    }
