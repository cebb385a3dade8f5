"""`algorithm=self_explore`: Self-Explore (Hwang et al., Findings of EMNLP 2024; algorithms.md §4), with its
data as the authors' scripts build it (self-explore-repo.md). Uses gold final answers (outcome supervision)
to find, in each incorrect rationale, its first pit.

    pi_sft                                   the starting model (`starting_point: sft`, the shared SFT stage)
    y_1..y_K ~ pi_sft(. | x)                 the rationale set, K per training question     (stage `rationales`)
    pi_0 = RFT if use_rft else pi_sft        SFT on <= M deduplicated correct rationales    (stage `rft`)
    D_pair = outcome pairs (y+, y-)          as algorithm=outcome_dpo builds them           (stage `outcome_pairs`)
    for each rejected y- = s_1 s_2 ... s_n of D_pair   (steps from `step_splitter`):
        for i = 1 .. min(n, max_explored_steps):
            c_1..c_k ~ pi_0(. | x, s_1..s_i)            k = continuations_per_step
            successes_i = {c_j : x's gold answer is reached by s_1..s_i c_j}
        first pit w = the first i with no success (none: the rationale is dropped)       (stage `exploration`)
    step-level pair per pit w, at most one per outcome pair:                           (stage `step_pairs`)
        prompt   = x + s_1..s_{w-1}
        rejected = s_w, without a final-answer line (empty: skipped), no EOS
        chosen   = the shortest success from (x, s_1..s_{w-1}) not yet a chosen of x    (w = 1: y+)
        kept only if neither its chosen nor its rejected text is used by a kept pair of x
    DPO (sigmoid, beta) from pi_0 against the frozen pi_0                               (stage `self_explore`)

Exploration is batched: `rounds` (the default, as the authors' code does it) asks the explorer for the
step-i prefixes of every rationale still without a pit in one decode call per i, so rollouts stop at
the pit; `all_prefixes` asks for every prefix of every rationale in a single call (fewer, larger calls,
more rollouts). The engine sizes the batches of each decode call.

Step text is lossless: a splitter (framework/data/steps.py) returns spans that concatenate back to the
rationale, so every prompt above is exactly what the model wrote after x, and a continuation continues
the model's own text. A finished incorrect rationale is its own (failed) continuation from s_1..s_n, so that last
prefix counts 0 successes without sampling.

Zero pairs, like zero correct rationales for RFT, is a ConfigError naming what to raise.
`on_empty: skip_training` (asked for explicitly, e.g. by the integration test's random model) instead
returns the model training would have started from, with a warning and `<stage>/skipped_training: 1`
logged, so no run pretends it trained.
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Callable, Sequence

from framework import registry
from framework.algorithms import AlgorithmContext
from framework.algorithms.pipeline import generated_records, stored_records
from framework.algorithms.preference import PreferenceTrainingConfig, train_dpo
from framework.algorithms.rationales import (OnEmptyConfig, RationaleSamplingConfig, SampledQuestion, kept_set,
                                             nothing_to_train, numeric_answers, outcome_pair_set,
                                             rejected_for_training, sample_rationales)
from framework.algorithms.rft_stage import RFTStageConfig, rft_model
from framework.config import AlgorithmConfig, StartingPointConfig, Validated, require
from framework.data.steps import SPLITTERS, split_steps
from framework.decoding import sample_request
from framework.errors import ConfigError
from framework.models import ModelHandle

log = logging.getLogger(__name__)
EXPLORATION_FILE = "exploration.jsonl"
PAIRS_FILE = "pairs.jsonl"
SCHEDULES = ("rounds", "all_prefixes")
EXPLORED = ("outcome_pairs", "all_incorrect")
STEP_CHOSEN = ("shortest_unused", "first")


# ---------------------------------------------------------------------------- first-pit exploration
@dataclass
class ExplorationTarget:
    """One incorrect rationale to explore, and the correct rationale its outcome pair chose (if any)."""

    question_index: int
    rationale_index: int
    prompt: str
    gold: str
    steps: list[str]
    finished: bool
    paired_chosen: str | None = None  # the outcome pair's chosen side: the chosen of a pit at step 1


@dataclass
class ExplorationRecord:
    question_index: int
    rationale_index: int
    prompt: str
    steps: list[str]
    success_counts: list[int | None]  # per step (1-based step i at index i-1); None: not explored
    successes: list[list[str]]  # per step: every continuation from that prefix that reached the gold answer
    pit: int | None  # the first pit, 1-based; None: no pit within max_explored_steps (dropped)
    rollouts: int  # continuations sampled for this rationale
    paired_chosen: str | None = None


def first_pit(success_counts: list[int | None]) -> int | None:
    """The first step (1-based) from which no continuation reached the gold answer; None if every
    explored step had a success (or the step before an unexplored one did)."""
    for position, successes in enumerate(success_counts, start=1):
        if successes is None:
            return None
        if successes == 0:
            return position
    return None


def sampled_step_limit(target: ExplorationTarget, max_explored_steps: int) -> int:
    """How many prefixes are explored by sampling: a finished rationale's full text is already a
    failed continuation, so its last step is not sampled."""
    return min(len(target.steps) - (1 if target.finished else 0), max_explored_steps)


def explore_first_pits(targets: list[ExplorationTarget], continue_prefixes: Callable[..., list[list[str]]],
                       is_correct: Callable[[str, str], bool], max_explored_steps: int,
                       schedule: str = "rounds") -> list[ExplorationRecord]:
    """Success counts per step prefix and the first pit of every target.

    `continue_prefixes(prompts, keys)` returns the sampled continuations of each prompt (question + steps);
    `keys` names each prefix (target and step count), so its samples do not depend on the batch. It is
    called once per round (`rounds`: the step-i prefixes of all targets without a pit yet) or
    once in all (`all_prefixes`). A continuation c of prefix s_1..s_i is a success when
    `is_correct(s_1..s_i + c, gold)`."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown exploration schedule {schedule!r}; expected one of {SCHEDULES}")
    counts = [[None] * len(t.steps) for t in targets]
    successes: list[list[list[str]]] = [[[] for _ in t.steps] for t in targets]
    rollouts = [0] * len(targets)
    limits = [sampled_step_limit(t, max_explored_steps) for t in targets]

    def explore(prefixes: list[tuple[int, int]]) -> None:  # (target, number of steps in the prefix)
        if not prefixes:
            return
        texts = ["".join(targets[t].steps[:steps]) for t, steps in prefixes]
        keys = [t * (max_explored_steps + 1) + steps for t, steps in prefixes]
        sampled = continue_prefixes([targets[t].prompt + text for (t, _), text in zip(prefixes, texts)], keys)
        for (t, steps), text, outputs in zip(prefixes, texts, sampled):
            reached = [c for c in outputs if is_correct(text + c, targets[t].gold)]
            counts[t][steps - 1] = len(reached)
            successes[t][steps - 1] = reached
            rollouts[t] += len(outputs)

    if schedule == "all_prefixes":
        explore([(t, steps) for t in range(len(targets)) for steps in range(1, limits[t] + 1)])
    else:
        active = set(range(len(targets)))
        for steps in range(1, max(limits, default=0) + 1):
            batch = [t for t in sorted(active) if steps <= limits[t]]
            explore([(t, steps) for t in batch])
            active -= {t for t in batch if counts[t][steps - 1] == 0}
    records = []
    for t, target in enumerate(targets):
        last = len(target.steps)
        if target.finished and last <= max_explored_steps and all(c for c in counts[t][: last - 1]):
            counts[t][last - 1] = 0  # the rationale itself: a finished continuation that missed the gold answer
        records.append(ExplorationRecord(target.question_index, target.rationale_index, target.prompt,
                                         target.steps, counts[t], successes[t], first_pit(counts[t]),
                                         rollouts[t], target.paired_chosen))
    return records


def sampling_explorer(engine, continuations_per_step: int, temperature: float, top_p: float, max_new_tokens: int,
                      seed: int, stop: Sequence[str] = ()) -> Callable[..., list[list[str]]]:
    """`continue_prefixes` on one open engine for every round (k samples per prefix; `stop`: the data's)."""
    request = sample_request(continuations_per_step, temperature, top_p, max_new_tokens, stop)

    def continue_prefixes(prompts: list[str], keys: list[int] | None = None) -> list[list[str]]:
        outputs = engine.generate(prompts, request, seed=seed, keys=keys)
        return [[c.text for c in candidates] for candidates in outputs]

    return continue_prefixes


# ---------------------------------------------------------------------------- step-level pairs
def step_level_pairs(records: list[ExplorationRecord], correct_rationales: dict[int, list[str]], checker,
                     strip_answer: bool = True, step_chosen: str = "shortest_unused",
                     dedup: bool = True) -> tuple[list[dict], Counter]:
    """At most one (prompt, chosen, rejected) per explored rationale, in record order, and why the others
    gave none (`Counter` of rule -> dropped).

    Pit at step w > 1: prompt = question + s_1..s_{w-1}, rejected = s_w, chosen = the shortest success
    from that prompt not yet a chosen of the question (`step_chosen=first`: the first success). Pit at
    step 1: chosen = the record's outcome-pair chosen, else a kept correct rationale of the question in
    turn. The rejected loses its final-answer line (`strip_answer`; a blank one drops the pair). With
    `dedup`, a pair whose chosen or rejected text a kept pair of its question already uses is dropped."""
    pairs, dropped = [], Counter()
    used_chosen: dict[int, set[str]] = {}
    used_rejected: dict[int, set[str]] = {}
    turn = Counter()
    for record in records:
        pit, question = record.pit, record.question_index
        chosen_here, rejected_here = used_chosen.setdefault(question, set()), used_rejected.setdefault(question, set())
        if pit is None:
            dropped["no_pit"] += 1
            continue
        if pit == 1:
            pool = [record.paired_chosen] if record.paired_chosen is not None else correct_rationales.get(question, [])
            if not pool:
                dropped["pit_at_step_1_without_a_correct_rationale"] += 1
                continue
            chosen = pool[turn[question] % len(pool)] if record.paired_chosen is None else pool[0]
            turn[question] += record.paired_chosen is None
        else:
            candidates = record.successes[pit - 2]  # successes from the prefix before the pit: never empty
            if step_chosen == "shortest_unused":
                unused = [c for c in candidates if not (dedup and c in chosen_here)]
                if not unused:
                    dropped["no_unused_chosen"] += 1
                    continue
                chosen = min(unused, key=len)  # the first among equally short ones
            else:
                chosen = candidates[0]
        rejected = record.steps[pit - 1]
        if strip_answer:
            rejected = rejected_for_training([{"rejected": rejected}], checker, True, dropped)
            if not rejected:
                continue  # counted as dropped_empty_rejected
            rejected = rejected[0]["rejected"]
        if dedup and chosen in chosen_here:
            dropped["duplicate_chosen"] += 1
            continue
        if dedup and rejected in rejected_here:
            dropped["duplicate_rejected"] += 1
            continue
        chosen_here.add(chosen)
        rejected_here.add(rejected)
        pairs.append({"question_index": question, "rationale_index": record.rationale_index, "pit": pit,
                      "prompt": record.prompt + "".join(record.steps[: pit - 1]), "chosen": chosen,
                      "rejected": rejected})
    return pairs, dropped


def exploration_summary(records: list[ExplorationRecord], pairs: list[dict], dropped: Counter) -> dict:
    pits = [r.pit for r in records if r.pit is not None]
    summary = {
        "rationales_explored": len(records),
        "pits_found": len(pits),
        "pairs": len(pairs),
        "rollouts": sum(r.rollouts for r in records),
        "mean_steps": sum(len(r.steps) for r in records) / max(len(records), 1),
        "mean_pit_position": sum(pits) / max(len(pits), 1),
        "distinct_pairs": len({(p["prompt"], p["chosen"], p["rejected"]) for p in pairs}),
    }
    summary.update({f"dropped_{rule}": count for rule, count in sorted(dropped.items())})
    summary.update({f"pits_at_step_{position}": count for position, count in sorted(Counter(pits).items())})
    return summary


# ---------------------------------------------------------------------------- config
@dataclass
class ExplorationConfig(Validated):
    step_splitter: str = "auto"  # lines (one step per non-empty line: GSM8K) | sentences (MATH) | auto: by the answers
    continuations_per_step: int = 4  # k (paper: 4)
    exploration_temperature: float = 0.7  # paper: 0.7
    exploration_top_p: float = 1.0
    max_explored_steps: int = 20  # step cap (paper: 20)
    continuation_max_new_tokens: int = 512  # YAML: the dataset's generation length
    exploration_schedule: str = "rounds"  # rounds (one decode call per step index) | all_prefixes (one call)
    explored_rationales: str = "outcome_pairs"  # outcome_pairs: the rejected sides of D_pair (the scripts') | all_incorrect
    step_chosen: str = "shortest_unused"  # shortest_unused (the scripts') | first: the first success from the prefix
    dedup_step_pairs: bool = True  # per question, a pair is kept only if its chosen and rejected texts are unused

    def checks(self, prefix: str) -> None:
        super().checks(prefix)
        require(self.step_splitter in (*SPLITTERS, "auto"), f"{prefix}.step_splitter",
                f"must be one of {sorted(SPLITTERS) + ['auto']}", self.step_splitter)
        require(self.continuations_per_step >= 1, f"{prefix}.continuations_per_step", "must be >= 1",
                self.continuations_per_step)
        require(math.isfinite(self.exploration_temperature) and self.exploration_temperature > 0,
                f"{prefix}.exploration_temperature", "must be > 0", self.exploration_temperature)
        require(0 < self.exploration_top_p <= 1, f"{prefix}.exploration_top_p", "must be in (0, 1]",
                self.exploration_top_p)
        require(self.max_explored_steps >= 1, f"{prefix}.max_explored_steps", "must be >= 1", self.max_explored_steps)
        require(self.continuation_max_new_tokens >= 1, f"{prefix}.continuation_max_new_tokens", "must be >= 1",
                self.continuation_max_new_tokens)
        require(self.exploration_schedule in SCHEDULES, f"{prefix}.exploration_schedule",
                f"must be one of {list(SCHEDULES)}", self.exploration_schedule)
        require(self.explored_rationales in EXPLORED, f"{prefix}.explored_rationales",
                f"must be one of {list(EXPLORED)}", self.explored_rationales)
        require(self.step_chosen in STEP_CHOSEN, f"{prefix}.step_chosen", f"must be one of {list(STEP_CHOSEN)}",
                self.step_chosen)

    def exploration_keys(self) -> dict:
        """What determines the exploration records: not the pair rules applied to them, nor `prefixes_per_batch`
        (batching: the engine's noise is per prefix, keyed by its target and step)."""
        left_out = ("step_chosen", "dedup_step_pairs", "prefixes_per_batch")
        return {item.name: getattr(self, item.name) for item in fields(ExplorationConfig) if item.name not in left_out}


@dataclass
class SelfExploreConfig(PreferenceTrainingConfig, ExplorationConfig, RationaleSamplingConfig, OnEmptyConfig,
                        StartingPointConfig, AlgorithmConfig):
    name: str = "self_explore"
    use_rft: bool = True  # explorer, DPO policy and reference = the RFT model (paper); false: the starting model
    rft: RFTStageConfig = field(default_factory=RFTStageConfig)


# ---------------------------------------------------------------------------- the pipeline
def check_splitter_on_demonstrations(ctx: AlgorithmContext, config: SelfExploreConfig) -> None:
    """Fail before any sampling or training when the splitter cannot split this dataset's solutions."""
    if "completion" not in ctx.data.train.column_names:
        return
    count = len(ctx.data.train) if config.train_prompts is None else min(config.train_prompts, len(ctx.data.train))
    for index, text in enumerate(ctx.data.train["completion"][:count]):
        try:
            split_steps(config.step_splitter, text)
        except ConfigError as error:
            raise ConfigError(f"training row {index}: {error}") from None


def exploration_targets(questions: list[SampledQuestion], config: SelfExploreConfig,
                        outcome_pairs: list[dict]) -> tuple[list[ExplorationTarget], int]:
    """The rationales to explore, with at least one step each; and how many had none (an empty output).

    outcome_pairs (the scripts'): the rejected side of every outcome pair, which carries that pair's chosen.
    all_incorrect: every usable incorrect rationale of the rationale set."""
    if config.explored_rationales == "outcome_pairs":
        chosen_of = [(p["question_index"], p["rejected_index"], p["chosen"]) for p in outcome_pairs]
    else:
        chosen_of = [(q.question_index, index, None) for q in questions for index, r in enumerate(q.rationales)
                     if not r.correct and (r.finished or not config.require_finished)]
    by_index = {q.question_index: q for q in questions}
    targets, without_steps = [], 0
    for question_index, rationale_index, chosen in chosen_of:
        question = by_index[question_index]
        rationale = question.rationales[rationale_index]
        steps = split_steps(config.step_splitter, rationale.text)
        if not steps:
            without_steps += 1
            continue
        targets.append(ExplorationTarget(question_index, rationale_index, question.prompt, question.gold, steps,
                                         rationale.finished, chosen))
    return targets, without_steps


def explore(ctx: AlgorithmContext, config: SelfExploreConfig, targets_key: dict, targets: list[ExplorationTarget],
            without_steps: int, explorer: ModelHandle) -> tuple[list[ExplorationRecord], str]:
    """The exploration record of every target (stage `exploration`)."""
    def generate(engine):  # one engine for every round
        log.info("exploring %d incorrect rationales (k=%d, %s)", len(targets), config.continuations_per_step,
                 config.exploration_schedule)
        continue_prefixes = sampling_explorer(
            engine, config.continuations_per_step, config.exploration_temperature, config.exploration_top_p,
            config.continuation_max_new_tokens, ctx.seed, ctx.data.stop)
        records = explore_first_pits(targets, continue_prefixes,
                                     lambda text, gold: ctx.data.checker.check(text, gold).correct,
                                     config.max_explored_steps, config.exploration_schedule)
        rollouts = sum(r.rollouts for r in records)
        return [asdict(r) for r in records], {"rationales_without_steps": without_steps, "rollouts": rollouts,
                                              "compute": {"rollouts": rollouts}}

    spec = ctx.stage_spec(targets=targets_key, explorer=explorer, exploration=config.exploration_keys(),
                          require_finished=config.require_finished)
    records, key, _ = generated_records(ctx, "exploration", spec, EXPLORATION_FILE, explorer, generate, code=__name__)
    return [ExplorationRecord(**record) for record in records], key


@registry.algorithms.register("self_explore", SelfExploreConfig)
def run(ctx: AlgorithmContext) -> ModelHandle:
    config: SelfExploreConfig = ctx.config
    if config.step_splitter == "auto":  # the scripts': one step a line for GSM8K, sentences and formulas for MATH
        config = replace(config, step_splitter="lines" if numeric_answers(ctx.data.checker) else "sentences")
    check_splitter_on_demonstrations(ctx, config)
    questions, rationales_key = sample_rationales(ctx, config, "self_explore")
    # the RFT model (policy, reference, explorer) or, without RFT, the starting model
    explorer = (rft_model(ctx, questions, rationales_key, config, config.rft, "self_explore", config.on_empty)
                if config.use_rft else ctx.base)
    outcome, outcome_key, _ = outcome_pair_set(ctx, config, questions, rationales_key, None, config.pair_questions)
    targets, without_steps = exploration_targets(
        questions if config.pair_questions is None else questions[: config.pair_questions], config, outcome)
    targets_key = ({"outcome_pairs": outcome_key} if config.explored_rationales == "outcome_pairs"
                   else {"rationales": rationales_key, "explored": "all_incorrect"})
    records, exploration_key = explore(ctx, config, targets_key, targets, without_steps, explorer)
    ctx.artifacts["exploration"] = (records, lambda text: split_steps(config.step_splitter, text))

    keys = config.kept_keys(ctx.data.checker)
    # all_incorrect: a pit at step 1 takes the question's kept correct rationales in turn
    correct = {k.question.question_index: [k.text(i) for i in k.correct] for k in kept_set(questions, keys)[0]}
    pairs, dropped = step_level_pairs(records, correct, ctx.data.checker, config.strip_rejected_answer,
                                      config.step_chosen, config.dedup_step_pairs)
    summary = exploration_summary(records, pairs, dropped)
    pairs_spec = ctx.stage_spec(exploration=exploration_key, kept=keys,
                                strip_rejected_answer=config.strip_rejected_answer, step_chosen=config.step_chosen,
                                dedup_step_pairs=config.dedup_step_pairs, seeded=False)
    pairs, pairs_key, _ = stored_records(ctx, "step_pairs", pairs_spec, PAIRS_FILE, lambda: (pairs, summary),
                                         code=__name__)
    ctx.log({f"self_explore/{name}": value for name, value in summary.items()})
    log.info("self-explore: %d pits in %d explored rationales, %d pairs, %d rollouts", summary["pits_found"],
             summary["rationales_explored"], summary["pairs"], summary["rollouts"])
    if not pairs:
        return nothing_to_train(
            ctx, config.on_empty, "self_explore",
            f"algorithm=self_explore: no step-level pair ({len(outcome)} outcome pairs, "
            f"{summary['rationales_explored']} incorrect rationales explored, {summary['pits_found']} pits, {summary.get('dropped_no_pit', 0)} without a pit, "
            f"{summary.get('dropped_pit_at_step_1_without_a_correct_rationale', 0)} pits at step 1 with no correct "
            "rationale to pair); raise rationales_per_question or train_prompts, or start from a stronger model "
            "(starting_point=sft)", explorer)
    spec = ctx.stage_spec(pairs=pairs_key, start=explorer, training=config.preference_keys())
    return train_dpo(ctx, "self_explore", spec, explorer, pairs, config, rejected_eos=config.rejected_eos,
                     code=__name__, metadata={"pairs": summary})
