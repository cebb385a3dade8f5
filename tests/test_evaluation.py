import math

import pytest

from framework.decoding import Candidate, Decoded, Decoding, SampleConfig, SampleDecoder
from framework.data.answers import NumericAnswerChecker
from framework.evaluation import mean_interval, pass_at_k, pass_k_values, score, wilson_interval


def test_wilson_interval_hand_computed():
    # p = 0.5, n = 100, z = 1.96: centre 0.5, half = 1.96*sqrt(0.0025 + 0.000096)/1.0384 = 0.0962
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-4) and high == pytest.approx(0.5962, abs=1e-4)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)


def test_mean_interval_uses_normal_approximation_for_fractional_scores():
    mean, low, high = mean_interval([0.5, 1.0, 0.0, 0.5])
    sd = math.sqrt(((0) ** 2 + 0.5 ** 2 + 0.5 ** 2 + 0) / 3)
    assert mean == 0.5 and high - mean == pytest.approx(1.959964 * sd / 2, rel=1e-5)


@pytest.mark.parametrize("n, c, k, expected", [
    (4, 1, 1, 0.25), (4, 1, 2, 0.5), (4, 2, 2, 1 - 1 / 6), (4, 0, 4, 0.0), (4, 4, 1, 1.0), (5, 3, 3, 1.0),
    (10, 3, 5, 1 - math.comb(7, 5) / math.comb(10, 5)),
])
def test_pass_at_k_matches_the_combinatorial_formula(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_rejects_k_above_n():
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_pass_k_grid_is_powers_of_two_up_to_n_and_n_itself():
    assert pass_k_values(1) == [1] and pass_k_values(4) == [1, 2, 4] and pass_k_values(6) == [1, 2, 4, 6]


def _candidate(text, logprob=-1.0, tokens=3):
    return Candidate(text=text, num_tokens=tokens, logprob=logprob, finished=True, token_ids=[0] * tokens)


def test_score_single_answer_decoder():
    problems = [{"question": "q1", "gold_answer": "5"}, {"question": "q2", "gold_answer": "7"}]
    decoded = [Decoded([_candidate("#### 5", -2.0, 4)], [0]), Decoded([_candidate("it is 7", -4.0, 2)], [0])]
    metrics, records = score(problems, Decoding(decoded), NumericAnswerChecker())
    assert metrics["accuracy"] == 0.5 and metrics["accuracy_flexible"] == 1.0
    assert metrics["mean_tokens"] == 3.0 and metrics["mean_logprob"] == -3.0
    assert "pass@1" not in metrics
    assert [r["correct"] for r in records] == [True, False]
    assert records[1]["extracted"] is None and records[1]["gold"] == "7"


def test_a_decoder_without_metrics_of_its_own_adds_none():
    problems = [{"question": "q", "gold_answer": "1"}]
    decoding = Decoding([Decoded([_candidate("#### 1"), _candidate("#### 2")], [0, 1])])
    alone, _ = score(problems, decoding, NumericAnswerChecker())
    with_decoder, _ = score(problems, decoding, NumericAnswerChecker(), SampleDecoder(SampleConfig(samples_per_prompt=2)))
    assert with_decoder == alone and set(alone) >= {"accuracy", "pass@2"}


def test_score_samples_counts_every_sample_and_reports_pass_at_k():
    problems = [{"question": "q", "gold_answer": "1"}]
    decoded = [Decoded([_candidate("#### 1"), _candidate("#### 2"), _candidate("#### 3"), _candidate("#### 1")],
                       [0, 1, 2, 3])]
    metrics, _ = score(problems, Decoding(decoded), NumericAnswerChecker())
    assert metrics["accuracy"] == 0.5
    assert metrics["pass@1"] == pytest.approx(0.5)
    assert metrics["pass@2"] == pytest.approx(1 - 1 / 6)
    assert metrics["pass@4"] == 1.0


def test_auroc_hand_computed():
    from framework.evaluation import auroc

    # correct scores {3, 1}, wrong {2, 0}: pairs (3>2, 3>0, 1<2, 1>0) -> 3/4
    assert auroc([3.0, 2.0, 1.0, 0.0], [True, False, True, False]) == 0.75
    assert auroc([1.0, 1.0], [True, False]) == 0.5  # a tie counts half
    assert auroc([1.0, 2.0], [True, True]) is None


def test_optimism_diagnostics_hand_computed():
    from framework.evaluation import optimism_diagnostics

    records = [  # problem 0: wrong and above gold -> over-optimistic; problem 1: wrong, below gold; 2: right
        {"problem": 0, "chosen": True, "correct": False, "logprob": -1.0},
        {"problem": 1, "chosen": True, "correct": False, "logprob": -9.0},
        {"problem": 2, "chosen": True, "correct": True, "logprob": -2.0},
        {"problem": 2, "chosen": False, "correct": False, "logprob": 0.0},  # not chosen: ignored
    ]
    metrics = optimism_diagnostics(records, gold_logprobs=[-3.0, -4.0, -2.5])
    assert metrics["over_optimism_rate"] == pytest.approx(1 / 3)
    assert metrics["over_optimism_rate_among_wrong"] == pytest.approx(1 / 2)
    assert metrics["gold_logprob_mean"] == pytest.approx(-9.5 / 3)
    assert metrics["logprob_auroc"] == pytest.approx(0.5)  # right (-2) beats -9 but not -1
    assert records[1]["gold_logprob"] == -4.0
