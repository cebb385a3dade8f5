"""Self-Explore, RFT and outcome-level DPO: splitters on real GSM8K and MATH rows, first-pit search with a
scripted policy whose continuations' correctness is known per prefix, the pair builders, config and data
errors, and one end-to-end run with scripted sampling so every stage (RFT, exploration, DPO) trains for real."""
import json
import re
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import FAST, FAST_TRAINING, compose_config
from framework.algorithms import pipeline, self_explore
from framework.algorithms.rationales import (Rationale, SampledQuestion, equation_signature, keep_rationales, kept_set,
                                             outcome_pairs, rejected_for_training, require_gold_answers,
                                             strip_answer_line)
from framework.algorithms.self_explore import (ExplorationRecord, ExplorationTarget, explore_first_pits, first_pit,
                                               step_level_pairs)
from framework.config import ModelConfig, to_validated
from framework.data import steps as step_splitters
from framework.data.answers import NumericAnswerChecker
from framework.data.steps import split_lines, split_sentences, split_steps
from framework.errors import ConfigError

DATA = Path("/work/shared/data")
CHECKER = NumericAnswerChecker()


def _is_correct(text, gold):
    return CHECKER.check(text, gold).correct


def _rows(path: Path, count: int) -> list[dict]:
    if not path.is_file():
        pytest.skip(f"{path} is not available")
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for _, line in zip(range(count), handle)]


# ---------------------------------------------------------------------------- splitters
def test_line_splitter_keeps_line_endings_and_attaches_blank_lines():
    text = "\n3 + 4 = 7\n\n7 - 2 = 5\n#### 5"
    assert split_lines(text) == ["\n3 + 4 = 7\n\n", "7 - 2 = 5\n", "#### 5"]
    assert split_lines("  \n\n") == [] and split_lines("") == []


def test_line_splitter_on_real_gsm8k_rows():
    for row in _rows(DATA / "gsm8k/train.jsonl", 300):
        steps = split_steps("lines", row["answer"])
        assert "".join(steps) == row["answer"]
        assert len(steps) == sum(1 for line in row["answer"].splitlines() if line.strip())
        assert steps[-1].startswith("####") and all(step.strip() for step in steps)


def test_sentence_splitter_keeps_math_whole():
    text = ("We have $x = 2.5$ and $y = 3. 5$. Then\n\\[x + y = 5. 5\\]\nso the sum is $\\boxed{8}$. "
            "It costs \\$5. Done!")
    assert split_sentences(text) == [
        "We have $x = 2.5$ and $y = 3. 5$. ",  # '. ' inside inline math is no sentence end
        "Then\n\\[x + y = 5. 5\\]\n",  # a display formula on its own line ends the step
        "so the sum is $\\boxed{8}$. ",
        "It costs \\$5. ",  # an escaped dollar opens no math
        "Done!",
    ]
    assert split_sentences("First.\n\n$$a=1$$ and $$b = 2$$.") == ["First.\n\n", "$$a=1$$ and $$b = 2$$."]
    # a sentence that ends inside its formula, and a display formula run into the next sentence (real MATH style)
    assert split_sentences("It is $$(0,3).$$The slope is $3.$ Therefore \\begin{align*}x&=1\\end{align*}Then $y$.") == [
        "It is $$(0,3).$$", "The slope is $3.$ ", "Therefore \\begin{align*}x&=1\\end{align*}", "Then $y$."]


def _balanced(step: str) -> bool:
    unescaped = re.sub(r"\\\$", "", step)
    return unescaped.count("$") % 2 == 0 and step.count("\\[") == step.count("\\]") and \
        step.count("\\begin{") == step.count("\\end{")


def test_sentence_splitter_on_real_math_rows():
    rows = _rows(DATA / "math/train.jsonl", 400)
    step_counts = []
    for row in rows:
        steps = split_steps("sentences", row["solution"])
        assert "".join(steps) == row["solution"] and all(step.strip() for step in steps)
        if _balanced(row["solution"]):  # a few rows write an unescaped "$120": no formula boundary to keep
            assert all(_balanced(step) for step in steps), steps  # never a cut inside a formula
        step_counts.append(len(steps))
    assert sum(count > 1 for count in step_counts) / len(step_counts) > 0.8  # most solutions have several steps
    first = split_steps("sentences", rows[0]["solution"])  # train/algebra/0.json
    assert first[0] == 'For the piecewise function to be continuous, the cases must "meet" at $2$ and $-2$. '
    assert first[-1] == "So $a+b=-3+3=\\boxed{0}$." and len(first) == 6


def test_a_splitter_that_yields_zero_steps_is_a_config_error(monkeypatch):
    monkeypatch.setitem(step_splitters.SPLITTERS, "nothing", lambda text: [])
    with pytest.raises(ConfigError, match="step_splitter=nothing yields zero steps"):
        split_steps("nothing", "3 + 4 = 7\n#### 7")
    monkeypatch.setitem(step_splitters.SPLITTERS, "lossy", lambda text: [line for line in text.split("\n")])
    with pytest.raises(ConfigError, match="concatenate back"):
        split_steps("lossy", "3 + 4 = 7\n#### 7")


# ---------------------------------------------------------------------------- first pit, scripted policy
QUESTION = "Ann has 3 pens. Ann finds 4 more. Ann loses 2. How many pens does Ann have now?\n"
GOLD_STEPS = ["3 + 4 = 7\n", "7 - 2 = 5\n", "#### 5"]
K = 4


class ScriptedPolicy:
    """Continuations whose correctness is set per prefix: `successes[steps in prefix]` of the K
    continuations finish the gold solution, the others end in a wrong answer. Records every call."""

    def __init__(self, successes_by_prompt: dict[str, int]):
        self.successes_by_prompt = successes_by_prompt
        self.calls: list[list[str]] = []

    def __call__(self, prompts, keys=None):
        self.calls.append(list(prompts))
        outputs = []
        for prompt in prompts:
            good = self.successes_by_prompt[prompt]
            outputs.append([f"right {j}\n#### 5" for j in range(good)] + ["#### 999"] * (K - good))
        return outputs


def _target(steps, rationale_index=0, finished=True, question_index=0, prompt=QUESTION):
    return ExplorationTarget(question_index, rationale_index, prompt, "5", steps, finished)


def _prefix(steps, count, prompt=QUESTION):
    return prompt + "".join(steps[:count])


def test_first_pit_over_a_success_table():
    assert first_pit([3, 1, 0, 0]) == 3
    assert first_pit([0, 2]) == 1
    assert first_pit([2, 2, 1]) is None
    assert first_pit([2, None, 0]) is None  # exploration stopped before any pit


def test_pit_is_found_at_the_right_step_and_exploration_stops_there():
    wrong_second = ["3 + 4 = 7\n", "7 - 2 = 6\n", "#### 6"]  # s2 is the mistake
    wrong_first = ["3 + 4 = 8\n", "8 - 2 = 6\n", "#### 6"]
    policy = ScriptedPolicy({_prefix(wrong_second, 1): 2, _prefix(wrong_second, 2): 0, _prefix(wrong_first, 1): 0})
    records = explore_first_pits([_target(wrong_second), _target(wrong_first, 1)], policy, _is_correct,
                                 max_explored_steps=20)
    assert [r.pit for r in records] == [2, 1]
    assert records[0].success_counts == [2, 0, None] and records[1].success_counts == [0, None, None]
    assert records[0].successes[0] == ["right 0\n#### 5", "right 1\n#### 5"]
    assert [r.rollouts for r in records] == [2 * K, K]
    # batched: one call per step index holding every rationale still without a pit
    assert policy.calls == [[_prefix(wrong_second, 1), _prefix(wrong_first, 1)], [_prefix(wrong_second, 2)]]


def test_all_prefixes_schedule_is_one_call_and_finds_the_same_pits():
    wrong_second = ["3 + 4 = 7\n", "7 - 2 = 6\n", "#### 6"]
    wrong_first = ["3 + 4 = 8\n", "8 - 2 = 6\n", "#### 6"]
    policy = ScriptedPolicy({_prefix(wrong_second, 1): 2, _prefix(wrong_second, 2): 0, _prefix(wrong_first, 1): 0,
                             _prefix(wrong_first, 2): 0})
    records = explore_first_pits([_target(wrong_second), _target(wrong_first, 1)], policy, _is_correct,
                                 max_explored_steps=20, schedule="all_prefixes")
    assert [r.pit for r in records] == [2, 1] and len(policy.calls) == 1 and len(policy.calls[0]) == 4
    assert records[1].success_counts == [0, 0, None]  # explored past the pit: recorded, pit unchanged


def test_the_last_step_of_a_finished_rationale_is_its_own_failed_continuation():
    only_answer_wrong = ["3 + 4 = 7\n", "7 - 2 = 5\n", "#### 6"]
    policy = ScriptedPolicy({_prefix(only_answer_wrong, 1): 4, _prefix(only_answer_wrong, 2): 3})
    (record,) = explore_first_pits([_target(only_answer_wrong)], policy, _is_correct, max_explored_steps=20)
    assert record.success_counts == [4, 3, 0] and record.pit == 3 and record.rollouts == 2 * K
    assert all(len(call) == 1 and not call[0].endswith("#### 6") for call in policy.calls)  # never sampled


def test_rationales_with_no_pit_are_dropped():
    cut_off = ["3 + 4 = 7\n", "7 - 2 = 5\n"]  # unfinished (max_new_tokens): its last prefix is sampled too
    policy = ScriptedPolicy({_prefix(cut_off, 1): 1, _prefix(cut_off, 2): 2})
    (record,) = explore_first_pits([_target(cut_off, finished=False)], policy, _is_correct, max_explored_steps=20)
    assert record.success_counts == [1, 2] and record.pit is None
    pairs, dropped = step_level_pairs([record], {0: ["3 + 4 = 7\n7 - 2 = 5\n#### 5"]}, CHECKER)
    assert pairs == [] and dropped["no_pit"] == 1


def test_the_step_cap_holds():
    long = [f"{n} + 1 = {n + 1}\n" for n in range(1, 30)] + ["#### 30"]
    successes = {_prefix(long, count): 1 for count in range(1, len(long) + 1)}
    policy = ScriptedPolicy(successes)
    (record,) = explore_first_pits([_target(long)], policy, _is_correct, max_explored_steps=5)
    assert len(policy.calls) == 5 and all(len(call) == 1 for call in policy.calls)
    assert max(len(call[0]) for call in policy.calls) == len(_prefix(long, 5))  # no prefix beyond 5 steps
    assert record.success_counts[:5] == [1] * 5 and set(record.success_counts[5:]) == {None}
    assert record.pit is None  # no pit within the cap: dropped
    # a pit past the cap is never reported either
    successes[_prefix(long, 7)] = 0
    (record,) = explore_first_pits([_target(long)], ScriptedPolicy(successes), _is_correct, max_explored_steps=5)
    assert record.pit is None


# ---------------------------------------------------------------------------- step-level pairs (the scripts' rules)
def _record(steps, successes, pit, question_index=0, rationale_index=0, paired_chosen=None):
    counts = [len(s) if i < (pit or len(steps)) else None for i, s in enumerate(successes)]
    return ExplorationRecord(question_index, rationale_index, QUESTION, steps, counts, successes, pit, 0,
                             paired_chosen)


GOOD = "3 + 4 = 7\n7 - 2 = 5\n#### 5"


def test_step_pairs_follow_the_scripts_rules():
    wrong_second = ["3 + 4 = 7\n", "7 - 2 = 6\n", "#### 6"]
    records = [
        # pit at step 2: chosen = the shortest success from the prefix before it
        _record(wrong_second, [["7 - 2 = 5\n#### 5", "7-2=5\n#### 5"], [], []], pit=2),
        # pit at step 1: chosen = the outcome pair's chosen
        _record(["3 + 4 = 8\n", "8 - 2 = 6\n", "#### 6"], [[], [], []], pit=1, rationale_index=1,
                paired_chosen=GOOD),
        # pit at the answer line: the rejected loses it and is empty, so the pair is skipped
        _record(["3 + 4 = 7\n", "7 - 2 = 5\n", "#### 6"], [["x"], ["#### 5"], []], pit=3, rationale_index=2),
        # same rejected text again: the shortest unused chosen is the longer success, then the rejected is a duplicate
        _record(wrong_second, [["7 - 2 = 5\n#### 5", "7-2=5\n#### 5"], [], []], pit=2, rationale_index=3),
        # every success from the prefix is already a chosen of this question
        _record(["3 + 4 = 7\n", "7 - 2 = 4\n", "#### 4"], [["7-2=5\n#### 5"], [], []], pit=2, rationale_index=4),
        # pit at step 1 whose outcome chosen is already used
        _record(["3 + 5 = 8\n", "#### 8"], [[], []], pit=1, rationale_index=5, paired_chosen=GOOD),
        # no pit
        _record(wrong_second, [["a"], ["b"], ["c"]], pit=None, rationale_index=6),
        # another question: nothing is shared across questions
        _record(wrong_second, [["7 - 2 = 5\n#### 5", "7-2=5\n#### 5"], [], []], pit=2, question_index=1),
    ]
    pairs, dropped = step_level_pairs(records, {}, CHECKER)
    assert [(p["question_index"], p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [
        (0, QUESTION + "3 + 4 = 7\n", "7-2=5\n#### 5", "7 - 2 = 6\n"),
        (0, QUESTION, GOOD, "3 + 4 = 8\n"),
        (1, QUESTION + "3 + 4 = 7\n", "7-2=5\n#### 5", "7 - 2 = 6\n"),
    ]
    assert dict(dropped) == {"empty_rejected": 1, "duplicate_rejected": 1, "no_unused_chosen": 1,
                             "duplicate_chosen": 1, "no_pit": 1}
    # the rules are keys: first success, answer line kept, no dedup
    pairs, dropped = step_level_pairs(records, {}, CHECKER, strip_answer=False, step_chosen="first", dedup=False)
    assert [p["chosen"] for p in pairs] == ["7 - 2 = 5\n#### 5", GOOD, "#### 5", "7 - 2 = 5\n#### 5",
                                            "7-2=5\n#### 5", GOOD, "7 - 2 = 5\n#### 5"]
    assert pairs[2]["rejected"] == "#### 6" and dict(dropped) == {"no_pit": 1}


def test_pit_at_step_1_without_an_outcome_pair_takes_the_kept_correct_rationales_in_turn():
    first = _record(["3 + 4 = 8\n", "#### 8"], [[], []], pit=1)
    second = _record(["3 + 5 = 8\n", "#### 8"], [[], []], pit=1, rationale_index=1)
    pairs, _ = step_level_pairs([first, second], {0: [GOOD, "4 + 3 = 7\n7 - 2 = 5\n#### 5"]}, CHECKER)
    assert [p["chosen"] for p in pairs] == [GOOD, "4 + 3 = 7\n7 - 2 = 5\n#### 5"]
    pairs, dropped = step_level_pairs([first], {}, CHECKER)
    assert pairs == [] and dropped["pit_at_step_1_without_a_correct_rationale"] == 1


def test_explored_records_give_pairs_end_to_end():
    wrong_second = ["3 + 4 = 7\n", "7 - 2 = 6\n", "#### 6"]
    policy = ScriptedPolicy({_prefix(wrong_second, 1): 3, _prefix(wrong_second, 2): 0})
    records = explore_first_pits([_target(wrong_second)], policy, _is_correct, max_explored_steps=20)
    pairs, _ = step_level_pairs(records, {}, CHECKER)
    assert pairs[0]["prompt"] + pairs[0]["chosen"] == QUESTION + "3 + 4 = 7\nright 0\n#### 5"
    assert pairs[0]["rejected"] == "7 - 2 = 6\n"


def test_a_rejected_side_loses_its_final_answer_line():
    assert strip_answer_line("3 + 4 = 8\n8 - 2 = 6\n#### 6", CHECKER) == "3 + 4 = 8\n8 - 2 = 6\n"
    assert strip_answer_line("3 + 4 = 8\n", CHECKER) == "3 + 4 = 8\n"  # no answer line: unchanged
    from framework.data.answers import LetterAnswerChecker, MathAnswerChecker

    assert strip_answer_line("So $x=2$.\nThus $\\boxed{2}$.", MathAnswerChecker()) == "So $x=2$.\n"
    assert strip_answer_line("Max is cold.\nThe answer is B.", LetterAnswerChecker("AB")) == "Max is cold.\n"
    drops = Counter()
    pairs = [{"rejected": "3 + 4 = 8\n#### 8"}, {"rejected": "#### 8"}, {"rejected": "3 + 4 = 8\n"}]
    assert [p["rejected"] for p in rejected_for_training(pairs, CHECKER, True, drops)] == ["3 + 4 = 8\n"] * 2
    assert drops == {"empty_rejected": 1}


# ---------------------------------------------------------------------------- the kept set and outcome pairs
def _rationale(text, correct, finished=True):
    return Rationale(text, finished, None, correct, 3)


KEYS = {"correct_dedup": "equations", "max_correct_per_question": 8, "max_incorrect_per_question": None,
        "min_edit_distance": 0.2, "require_finished": True}


def test_equation_signature_is_the_equations_or_the_normalised_text_without_any():
    assert equation_signature("He has 48/2 = <<48/2=24>>24 clips.\n#### 24") == "48/2=24"
    assert equation_signature("3 + 4 = 7\n7 - 2 = 5\n#### 5") == "3+4=7|7-2=5"
    assert equation_signature("3+4=7\n 7-2 =5\n#### 5") == "3+4=7|7-2=5"
    assert equation_signature("No  equation here.") == "No equation here."


def test_correct_rationales_are_deduplicated_by_equations_keeping_the_farther_one():
    swapped, spaced, compact = "4 + 3 = 7\n7 - 2 = 5\n#### 5", GOOD, "3+4=7\n7-2=5\n#### 5"
    question = SampledQuestion(0, "Q\n", "5", [
        _rationale(swapped, True), _rationale(spaced, True), _rationale(compact, True),
        _rationale(spaced + " ", True),  # the same text up to whitespace
        _rationale("5 + 0 = 5\n#### 5", True, finished=False),  # cut off at max_new_tokens
        _rationale("3 + 4 = 8\n#### 8", False)])
    drops = Counter()
    kept = keep_rationales(question, KEYS, drops)
    # `compact` has the equations of `spaced` and is farther from the other kept one (`swapped`): it replaces it
    assert [kept.text(i) for i in kept.correct] == [swapped, compact]
    assert [kept.text(i) for i in kept.incorrect] == ["3 + 4 = 8\n#### 8"]
    assert drops == {"duplicate_text": 1, "unfinished": 1, "correct_same_equations": 1}
    drops = Counter()
    kept = keep_rationales(question, {**KEYS, "max_correct_per_question": 1}, drops)
    assert [kept.text(i) for i in kept.correct] == [swapped] and drops["correct_over_cap"] == 2


def test_math_rationales_are_deduplicated_by_edit_distance():
    question = SampledQuestion(0, "Q\n", "5", [
        _rationale("aaaaaaaaaa", True), _rationale("aaaaaaaaab", True),  # distance 0.1: a near duplicate
        _rationale("aaaaaaabbb", True),  # 0.3 from the first: kept
        _rationale("zzzzzzzzzz", False), _rationale("zzzzzzzzzy", False), _rationale("yyyyyyyyyy", False),
        _rationale("xxxxxxxxxx", False)])
    drops = Counter()
    kept = keep_rationales(question, {**KEYS, "correct_dedup": "edit_distance", "max_incorrect_per_question": 2},
                           drops)
    assert [kept.text(i) for i in kept.correct] == ["aaaaaaaaaa", "aaaaaaabbb"]
    assert [kept.text(i) for i in kept.incorrect] == ["zzzzzzzzzz", "yyyyyyyyyy"]
    assert drops == {"correct_near_duplicate": 1, "incorrect_near_duplicate": 1, "incorrect_over_cap": 1}


def _kept(correct, incorrect):
    question = SampledQuestion(3, "Q\n", "5", [_rationale(t, True) for t in correct] +
                               [_rationale(t, False) for t in incorrect])
    return keep_rationales(question, {**KEYS, "correct_dedup": "text"}, Counter())


def test_outcome_pairs_take_the_farthest_unused_incorrect_rationale():
    # edit distances: aaaa-aaab 1, aaaa-bbba 3, aaaa-cccc 4; bbbb-aaab 3, bbbb-bbba 1, bbbb-cccc 4
    drops = Counter()
    pairs = outcome_pairs(_kept(["aaaa", "bbbb"], ["aaab", "bbba", "cccc"]), "farthest", None, drops)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("aaaa", "cccc"), ("bbbb", "aaab")]
    assert all(p["prompt"] == "Q\n" and p["question_index"] == 3 for p in pairs)
    assert drops == {"incorrect_unpaired": 1}
    drops = Counter()  # more correct than incorrect: each incorrect rationale is used once
    pairs = outcome_pairs(_kept(["aaaa", "bbbb", "cccc"], ["dddd"]), "farthest", None, drops)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("aaaa", "dddd")]
    assert drops == {"correct_without_an_unused_incorrect": 2}
    assert outcome_pairs(_kept([], ["w"]), "farthest", None, drops) == []
    assert outcome_pairs(_kept(["aaaa"], ["aaab", "cccc"]), "farthest", 1, Counter())[0]["rejected"] == "cccc"


def test_math_outcome_pairs_take_the_shortest_rejected_far_enough():
    chosen = "abcdefghij"
    # normalised distances to it: 1.0 (20 z), 0.9, 0.5, 0.3
    far, farther_but_longer, half, near = "aZZZZZZZZZ", "z" * 20, "abcdeZZZZZ", "abcdefgZZZ"
    pairs = outcome_pairs(_kept([chosen], [farther_but_longer, half, far, near]), "distant_shortest", None, Counter())
    assert pairs[0]["rejected"] == far  # > 0.5: the 20-z and the 0.9 one; the shorter wins
    pairs = outcome_pairs(_kept([chosen], [near, half]), "distant_shortest", None, Counter())
    assert pairs[0]["rejected"] == half  # nothing > 0.5; > 0.4: only `half`
    pairs = outcome_pairs(_kept([chosen], ["abcdefghiZ", "abcdefghZZ"]), "distant_shortest", None, Counter())
    assert pairs[0]["rejected"] == "abcdefghiZ"  # none > 0.3: any, the shortest (first among equal lengths)


def test_cycle_pairing_pairs_every_incorrect_rationale():
    pairs = outcome_pairs(_kept(["c1", "c2"], ["w1", "w2", "w3"]), "cycle", None, Counter())
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("c1", "w1"), ("c2", "w2"), ("c1", "w3")]


def test_only_the_rejected_sides_of_outcome_pairs_are_explored():
    question = SampledQuestion(0, QUESTION, "5", [
        _rationale(GOOD, True), _rationale("3 + 4 = 8\n8 - 2 = 6\n#### 6", False),
        _rationale("3 + 4 = 7\n7 - 2 = 6\n#### 6", False)])
    kept, _ = kept_set([question], KEYS)
    pairs = outcome_pairs(kept[0], "farthest", None, Counter())
    config = self_explore.SelfExploreConfig(step_splitter="lines")
    targets, _ = self_explore.exploration_targets([question], config, pairs)
    assert [(t.rationale_index, t.paired_chosen) for t in targets] == [(pairs[0]["rejected_index"], GOOD)]
    everything, _ = self_explore.exploration_targets([question], self_explore.SelfExploreConfig(
        step_splitter="lines", explored_rationales="all_incorrect"), pairs)
    assert [t.rationale_index for t in everything] == [1, 2]


def test_kept_set_counts_every_rule():
    questions = [SampledQuestion(0, "Q\n", "5", [_rationale("a = 5", True), _rationale("a = 5 ", True)]),
                 SampledQuestion(1, "Q2\n", "5", [_rationale("b = 4", False)])]
    _, summary = kept_set(questions, KEYS)
    assert summary == {"kept_correct": 1, "kept_incorrect": 1, "questions_with_a_kept_correct": 1,
                       "dropped_duplicate_text": 1, "dropped_questions_without_a_correct": 1}


def test_rft_trains_the_built_model_by_default(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from framework.algorithms import AlgorithmContext, rft, rft_stage
    from framework.data.loaders import ArithDatasetConfig, load_arith

    started_from = []
    monkeypatch.setattr(rft_stage, "train_in_stage", lambda ctx, kind, spec, make, start, metadata, code, training:
                        started_from.append((start, spec["start"], metadata["kept_set"]["kept_correct"])))
    built, sft = SimpleNamespace(fingerprint={"base": "built"}), SimpleNamespace(fingerprint={"sft": 1})
    ctx = AlgorithmContext(config=None, base=sft, data=load_arith(ArithDatasetConfig(train_size=4, test_size=2)),
                           stages=None, runtime=None, seed=0, report_to="none", output_dir=tmp_path, initial=built)
    questions = [SampledQuestion(0, "Q\n", "5", [_rationale(GOOD, True)])]
    config = rft.RFTAlgorithmConfig()
    rft_stage.rft_model(ctx, questions, "key", config, config, "rft")
    rft_stage.rft_model(ctx, questions, "key", config, rft_stage.RFTStageConfig(train_from="sampler"), "rft")
    assert started_from == [(built, {"base": "built"}, 1), (sft, {"sft": 1}, 1)]


def test_dpo_pairs_put_eos_after_the_chosen_side_only(model_and_tokenizer, monkeypatch, tmp_path):
    from framework.algorithms import preference
    from framework.algorithms.preference import PreferenceTrainingConfig, train_dpo
    from framework.models import ModelHandle, Runtime

    model, tokenizer = model_and_tokenizer
    model.save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    start = ModelHandle(str(tmp_path / "m"), {"base": "test"})
    monkeypatch.setattr(preference, "train_in_stage", lambda ctx, kind, spec, make, start, metadata, code: make(
        str(tmp_path / "checkpoints")))
    ctx = SimpleNamespace(runtime=Runtime("cpu", "fp32"), seed=0, report_to="none", model_config=ModelConfig(),
                          log=lambda metrics: None)
    pairs = [{"prompt": QUESTION, "chosen": "7 - 2 = 5\n#### 5", "rejected": "7 - 2 = 6\n"}] * 2
    eos = tokenizer.eos_token_id
    for rejected_eos, expected in ((False, [True, False]), (True, [True, True])):
        config = PreferenceTrainingConfig(per_device_train_batch_size=2, rejected_eos=rejected_eos)
        trainer = train_dpo(ctx, "test", {"pairs": "pairs"}, start, pairs, config, rejected_eos=config.rejected_eos,
                            code=__name__)
        batch = next(iter(trainer.get_train_dataloader()))
        ends = [row[mask.bool()][-1].item() == eos for row, mask in zip(batch["input_ids"], batch["completion_mask"])]
        assert ends == [expected[0]] * 2 + [expected[1]] * 2  # chosen rows first, then rejected rows
        rejected_row = batch["input_ids"][2][batch["completion_mask"][2].bool()].tolist()
        assert "".join(tokenizer.decode(rejected_row, skip_special_tokens=True).split()) == "7-2=6"


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("algorithm, override, message", [
    ("self_explore", "algorithm.continuations_per_step=0", "continuations_per_step must be >= 1"),
    ("self_explore", "algorithm.step_splitter=words", "step_splitter must be one of"),
    ("self_explore", "algorithm.max_explored_steps=0", "max_explored_steps must be >= 1"),
    ("self_explore", "algorithm.exploration_schedule=dfs", "exploration_schedule must be one of"),
    ("self_explore", "algorithm.max_correct_per_question=0", "max_correct_per_question must be >= 1"),
    ("self_explore", "algorithm.rft.train_from=sft", "rft.train_from must be one of"),
    ("self_explore", "algorithm.explored_rationales=some", "explored_rationales must be one of"),
    ("self_explore", "algorithm.step_chosen=longest", "step_chosen must be one of"),
    ("outcome_dpo", "algorithm.outcome_pairing=nearest", "outcome_pairing must be one of"),
    ("outcome_dpo", "algorithm.min_edit_distance=1.5", "min_edit_distance must be in"),
    ("rft", "algorithm.correct_dedup=hash", "correct_dedup must be one of"),
    ("self_explore", "algorithm.beta=0", "beta must be > 0"),
    ("outcome_dpo", "algorithm.rationales_per_question=0", "rationales_per_question must be >= 1"),
    ("outcome_dpo", "algorithm.max_pairs_per_question=0", "max_pairs_per_question must be >= 1"),
    ("rft", "algorithm.temperature=0", "temperature must be > 0"),
    ("rft", "algorithm.max_correct_per_question=0", "max_correct_per_question must be >= 1"),
])
def test_bad_keys_fail_before_any_work(algorithm, override, message):
    with pytest.raises(ConfigError, match=message):
        to_validated(compose_config([f"algorithm={algorithm}", override]))


def test_the_three_methods_share_sampling_and_rft_defaults():
    from framework.algorithms.rft_stage import rft_keys

    configs = {name: to_validated(compose_config([f"algorithm={name}"])).algorithm
               for name in ("rft", "outcome_dpo", "self_explore")}
    assert configs["rft"].sampling_keys() == configs["outcome_dpo"].sampling_keys() == \
        configs["self_explore"].sampling_keys()
    assert rft_keys(configs["rft"]) == rft_keys(configs["outcome_dpo"].rft) == rft_keys(configs["self_explore"].rft)
    from framework.data.answers import NumericAnswerChecker as Numeric

    assert configs["rft"].kept_keys(Numeric()) == configs["self_explore"].kept_keys(Numeric())


def test_a_dataset_without_gold_answers_is_refused():
    from types import SimpleNamespace

    from framework.data.loaders import ArithDatasetConfig, load_arith

    data = load_arith(ArithDatasetConfig(train_size=4, test_size=2))
    with pytest.raises(ConfigError, match="needs gold final answers"):
        require_gold_answers(SimpleNamespace(data=data.without_labels()), "self_explore")
    require_gold_answers(SimpleNamespace(data=data), "self_explore")


# ---------------------------------------------------------------------------- the JSONL data stage
def test_a_records_stage_writes_utf8_jsonl_once_and_reuses_it(tmp_path):
    from framework.algorithms.pipeline import stored_records
    from framework.stages import StageStore

    ctx = SimpleNamespace(stages=StageStore(tmp_path))
    computed = []

    def compute():
        computed.append(1)
        return [{"text": "π ≈ 3.14"}, {"n": 1}], {"records": 2}

    first = stored_records(ctx, "demo", {"x": 1}, "demo.jsonl", compute, code="framework.algorithms.pipeline")
    again = stored_records(ctx, "demo", {"x": 1}, "demo.jsonl", compute, code="framework.algorithms.pipeline")
    records, key, record = first
    assert records == again[0] == [{"text": "π ≈ 3.14"}, {"n": 1}] and computed == [1] and record["records"] == 2
    # the bytes every stage artifact has had: UTF-8 as written, json.dumps' separators, a newline after each
    assert (tmp_path / "demo" / key / "output" / "demo.jsonl").read_bytes() == \
        '{"text": "π ≈ 3.14"}\n{"n": 1}\n'.encode("utf-8")


# ---------------------------------------------------------------------------- end to end, scripted sampling
def _scripted_sampling(monkeypatch, completions: dict[str, str], explorer_calls: list):
    """Rationales: per question the gold solution, one with a wrong final line, one with a wrong first
    line. Explorer: a prefix continues to the gold answer iff it is a prefix of the gold solution."""
    from framework.decoding import Candidate

    def wrong_last(solution):
        *lines, final = solution.split("\n")
        return "\n".join([*lines, f"#### {int(final.split()[-1]) + 1}"])

    def wrong_first(solution):
        first, *rest, final = solution.split("\n")
        left, result = first.rsplit(" = ", 1)
        return "\n".join([f"{left} = {int(result) + 1}", *rest, f"#### {int(final.split()[-1]) + 2}"])

    def rationales_of(prompt, request):
        gold = completions[prompt]
        texts = [gold, wrong_last(gold), wrong_first(gold)][: request.samples_per_prompt]
        return [Candidate(t, 5, -1.0, True, [0] * 5) for t in texts]

    def fake_explorer(engine, continuations_per_step, *args):
        def continue_prefixes(prompts, keys=None):
            explorer_calls.append(len(prompts))
            outputs = []
            for text in prompts:
                question = next(p for p in completions if text.startswith(p))
                prefix, gold = text[len(question):], completions[question]
                good = gold[len(prefix):] if gold.startswith(prefix) else "#### 999"
                outputs.append([good] * continuations_per_step)
            return outputs
        return continue_prefixes

    monkeypatch.setattr(pipeline, "open_engine", scripted_engine(rationales_of))
    monkeypatch.setattr(self_explore, "sampling_explorer", fake_explorer)


def scripted_engine(candidates_of):
    """An `open_engine` stand-in whose engine answers every prompt with `candidates_of(prompt, request)`."""
    from contextlib import contextmanager

    class ScriptedEngine:
        def generate(self, prompts, request, *, seed, keys=None, progress=True):
            return [candidates_of(prompt, request) for prompt in prompts]

        def close(self):
            pass

    @contextmanager
    def open_engine(handle, config, runtime, seed=0):
        yield ScriptedEngine()

    return open_engine


@pytest.mark.slow
def test_self_explore_runs_every_stage_and_reuses_them(monkeypatch, tmp_path):
    from framework.job import run
    from framework.data.loaders import ArithDatasetConfig, load_arith

    train = load_arith(ArithDatasetConfig(train_size=32, test_size=6)).train
    completions = dict(zip(train["prompt"], train["completion"]))
    explorer_calls: list[int] = []
    _scripted_sampling(monkeypatch, completions, explorer_calls)
    logged: dict = {}
    monkeypatch.setattr("framework.tracking.NullTracker.log", lambda self, metrics, prefix="": logged.update(metrics))
    shared = [*FAST, *FAST_TRAINING, "algorithm.starting_point=base", "algorithm.rationales_per_question=3",
              "algorithm.train_prompts=8"]
    rft_node = ["algorithm.rft.max_steps=2", "algorithm.rft.per_device_train_batch_size=8"]
    overrides = ["algorithm=self_explore", *shared, *rft_node]
    cache = tmp_path / "cache"
    results = run(compose_config(overrides, cache), tmp_path / "a")
    assert results["policy"]["stage"] == "self_explore"
    for kind in ("rationales", "rft", "exploration", "step_pairs", "self_explore"):
        assert len(list((cache / kind).glob("*/stage.json"))) == 1, kind
    pairs = [json.loads(line) for line in next((cache / "step_pairs").glob("*/output/pairs.jsonl")).open()]
    records = [json.loads(line) for line in next((cache / "exploration").glob("*/output/exploration.jsonl")).open()]
    outcome = [json.loads(line) for line in next((cache / "outcome_pairs").glob("*/output/pairs.jsonl")).open()]
    # 8 questions, each with 1 kept correct rationale (the gold one) and 2 incorrect ones: one outcome pair
    # per question, whose rejected side (the one farther from the gold text) alone is explored
    assert len(outcome) == 8 and all(pair["chosen"] == completions[pair["prompt"]] for pair in outcome)
    assert [(r["question_index"], r["rationale_index"]) for r in records] == \
        [(p["question_index"], p["rejected_index"]) for p in outcome]
    # a wrong first line: pit at step 1, chosen = the outcome pair's chosen; a wrong final line: pit at the
    # answer line, whose rejected loses that line and is empty, so no pair
    wrong_first = [r for r in records if r["pit"] == 1]
    assert len(pairs) == len(wrong_first) and all(r["pit"] == len(r["steps"]) for r in records if r["pit"] != 1)
    for pair in pairs:
        gold = completions[pair["prompt"]]
        assert pair["chosen"] == gold and pair["rejected"] != gold.split("\n")[0] + "\n"
        assert pair["rejected"].count("\n") == 1 and "####" not in pair["rejected"]
    assert logged["self_explore/pairs"] == len(pairs) and logged["self_explore/pits_found"] == 8
    assert logged.get("self_explore/dropped_empty_rejected", 0) == 8 - len(pairs) and logged["self_explore/rollouts"] > 0
    assert logged["rft/kept_correct"] == 8
    assert explorer_calls and max(explorer_calls) == 8  # the first round batches every rationale
    # outcome DPO and RFT on the same inputs reuse the rationale set and the RFT model
    calls_before = len(explorer_calls)
    outcome = run(compose_config(["algorithm=outcome_dpo", *shared, *rft_node], cache), tmp_path / "b")
    # algorithm=rft's keys are flat; equal to the rft node above (FAST_TRAINING's save/logging keys undone)
    node = compose_config(["algorithm=outcome_dpo", *shared, *rft_node], cache).algorithm.rft
    rft = run(compose_config(["algorithm=rft", *shared, f"algorithm.save_steps={node.save_steps}",
                              f"algorithm.logging_steps={node.logging_steps}"], cache), tmp_path / "c")
    assert outcome["policy"]["stage"] == "outcome_dpo" and rft["policy"]["stage"] == "rft"
    assert len(list((cache / "rationales").glob("*/stage.json"))) == 1
    assert len(list((cache / "rft").glob("*/stage.json"))) == 1
    assert len(explorer_calls) == calls_before
    again = run(compose_config(overrides, cache), tmp_path / "d")  # unchanged inputs: every stage reused
    assert again["policy"] == results["policy"] and len(explorer_calls) == calls_before


def test_zero_pairs_is_an_error_that_says_what_to_raise(monkeypatch, tmp_path):
    from framework.job import run
    from framework.decoding import Candidate

    # every rationale incorrect: RFT has nothing to learn from, and no chosen side exists
    always_wrong = scripted_engine(lambda prompt, request: [Candidate("1 + 1 = 2\n#### 999", 5, -1.0, True, [0] * 5)])
    monkeypatch.setattr(pipeline, "open_engine", always_wrong)
    monkeypatch.setattr(self_explore, "sampling_explorer",
                        lambda *args: (lambda prompts, keys=None: [["#### 999"] * 4 for _ in prompts]))
    shared = [*FAST, *FAST_TRAINING, "algorithm.starting_point=base", "algorithm.train_prompts=4"]
    with pytest.raises(ConfigError, match="RFT has nothing to train on; raise rationales_per_question"):
        run(compose_config(["algorithm=self_explore", *shared], tmp_path / "cache"), tmp_path / "a")
    with pytest.raises(ConfigError, match=r"no step-level pair \(0 outcome pairs, 0 incorrect rationales explored"):
        run(compose_config(["algorithm=self_explore", *shared, "algorithm.use_rft=false"], tmp_path / "cache"),
            tmp_path / "b")
    with pytest.raises(ConfigError, match="outcome_dpo: no training question has both"):
        run(compose_config(["algorithm=outcome_dpo", *shared, "algorithm.use_rft=false"], tmp_path / "cache"),
            tmp_path / "c")
    assert not list((tmp_path / "cache").glob("self_explore/*/stage.json"))  # nothing was trained
    # asked for explicitly: the untrained starting model comes back, and the run says so
    logged: dict = {}
    monkeypatch.setattr("framework.tracking.NullTracker.log", lambda self, metrics, prefix="": logged.update(metrics))
    results = run(compose_config(["algorithm=self_explore", *shared, "algorithm.on_empty=skip_training"],
                                 tmp_path / "cache"), tmp_path / "d")
    assert results["policy"]["base"] == "tiny" and "stage" in results["policy"]  # the base model's handle
    assert logged["rft/skipped_training"] == 1 and logged["self_explore/skipped_training"] == 1
    assert logged["self_explore/pairs"] == 0
