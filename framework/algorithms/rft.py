"""`algorithm=rft`: rejection-sampling fine-tuning (Yuan et al. 2023), as Self-Explore's stage 3
(Hwang et al. 2024, algorithms.md §4). Uses gold final answers.

    for each training question x with gold answer a:
        y_1..y_K ~ pi_sft(. | x)                            (the shared, cached rationale set)
        C(x) = up to M distinct y_i whose final answer is a  (first M in sampling order)
    SFT pi_sft on {(x, y) : y in C(x)}                      (TRL SFTTrainer, completion-only loss)

The rationale set is a stage of its own (`rationales`): `algorithm=rft`, `algorithm=outcome_dpo` and
`algorithm=self_explore` read the same `rationales.jsonl` when their sampling keys match, and the
RFT model itself is a stage (`rft`) whose key holds only what determines it (the rationale set, M and
the training keys), so Self-Explore's explorer is the very model an `algorithm=rft` job evaluates.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, fields
from typing import Callable

from datasets import Dataset

from framework import registry
from framework.algorithms import AlgorithmContext
from framework.algorithms.sft import make_sft_trainer
from framework.algorithms.training import train_in_stage
from framework.config import (AlgorithmConfig, StartingPointConfig, TrainingConfig, TrainingSamplingConfig, Validated,
                              require)
from framework.decoding import SampleConfig, SampleDecoder
from framework.errors import ConfigError
from framework.models import ModelHandle

log = logging.getLogger(__name__)
RATIONALES_FILE = "rationales.jsonl"


# ---------------------------------------------------------------------------- configs
@dataclass
class RationaleSamplingConfig(TrainingSamplingConfig):
    """How the K rationales per training question are drawn (keys shared by rft, outcome_dpo, self_explore)."""

    rationales_per_question: int = 8  # K; the Self-Explore repo samples 100
    temperature: float = 0.7  # the Self-Explore repo's

    def checks(self, prefix: str) -> None:
        TrainingSamplingConfig.checks(self, prefix)
        require(self.rationales_per_question >= 1, f"{prefix}.rationales_per_question", "must be >= 1",
                self.rationales_per_question)

    def sampling_keys(self) -> dict:
        return {item.name: getattr(self, item.name) for item in fields(RationaleSamplingConfig)}


@dataclass
class RFTStageConfig(TrainingConfig):
    """The RFT stage's keys: M and how the fine-tuning runs (TrainingConfig's names)."""

    max_correct_per_question: int = 8  # M: distinct correct rationales kept per question (paper: 8)

    def checks(self, prefix: str) -> None:
        super().checks(prefix)
        require(self.max_correct_per_question >= 1, f"{prefix}.max_correct_per_question", "must be >= 1",
                self.max_correct_per_question)


def rft_keys(config: RFTStageConfig) -> dict:
    """What determines the RFT model besides the rationale set, read from either config layout."""
    names = [item.name for item in fields(TrainingConfig)] + ["max_correct_per_question"]
    return {name: getattr(config, name) for name in names}


ON_EMPTY = ("error", "skip_training")


@dataclass
class OnEmptyConfig(Validated):
    """What a method does when its sampled data leave nothing to train on (no correct rationale, no pair)."""

    on_empty: str = "error"  # error: stop, naming what to raise | skip_training: warn, log it, return the start model

    def checks(self, prefix: str) -> None:
        require(self.on_empty in ON_EMPTY, f"{prefix}.on_empty", f"must be one of {list(ON_EMPTY)}", self.on_empty)


def nothing_to_train(ctx: AlgorithmContext, on_empty: str, stage: str, message: str, start: ModelHandle) -> ModelHandle:
    """Raise `message` as a ConfigError, or (on_empty=skip_training, asked for explicitly) return `start`
    untrained with a warning and `<stage>/skipped_training: 1` in the tracker, so the run shows it."""
    if on_empty == "error":
        raise ConfigError(message)
    log.warning("%s; on_empty=skip_training: returning the starting model untrained", message)
    ctx.log({f"{stage}/skipped_training": 1})
    return start


def require_gold_answers(ctx: AlgorithmContext, method: str) -> None:
    """These methods score rationales against gold answers: fail before any work without them."""
    train = ctx.data.train
    if "gold_answer" not in train.column_names:
        raise ConfigError(f"algorithm={method} needs gold final answers, but the training split has none "
                          f"(columns {train.column_names}); use a dataset with answers")
    missing = [i for i, gold in enumerate(train["gold_answer"]) if gold is None or not str(gold).strip()]
    if missing:
        raise ConfigError(f"algorithm={method} needs a gold final answer for every training question; "
                          f"rows {missing[:5]} have none")


# ---------------------------------------------------------------------------- the rationale set
@dataclass
class Rationale:
    text: str
    finished: bool  # ended with EOS
    answer: str | None  # the checker's extracted final answer
    correct: bool  # answer equals the gold answer
    num_tokens: int


@dataclass
class SampledQuestion:
    question_index: int  # row of the training split
    prompt: str
    gold: str
    rationales: list[Rationale] = field(default_factory=list)

    def to_record(self) -> dict:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict) -> "SampledQuestion":
        return cls(record["question_index"], record["prompt"], record["gold"],
                   [Rationale(**r) for r in record["rationales"]])

    def usable(self, require_finished: bool) -> list[Rationale]:
        return [r for r in self.rationales if r.finished or not require_finished]


def write_jsonl(path, records: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def read_jsonl(path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def stored_records(ctx: AlgorithmContext, kind: str, spec: dict, file: str,
                   compute: Callable[[], tuple[list[dict], dict]]) -> tuple[list[dict], str]:
    """JSONL records computed once per spec in stage `kind` (`compute` -> records, summary); returns
    the records and the stage key, which downstream stages put in their own specs."""
    with ctx.stages.open(kind, spec) as stage:
        if stage.done:
            log.info("reusing %s %s", kind, stage.output / file)
        else:
            records, summary = compute()
            output = stage.new_output_dir()
            write_jsonl(output / file, records)
            stage.commit(summary)
        return read_jsonl(stage.output / file), stage.key


def sample_rationales(ctx: AlgorithmContext, config: RationaleSamplingConfig,
                      method: str) -> tuple[list[SampledQuestion], str]:
    """K rationales per training question from `ctx.base`, each marked correct or not against gold."""
    require_gold_answers(ctx, method)
    train = ctx.data.train
    count = len(train) if config.train_prompts is None else min(config.train_prompts, len(train))
    prompts, golds = list(train["prompt"][:count]), list(train["gold_answer"][:count])
    spec = {"sampling": config.sampling_keys(), "base": ctx.base.fingerprint, "data": ctx.data.fingerprint,
            "seed": ctx.seed, "prompts": count}

    def compute():
        log.info("sampling %d rationales for each of %d training questions", config.rationales_per_question, count)
        decoder = SampleDecoder(SampleConfig(
            temperature=config.temperature, top_p=config.top_p, samples_per_prompt=config.rationales_per_question,
            max_new_tokens=config.max_new_tokens, prompts_per_batch=config.prompts_per_batch), seed=ctx.seed)
        model, tokenizer = ctx.base.load_model(ctx.runtime), ctx.base.load_tokenizer()
        decoded = decoder.decode(model, tokenizer, prompts)
        questions = []
        for index, (prompt, gold, result) in enumerate(zip(prompts, golds, decoded)):
            rationales = []
            for candidate in result.candidates:
                verdict = ctx.data.checker.check(candidate.text, gold)
                rationales.append(Rationale(candidate.text, candidate.finished, verdict.extracted, verdict.correct,
                                            candidate.num_tokens))
            questions.append(SampledQuestion(index, prompt, gold, rationales))
        summary = rationale_set_summary(questions, config.require_finished)
        summary["compute"] = {"generated_tokens": sum(c.num_tokens for result in decoded for c in result.candidates)}
        return [q.to_record() for q in questions], summary

    records, key = stored_records(ctx, "rationales", spec, RATIONALES_FILE, compute)
    questions = [SampledQuestion.from_record(record) for record in records]
    ctx.log({f"rationales/{name}": value
             for name, value in rationale_set_summary(questions, config.require_finished).items()})
    return questions, key


def rationale_set_summary(questions: list[SampledQuestion], require_finished: bool) -> dict:
    rationales = [r for q in questions for r in q.rationales]
    usable = [r for q in questions for r in q.usable(require_finished)]
    return {
        "questions": len(questions),
        "rationales": len(rationales),
        "finished_share": sum(r.finished for r in rationales) / max(len(rationales), 1),
        "correct_share": sum(r.correct for r in usable) / max(len(usable), 1),
        "questions_with_a_correct": sum(any(r.correct for r in q.usable(require_finished)) for q in questions),
        "questions_with_an_incorrect": sum(any(not r.correct for r in q.usable(require_finished)) for q in questions),
    }


# ---------------------------------------------------------------------------- RFT
def normalized(text: str) -> str:
    """Two rationales are the same when they differ only in whitespace."""
    return " ".join(text.split())


def distinct_correct(rationales: list[Rationale], limit: int | None = None) -> list[str]:
    """Texts of the correct rationales, first occurrence of each distinct one, in sampling order, at most `limit`."""
    seen, kept = set(), []
    for rationale in rationales:
        key = normalized(rationale.text)
        if rationale.correct and key and key not in seen:
            seen.add(key)
            kept.append(rationale.text)
            if limit is not None and len(kept) >= limit:
                break
    return kept


def rft_targets(questions: list[SampledQuestion], max_correct_per_question: int,
                require_finished: bool) -> list[dict]:
    """(prompt, completion) rows: up to M distinct correct rationales per question."""
    return [{"prompt": q.prompt, "completion": text} for q in questions
            for text in distinct_correct(q.usable(require_finished), max_correct_per_question)]


def rft_model(ctx: AlgorithmContext, questions: list[SampledQuestion], rationales_key: str,
              sampling: RationaleSamplingConfig, training: RFTStageConfig, method: str,
              on_empty: str = "error") -> ModelHandle:
    """The RFT model from `ctx.base` on the rationale set `rationales_key` (the `rft` stage, shared by
    every method with equal keys)."""
    targets = rft_targets(questions, training.max_correct_per_question, sampling.require_finished)
    if not targets:
        return nothing_to_train(
            ctx, on_empty, "rft", f"algorithm={method}: none of the sampled rationales reaches its gold answer, so "
            "RFT has nothing to train on; raise rationales_per_question or train_prompts, start from a stronger "
            "model (starting_point=sft)" + ("" if method == "rft" else ", or set use_rft=false"), ctx.base)
    ctx.log({"rft/targets": len(targets), "rft/questions": len({row["prompt"] for row in targets})})
    log.info("RFT on %d distinct correct rationales of %d questions", len(targets), len({r["prompt"] for r in targets}))
    spec = {"rationales": rationales_key, "base": ctx.base.fingerprint, "rft": rft_keys(training), "seed": ctx.seed}
    train = Dataset.from_list(targets)
    return train_in_stage(ctx, "rft", spec,
                          lambda checkpoint_dir: make_sft_trainer(ctx, training, checkpoint_dir, train=train))


# ---------------------------------------------------------------------------- algorithm=rft
@dataclass
class RFTAlgorithmConfig(RFTStageConfig, RationaleSamplingConfig, OnEmptyConfig, StartingPointConfig,
                         AlgorithmConfig):
    name: str = "rft"

    def checks(self, prefix: str) -> None:
        RFTStageConfig.checks(self, prefix)
        OnEmptyConfig.checks(self, prefix)
        RationaleSamplingConfig.checks(self, prefix)
        StartingPointConfig.checks(self, prefix)


@registry.algorithms.register("rft", RFTAlgorithmConfig)
def run(ctx: AlgorithmContext) -> ModelHandle:
    config: RFTAlgorithmConfig = ctx.config
    questions, rationales_key = sample_rationales(ctx, config, "rft")
    return rft_model(ctx, questions, rationales_key, config, config, "rft", config.on_empty)
