"""framework/premises.py: the premises of each method's training data, against hand-computed values."""
from types import SimpleNamespace

import pytest

from framework import premises
from framework.algorithms.sharpening import SampledPrompt
from framework.data import arith
from framework.data.answers import NumericAnswerChecker
from framework.generation import Candidate

CHECKER = NumericAnswerChecker()


def candidate(answer: int, logprob: float, tokens: int = 4) -> Candidate:
    return Candidate(text=f"1 + 1 = 2\n#### {answer}", num_tokens=tokens, logprob=logprob, finished=True, token_ids=[])


def sampled(prompt: str, *candidates: Candidate) -> SampledPrompt:
    return SampledPrompt(prompt, list(candidates), [CHECKER.extract(c.text) for c in candidates])


GOLD = {"p1": "5", "p2": "7"}
# p1: samples 5 (lp -1, 2 tokens), 3 (lp -0.5, 8 tokens), 5 (lp -3, 2 tokens): logprob picks the wrong 3,
#     length_norm too (-0.0625 per token against -0.5 and -1.5), majority the right 5 (two votes)
# p2: samples 7 (lp -2), 1 (lp -4): every selector picks 7
SAMPLED = [sampled("p1", candidate(5, -1.0, 2), candidate(3, -0.5, 8), candidate(5, -3.0, 2)),
           sampled("p2", candidate(7, -2.0), candidate(1, -4.0))]


def test_sampled_set_premises_score_each_self_rewards_pick_against_gold():
    values = premises.sampled_set_premises(SAMPLED, GOLD, CHECKER, greedy_correct={"p1": False, "p2": True})
    assert values["prompts"] == 2 and values["samples_per_prompt"] == 3
    assert values["sample_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert values["pass_at_n"] == 1.0
    assert values["best_of_n_logprob"] == 0.5  # p1's pick (3) is wrong
    assert values["best_of_n_length_norm"] == 0.5  # -0.0625 per token: 3 again
    assert values["best_of_n_majority"] == 1.0  # two votes for 5
    assert values["greedy_accuracy"] == 0.5


def test_targets_premises_give_the_share_of_targets_that_reach_gold():
    targets = [{"prompt": "p1", "completion": "#### 5"}, {"prompt": "p2", "completion": "#### 8"},
               {"prompt": "p2", "completion": "#### 7"}, {"prompt": "unknown", "completion": "#### 7"}]
    assert premises.targets_premises(targets, GOLD, CHECKER) == {"targets": 3, "targets_right_share": 2 / 3}


def test_pairs_premises_count_right_vs_wrong_and_the_reverse():
    pairs = [{"prompt": "p1", "chosen": "#### 5", "rejected": "#### 3"},   # right vs wrong
             {"prompt": "p1", "chosen": "#### 3", "rejected": "#### 5"},   # wrong vs right
             {"prompt": "p2", "chosen": "#### 1", "rejected": "#### 2"},   # both wrong
             {"prompt": "p2", "chosen": "#### 1", "rejected": "#### 9"}]   # both wrong
    values = premises.pairs_premises(pairs, GOLD, CHECKER)
    assert values == {"pairs": 4, "pairs_right_vs_wrong_share": 0.25, "pairs_wrong_vs_right_share": 0.25,
                      "pairs_both_right_share": 0.0, "pairs_both_wrong_share": 0.5}


def test_first_wrong_step_is_the_first_step_unlike_the_demonstrations():
    demo = ["2 + 3 = 5\n", "5 - 1 = 4\n", "#### 4"]
    assert premises.first_wrong_step(["2 + 3 = 5\n", "5 - 2 = 3\n", "#### 3"], demo) == 2
    assert premises.first_wrong_step(["2 + 3 = 6\n"], demo) == 1
    assert premises.first_wrong_step(["2 + 3 = 5 \n", "5 - 1 = 4\n"], demo) is None  # a prefix, whitespace aside
    assert premises.first_wrong_step([*demo, "extra"], demo) == 4


def test_pit_premises_place_each_pit_against_the_first_wrong_step():
    split = lambda text: text.splitlines(keepends=True)
    demonstrations = {"q": "2 + 3 = 5\n5 - 1 = 4\n#### 4"}
    wrong_at_2 = ["2 + 3 = 5\n", "5 - 2 = 3\n", "#### 3"]
    records = [SimpleNamespace(prompt="q", steps=wrong_at_2, pit=2), SimpleNamespace(prompt="q", steps=wrong_at_2, pit=1),
               SimpleNamespace(prompt="q", steps=wrong_at_2, pit=3), SimpleNamespace(prompt="q", steps=wrong_at_2, pit=None)]
    values = premises.pit_premises(records, demonstrations, split)
    assert values == {"pits": 3, "pit_at_first_wrong_step_share": 1 / 3, "pit_before_first_wrong_step_share": 1 / 3,
                      "pit_after_first_wrong_step_share": 1 / 3, "pit_without_a_wrong_step_share": 0.0}


def test_pit_premises_use_the_tasks_exact_check_where_there_is_one():
    """With several correct orders, a rationale that starts with another change than the demonstration is not
    wrong at step 1: the exact check places the first wrong step where no solution goes (step 2 here)."""
    split = lambda text: text.splitlines(keepends=True)
    demonstrations = {"q": "2 + 3 = 5\n5 - 1 = 4\n#### 4"}
    other_order = ["2 - 1 = 1\n", "1 + 9 = 10\n", "#### 10"]  # right first step (another order), then wrong
    exact = lambda prompt, steps: arith.first_wrong_step(2, [["add", 3], ["sub", 1]], steps)  # noqa: E731
    record = SimpleNamespace(prompt="q", steps=other_order, pit=2)
    assert premises.pit_premises([record], demonstrations, split)["pit_before_first_wrong_step_share"] == 0
    assert premises.pit_premises([record], demonstrations, split)["pit_after_first_wrong_step_share"] == 1
    assert premises.pit_premises([record], demonstrations, split, exact)["pit_at_first_wrong_step_share"] == 1


def test_rft_premise_counts_distinct_correct_rationales_per_question():
    from framework.algorithms.rationales import Rationale, SampledQuestion

    def question(index, texts_correct):
        return SampledQuestion(index, f"q{index}", "4", [Rationale(text, True, "4" if ok else "5", ok, 3)
                                                         for text, ok in texts_correct])

    questions = [
        question(0, [("2 + 3 = 5\n5 - 1 = 4\n#### 4", True), ("3 + 2 = 5\n5 - 1 = 4\n#### 4", True),
                     ("2 + 3 = 5\n5 - 1 = 4\n#### 4", True),  # a repeat: one distinct
                     ("2 - 1 = 1\n1 + 3 = 4\n#### 4", True), ("2 + 3 = 5\n#### 5", False)]),
        question(1, [("2 + 3 = 5\n5 - 1 = 4\n#### 4", True)]),
        question(2, [("2 + 3 = 6\n#### 6", False)]),
    ]
    keys = {"correct_dedup": "equations", "max_correct_per_question": 2, "max_incorrect_per_question": None,
            "min_edit_distance": 0.2, "require_finished": True}
    values = premises.rationale_premises(questions, keys)
    assert values == {"rationale_questions": 3, "distinct_correct_per_question": (3 + 1 + 0) / 3,
                      "kept_correct_per_question": (2 + 1 + 0) / 3, "questions_with_a_correct_share": 2 / 3}
