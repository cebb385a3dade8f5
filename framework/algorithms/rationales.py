"""What the Self-Explore family (algorithm=rft, outcome_dpo, self_explore; Hwang et al. 2024) shares: the
rationale set and the rules the authors' scripts apply to it (../shared/docs/self-explore-repo.md).

    rationale set   K samples per training question from the sampling model, each checked against the
                    gold answer (stage `rationales`, one file for the three methods when keys match)
    kept set        per question, the correct rationales deduplicated (equation signature for numeric
                    answers, edit distance for MATH-style text) up to M, and the distinct incorrect ones:
                    RFT's targets and the two sides of the outcome pairs
    outcome pairs   for each kept correct rationale, the unused incorrect one farthest from it (MATH:
                    the shortest among those far enough); each incorrect rationale used once
    rejected text   a rejected side loses its final-answer line; TRL appends no EOS to it (preference.py)

Stages: `rationales` (the rationale set, sampled from the starting model) and `outcome_pairs` (the pairs
of outcome DPO, whose rejected sides Self-Explore explores). The RFT model built on the kept set is
rft_stage.py's.

Every rule is a key with the scripts' choice as default, and every artifact records how many items each
rule dropped (`dropped_<rule>`), also logged to the tracker. Edit distances are rapidfuzz's Levenshtein.
"""
from __future__ import annotations

import logging
import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field

from rapidfuzz.distance import Levenshtein

from framework.algorithms import AlgorithmContext
from framework.algorithms.pipeline import generated_records, stored_records
from framework.config import TrainingSamplingConfig, Validated, require
from framework.decoding import sample_request
from framework.errors import ConfigError
from framework.models import ModelHandle

log = logging.getLogger(__name__)
RATIONALES_FILE = "rationales.jsonl"
PAIRS_FILE = "pairs.jsonl"
CORRECT_DEDUPS = ("auto", "equations", "edit_distance", "text")
OUTCOME_PAIRINGS = ("auto", "farthest", "distant_shortest", "cycle")
# distant_shortest: the thresholds on normalised edit distance the scripts try in turn for MATH
DISTANT_THRESHOLDS = (0.5, 0.4, 0.3)


# ---------------------------------------------------------------------------- configs
@dataclass
class RationaleSamplingConfig(TrainingSamplingConfig):
    """The rationale set (K per training question) and the kept set built from it; keys shared by rft,
    outcome_dpo and self_explore, so that equal values share one sampled file and one RFT model."""

    rationales_per_question: int = 100  # K; the Self-Explore scripts'
    starting_point: str = "sft"  # the rationales come from the SFT model (the scripts')
    temperature: float = 0.7  # the Self-Explore repo's
    # auto: equations for numeric answers (GSM8K, the embedded task), edit_distance otherwise (MATH), as the scripts
    correct_dedup: str = "auto"  # equations | edit_distance | text (whitespace-insensitive exact match)
    max_correct_per_question: int = 8  # M: kept correct rationales per question (RFT targets, outcome chosens)
    max_incorrect_per_question: int | None = None  # null: every distinct one (the scripts keep 24 for MATH)
    min_edit_distance: float = 0.2  # edit_distance dedup: kept only if farther than this from every kept one
    # auto: farthest for numeric answers, distant_shortest otherwise; cycle: every incorrect one, chosens in turn
    outcome_pairing: str = "auto"  # farthest | distant_shortest | cycle
    strip_rejected_answer: bool = True  # a rejected side loses its final-answer line (the scripts'); empty: skipped
    # the outcome pairs (and Self-Explore's exploration) of the first N questions only (null: every question, the
    # scripts'); RFT keeps every question's rationales. A budget key: the embedded headline's cut (docs/scale-model.md)
    pair_questions: int | None = None

    def checks(self, prefix: str) -> None:
        super().checks(prefix)
        require(self.rationales_per_question >= 1, f"{prefix}.rationales_per_question", "must be >= 1",
                self.rationales_per_question)
        require(self.correct_dedup in CORRECT_DEDUPS, f"{prefix}.correct_dedup",
                f"must be one of {list(CORRECT_DEDUPS)}", self.correct_dedup)
        require(self.max_correct_per_question >= 1, f"{prefix}.max_correct_per_question", "must be >= 1",
                self.max_correct_per_question)
        require(self.max_incorrect_per_question is None or self.max_incorrect_per_question >= 1,
                f"{prefix}.max_incorrect_per_question", "must be >= 1 or null", self.max_incorrect_per_question)
        require(math.isfinite(self.min_edit_distance) and 0 <= self.min_edit_distance < 1,
                f"{prefix}.min_edit_distance", "must be in [0, 1)", self.min_edit_distance)
        require(self.outcome_pairing in OUTCOME_PAIRINGS, f"{prefix}.outcome_pairing",
                f"must be one of {list(OUTCOME_PAIRINGS)}", self.outcome_pairing)
        require(self.pair_questions is None or self.pair_questions >= 1, f"{prefix}.pair_questions",
                "must be >= 1 or null", self.pair_questions)

    def sampling_keys(self) -> dict:
        """What determines the rationale set itself (TrainingSamplingConfig.draw_keys), not the rules applied to it."""
        return {**self.draw_keys(), "rationales_per_question": self.rationales_per_question}

    def kept_keys(self, checker) -> dict:
        """What determines the kept set, with `auto` resolved for this dataset."""
        return {"correct_dedup": resolved_dedup(self.correct_dedup, checker),
                "max_correct_per_question": self.max_correct_per_question,
                "max_incorrect_per_question": self.max_incorrect_per_question,
                "min_edit_distance": self.min_edit_distance, "require_finished": self.require_finished}


def numeric_answers(checker) -> bool:
    return getattr(checker, "name", None) == "numeric"


def resolved_dedup(dedup: str, checker) -> str:
    return dedup if dedup != "auto" else ("equations" if numeric_answers(checker) else "edit_distance")


def resolved_pairing(pairing: str, checker) -> str:
    return pairing if pairing != "auto" else ("farthest" if numeric_answers(checker) else "distant_shortest")


ON_EMPTY = ("error", "skip_training")


@dataclass
class OnEmptyConfig(Validated):
    """What a method does when its sampled data leave nothing to train on (no correct rationale, no pair)."""

    on_empty: str = "error"  # error: stop, naming what to raise | skip_training: warn, log it, return the start model

    def checks(self, prefix: str) -> None:
        super().checks(prefix)
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


def sample_rationales(ctx: AlgorithmContext, config: RationaleSamplingConfig,
                      method: str) -> tuple[list[SampledQuestion], str]:
    """K rationales per training question from `ctx.base`, each marked correct or not against gold."""
    require_gold_answers(ctx, method)
    train = ctx.data.train
    count = len(train) if config.train_prompts is None else min(config.train_prompts, len(train))
    prompts, golds = list(train["prompt"][:count]), list(train["gold_answer"][:count])

    def generate(engine):
        log.info("sampling %d rationales for each of %d training questions", config.rationales_per_question, count)
        request = sample_request(config.rationales_per_question, config.temperature, config.top_p,
                                 config.max_new_tokens, ctx.data.stop)
        outputs = engine.generate(prompts, request, seed=ctx.seed)
        questions = []
        for index, (prompt, gold, candidates) in enumerate(zip(prompts, golds, outputs)):
            rationales = []
            for candidate in candidates:
                verdict = ctx.data.checker.check(candidate.text, gold)
                rationales.append(Rationale(candidate.text, candidate.finished, verdict.extracted, verdict.correct,
                                            candidate.num_tokens))
            questions.append(SampledQuestion(index, prompt, gold, rationales))
        summary = rationale_set_summary(questions)
        summary["compute"] = {"generated_tokens": sum(c.num_tokens for candidates in outputs for c in candidates)}
        return [q.to_record() for q in questions], summary

    spec = ctx.stage_spec(sampling=config.sampling_keys(), base=ctx.base, data=ctx.data, prompts=count)
    records, key, _ = generated_records(ctx, "rationales", spec, RATIONALES_FILE, ctx.base, generate, code=__name__)
    questions = [SampledQuestion.from_record(record) for record in records]
    ctx.log({f"rationales/{name}": value for name, value in rationale_set_summary(questions).items()})
    # scored by the launcher after training (premises.py): how many distinct correct rationales RFT could keep
    ctx.artifacts["rationales"] = (questions, config.kept_keys(ctx.data.checker))
    return questions, key


def rationale_set_summary(questions: list[SampledQuestion]) -> dict:
    rationales = [r for q in questions for r in q.rationales]
    finished = [r for r in rationales if r.finished]
    return {
        "questions": len(questions),
        "rationales": len(rationales),
        "finished_share": len(finished) / max(len(rationales), 1),
        "correct_share": sum(r.correct for r in finished) / max(len(finished), 1),  # among the finished
        "questions_with_a_correct": sum(any(r.correct and r.finished for r in q.rationales) for q in questions),
    }


# ---------------------------------------------------------------------------- the kept set
_ANNOTATION = re.compile(r"<<([^<>]*)>>")
# an arithmetic equation as the rationales write it: `12 - 3 = 9`, `$4 * 5 = $20`, `1,200/3=400`
_OPERAND = r"[\d$.,()]*\d[\d$.,()]*"
_EQUATION = re.compile(rf"{_OPERAND}(?:\s*[-+*/x×÷]\s*{_OPERAND})*\s*=\s*-?\$?[\d.,]*\d")


def normalized(text: str) -> str:
    """Two rationales are the same text when they differ only in whitespace."""
    return " ".join(text.split())


def equation_signature(text: str) -> str:
    """Every equation of a rationale, spaces removed, joined: GSM8K's `<<a*b=c>>` annotations when it has
    any, else the `lhs = rhs` equations it writes. Without equations, the whitespace-normalised text."""
    equations = _ANNOTATION.findall(text) or _EQUATION.findall(text)
    return "|".join(re.sub(r"\s+", "", equation) for equation in equations) or normalized(text)


def normalised_distance(a: str, b: str) -> float:
    return Levenshtein.normalized_distance(a, b)  # edit distance / the longer length, in [0, 1]


@dataclass
class KeptQuestion:
    """One question's kept rationales, as indices into its `rationales`."""

    question: SampledQuestion
    correct: list[int]
    incorrect: list[int]

    def text(self, index: int) -> str:
        return self.question.rationales[index].text


def _dedup_by_equations(question: SampledQuestion, candidates: list[int], limit: int, drops: Counter) -> list[int]:
    """First `limit` distinct equation signatures in sampling order; a later rationale with a kept signature
    replaces the kept one when its summed edit distance to the other kept ones is larger (the scripts')."""
    kept: dict[str, int] = {}
    text = lambda i: question.rationales[i].text
    for index in candidates:
        signature = equation_signature(text(index))
        if signature not in kept:
            if len(kept) < limit:
                kept[signature] = index
            else:
                drops["correct_over_cap"] += 1
            continue
        drops["correct_same_equations"] += 1
        others = [text(i) for s, i in kept.items() if s != signature]
        spread = lambda i: sum(Levenshtein.distance(text(i), other) for other in others)
        if spread(index) > spread(kept[signature]):
            kept[signature] = index
    return list(kept.values())


def _dedup_by_distance(question: SampledQuestion, candidates: list[int], limit: int | None, threshold: float,
                       drops: Counter, side: str) -> list[int]:
    """In sampling order, kept when its normalised edit distance to every kept one exceeds `threshold`."""
    kept: list[int] = []
    for index in candidates:
        text = question.rationales[index].text
        if any(normalised_distance(text, question.rationales[k].text) <= threshold for k in kept):
            drops[f"{side}_near_duplicate"] += 1
        elif limit is not None and len(kept) >= limit:
            drops[f"{side}_over_cap"] += 1
        else:
            kept.append(index)
    return kept


def _count(drops: Counter, rule: str, count: int) -> None:
    if count:  # only rules that dropped something appear in the counts
        drops[rule] += count


def keep_rationales(question: SampledQuestion, keys: dict, drops: Counter) -> KeptQuestion:
    """The kept correct and incorrect rationales of one question (`keys`: RationaleSamplingConfig.kept_keys),
    counting in `drops` what each rule removed."""
    seen, distinct = set(), {True: [], False: []}
    for index, rationale in enumerate(question.rationales):
        if keys["require_finished"] and not rationale.finished:
            drops["unfinished"] += 1
            continue
        key = normalized(rationale.text)
        if not key:
            drops["empty"] += 1
        elif key in seen:
            drops["duplicate_text"] += 1
        else:
            seen.add(key)
            distinct[rationale.correct].append(index)
    dedup, limit = keys["correct_dedup"], keys["max_correct_per_question"]
    if dedup == "equations":
        correct = _dedup_by_equations(question, distinct[True], limit, drops)
    elif dedup == "edit_distance":
        correct = _dedup_by_distance(question, distinct[True], limit, keys["min_edit_distance"], drops, "correct")
    else:
        correct = distinct[True][:limit]
        _count(drops, "correct_over_cap", len(distinct[True]) - len(correct))
    if dedup == "edit_distance":
        incorrect = _dedup_by_distance(question, distinct[False], keys["max_incorrect_per_question"],
                                       keys["min_edit_distance"], drops, "incorrect")
    else:
        cap = keys["max_incorrect_per_question"]
        incorrect = distinct[False][:cap] if cap is not None else distinct[False]
        _count(drops, "incorrect_over_cap", len(distinct[False]) - len(incorrect))
    if not correct:
        drops["questions_without_a_correct"] += 1
    return KeptQuestion(question, correct, incorrect)


def kept_set(questions: list[SampledQuestion], keys: dict) -> tuple[list[KeptQuestion], dict]:
    """Every question's kept rationales, and the counts: kept, and dropped by each rule."""
    drops: Counter = Counter()
    kept = [keep_rationales(question, keys, drops) for question in questions]
    summary = {"kept_correct": sum(len(k.correct) for k in kept), "kept_incorrect": sum(len(k.incorrect) for k in kept),
               "questions_with_a_kept_correct": sum(bool(k.correct) for k in kept)}
    return kept, summary | {f"dropped_{rule}": count for rule, count in sorted(drops.items())}


# ---------------------------------------------------------------------------- outcome pairs
def _farthest(chosen: str, pool: list[tuple[int, str]]) -> int:
    """Position in `pool` of the text with the largest edit distance to `chosen` (first among ties)."""
    distances = [Levenshtein.distance(chosen, text) for _, text in pool]
    return distances.index(max(distances))


def _distant_shortest(chosen: str, pool: list[tuple[int, str]]) -> int:
    """The shortest text among those with normalised distance > 0.5 to `chosen`, else > 0.4, > 0.3, any."""
    for threshold in (*DISTANT_THRESHOLDS, None):
        far = [p for p, (_, text) in enumerate(pool)
               if threshold is None or normalised_distance(chosen, text) > threshold]
        if far:
            return min(far, key=lambda p: (len(pool[p][1]), p))
    raise ValueError("empty pool")


def outcome_pairs(kept: KeptQuestion, pairing: str, max_pairs: int | None, drops: Counter) -> list[dict]:
    """(prompt, chosen = a kept correct rationale, rejected = a kept incorrect one) of one question.

    farthest / distant_shortest (the scripts'): each kept correct rationale in turn takes the unused
    incorrect one its rule picks, each incorrect one used once, so min(|correct|, |incorrect|) pairs.
    cycle: every kept incorrect rationale is paired with the kept correct ones in turn."""
    question = kept.question
    if not kept.correct or not kept.incorrect:
        if kept.correct or kept.incorrect:
            drops["questions_without_both_sides"] += 1
        return []
    pairs: list[tuple[int, int]] = []
    if pairing == "cycle":
        pairs = [(kept.correct[j % len(kept.correct)], rejected) for j, rejected in enumerate(kept.incorrect)]
    else:
        pick = _farthest if pairing == "farthest" else _distant_shortest
        pool = [(index, kept.text(index)) for index in kept.incorrect]
        for chosen in kept.correct:
            if not pool:
                drops["correct_without_an_unused_incorrect"] += 1
                continue
            rejected, _ = pool.pop(pick(kept.text(chosen), pool))
            pairs.append((chosen, rejected))
        _count(drops, "incorrect_unpaired", len(pool))
    if max_pairs is not None and len(pairs) > max_pairs:
        drops["pairs_over_cap"] += len(pairs) - max_pairs
        pairs = pairs[:max_pairs]
    return [{"question_index": question.question_index, "prompt": question.prompt, "chosen": kept.text(chosen),
             "rejected": kept.text(rejected), "chosen_index": chosen, "rejected_index": rejected}
            for chosen, rejected in pairs]


def strip_answer_line(text: str, checker) -> str:
    """`text` without its final-answer line and what follows (the wrong answer is not what a rejected
    side should penalise); unchanged when it states no final answer."""
    start = checker.answer_start(text)
    return text if start is None else text[:start]


def rejected_for_training(pairs: list[dict], checker, strip_answer: bool, drops: Counter) -> list[dict]:
    """The pairs as DPO trains on them: each rejected without its final-answer line (`strip_answer`); a pair
    left with a blank rejected is dropped (`dropped_empty_rejected`)."""
    kept = []
    for pair in pairs:
        rejected = strip_answer_line(pair["rejected"], checker) if strip_answer else pair["rejected"]
        if not rejected.strip():
            drops["empty_rejected"] += 1
            continue
        kept.append({**pair, "rejected": rejected})
    return kept


# ---------------------------------------------------------------------------- the outcome pair set
def outcome_pair_set(ctx: AlgorithmContext, config: RationaleSamplingConfig, questions: list[SampledQuestion],
                     rationales_key: str, max_pairs_per_question: int | None,
                     pair_questions: int | None = None) -> tuple[list[dict], str, dict]:
    """Every question's outcome pairs (stage `outcome_pairs`: raw rationale texts, before the rejected
    side is trimmed for training), its key and its summary: pairs and what each rule dropped. `pair_questions`:
    only the first N questions' (None: all, the scripts')."""
    keys = config.kept_keys(ctx.data.checker)
    pairing = resolved_pairing(config.outcome_pairing, ctx.data.checker)
    paired = questions if pair_questions is None else questions[:pair_questions]

    def compute():
        kept, summary = kept_set(paired, keys)
        drops: Counter = Counter()
        pairs = [pair for k in kept for pair in outcome_pairs(k, pairing, max_pairs_per_question, drops)]
        summary = {**summary, "pairs": len(pairs), "questions_with_pairs": len({p["question_index"] for p in pairs}),
                   "distinct_chosen_per_question": _distinct_chosen_per_question(pairs),
                   **{f"dropped_{rule}": count for rule, count in sorted(drops.items())}}
        return pairs, summary

    spec = ctx.stage_spec(rationales=rationales_key, kept=keys, pairing=pairing,
                          max_pairs_per_question=max_pairs_per_question, seeded=False,
                          **({"pair_questions": pair_questions} if pair_questions is not None else {}))
    pairs, key, summary = stored_records(ctx, "outcome_pairs", spec, PAIRS_FILE, compute, code=__name__)
    ctx.log({f"outcome_pairs/{name}": value for name, value in summary_counts(summary).items()})
    return pairs, key, summary


def _distinct_chosen_per_question(pairs: list[dict]) -> float:
    chosen: dict[int, set] = {}
    for pair in pairs:
        chosen.setdefault(pair["question_index"], set()).add(pair["chosen"])
    return sum(map(len, chosen.values())) / max(len(chosen), 1)


def summary_counts(summary: dict) -> dict:
    """The numbers of a stage summary (not its spec or compute record), for the tracker."""
    return {key: value for key, value in summary.items() if isinstance(value, (int, float)) and key != "finished_at"}
