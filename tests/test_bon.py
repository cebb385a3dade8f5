"""Best-of-N: selectors and their tie-breaking, the subsampled accuracy curve, lift over greedy, config
checks, and one decode on a tiny random model. Expected values are computed by hand in the comments."""
import itertools
import math
import random

import pytest

from conftest import PROMPTS

from framework.bon import (BoNConfig, BoNDecoder, expected_accuracy_of_argmax, lift_metrics, lift_over_greedy,
                           subsampled_accuracy)
from framework.config import to_validated
from framework.data.answers import NumericAnswerChecker
from framework.decoding import Candidate, Decoded, Decoding, GreedyConfig, GreedyDecoder, SampleConfig, SampleDecoder
from framework.generation import TransformersEngine
from framework.errors import ConfigError
from framework.evaluation import score
from framework.self_reward import select_length_norm, select_logprob, select_majority


def _candidate(logprob, tokens, text="x"):
    return Candidate(text=text, num_tokens=tokens, logprob=logprob, finished=True, token_ids=[0] * tokens)


# logprob, tokens, answer; log-prob / max(tokens, 1) in the comment
FIXED = [
    (-3.0, 3, "5"),  # 0: -1.0
    (-1.0, 1, "7"),  # 1: -1.0   best log-prob, tied with 2
    (-1.0, 10, "5"),  # 2: -0.1  best length-normalised
    (-4.0, 0, None),  # 3: empty generation, -4.0 (divided by 1, not 0)
    (-2.0, 4, "7"),  # 4: -0.5
]
CANDIDATES = [_candidate(logprob, tokens, "" if tokens == 0 else f"#### {answer}") for logprob, tokens, answer in FIXED]
ANSWERS = [answer for _, _, answer in FIXED]


# ---------------------------------------------------------------------------- selectors
def test_logprob_selector_takes_the_first_of_tied_maxima():
    assert select_logprob(CANDIDATES) == 1  # 1 and 2 both -1.0: the first index wins


def test_length_norm_selector_divides_by_tokens_and_survives_an_empty_candidate():
    assert select_length_norm(CANDIDATES) == 2  # -1/10 beats -2/4, -3/3, -1/1 and -4/max(0, 1)
    assert select_length_norm([_candidate(-4.0, 0, ""), _candidate(-5.0, 1)]) == 0  # -4 > -5, no division by 0
    assert select_length_norm([_candidate(-2.0, 2), _candidate(-3.0, 3)]) == 0  # -1 == -1: first index


def test_majority_breaks_a_count_tie_by_summed_logprob():
    # "5" (0, 2) and "7" (1, 4) have 2 votes each; sums -4 vs -3: "7" wins; its best candidate is 1 (-1 > -2)
    assert select_majority(CANDIDATES, ANSWERS) == 1


def test_majority_prefers_more_votes_over_logprob():
    candidates = [_candidate(-0.5, 2), _candidate(-5.0, 2), _candidate(-2.0, 2)]
    assert select_majority(candidates, ["3", "4", "4"]) == 2  # "4" has 2 votes; of its candidates 2 has -2 > -5


def test_majority_full_tie_goes_to_the_first_answer_then_the_first_candidate():
    candidates = [_candidate(-1.0, 2) for _ in range(4)]
    assert select_majority(candidates, ["9", "8", "8", "9"]) == 0  # 2 votes and -2 each; "9" is seen first
    assert select_majority(candidates, [None, "8", "9", "8"]) == 1  # None never votes


def test_majority_without_any_answer_falls_back_to_logprob():
    assert select_majority(CANDIDATES, [None] * len(CANDIDATES)) == select_logprob(CANDIDATES) == 1


def test_majority_decoder_needs_an_extractor():
    with pytest.raises(ValueError, match="answer_extractor"):
        BoNDecoder(BoNConfig(selector="majority"))
    decoder = BoNDecoder(BoNConfig(selector="majority"), answer_extractor=NumericAnswerChecker().extract)
    assert decoder.choose(CANDIDATES) == [1]  # the extracted answers of CANDIDATES are ANSWERS


def test_checker_extract_is_the_strict_answer():
    checker = NumericAnswerChecker()
    assert checker.extract("so 1,200.\n#### 1,200") == "1200" and checker.extract("it is 7") is None


# ---------------------------------------------------------------------------- curve and lift
def test_exact_argmax_curve_hand_computed():
    # ranks 0 (wrong), 1 (right), 2 (right). N'=1: 2/3. N'=2: subsets {0,1} {0,2} pick 0, {1,2} picks 1: 1/3.
    # N'=3: always 0, wrong.
    scores, correct = [-1.0, -2.0, -3.0], [False, True, True]
    assert [expected_accuracy_of_argmax(scores, correct, size) for size in (1, 2, 3)] == pytest.approx([2 / 3, 1 / 3, 0])
    # a tie ranks the first index higher, as the selector does: 0 (right) beats 1 (wrong) in every pair
    assert expected_accuracy_of_argmax([-1.0, -1.0, -5.0], [True, False, False], 2) == pytest.approx(2 / 3)


def test_exact_argmax_curve_equals_enumerating_every_subset():
    rng = random.Random(3)
    for _ in range(20):
        count = rng.randint(1, 7)
        # rounded so that ties occur
        candidates = [_candidate(round(rng.uniform(-3, 0), 0), rng.randint(0, 4)) for _ in range(count)]
        correct = [rng.random() < 0.5 for _ in range(count)]
        for size in range(1, count + 1):
            by_subset = subsampled_accuracy(lambda subset: select_logprob([candidates[i] for i in subset]),
                                            correct, size, draws=math.comb(count, size), rng=rng)
            exact = expected_accuracy_of_argmax([c.logprob for c in candidates], correct, size)
            assert exact == pytest.approx(by_subset)


def test_monte_carlo_curve_is_seeded_and_close_to_exact():
    correct = [True, False] * 6
    candidates = [_candidate(-float(i), 2) for i in range(12)]

    def pick(subset):
        return select_logprob([candidates[i] for i in subset])

    exact = expected_accuracy_of_argmax([c.logprob for c in candidates], correct, 6)  # C(12, 6) = 924 subsets
    first = subsampled_accuracy(pick, correct, 6, draws=500, rng=random.Random(0))
    assert first == subsampled_accuracy(pick, correct, 6, draws=500, rng=random.Random(0))
    assert first == pytest.approx(exact, abs=0.1)  # sd of the estimate <= 0.5 / sqrt(500) = 0.022


def _majority_problem():
    # answers 5, 7, 5 with gold 5; log-probs -3, -1, -2
    candidates = [_candidate(-3.0, 2, "#### 5"), _candidate(-1.0, 2, "#### 7"), _candidate(-2.0, 2, "#### 5")]
    return [{"question": "q", "gold_answer": "5"}], Decoding([Decoded(candidates, [])])


def test_majority_curve_enumerates_small_subsets_exactly():
    # N'=1: 2/3. N'=2: {0,1} 1-1 votes, sums -3 < -1 -> "7" wrong; {0,2} "5" right; {1,2} -1 > -2 -> "7"
    # wrong: 1/3. N'=3: "5" has 2 votes: right. (log-prob BoN at N'=3 picks 1: wrong.)
    problems, decoding = _majority_problem()
    decoder = BoNDecoder(BoNConfig(selector="majority", curve_draws=5), answer_extractor=NumericAnswerChecker().extract)
    decoding.outputs[0].chosen = decoder.choose(decoding.outputs[0].candidates)
    metrics, records = score(problems, decoding, NumericAnswerChecker(), decoder)
    assert "greedy_accuracy" not in metrics  # no greedy reference decoded, none reported
    assert list(metrics["bon_accuracy_by_n"]) == ["1", "2", "3"]
    assert [metrics["bon_accuracy_by_n"][n] for n in ("1", "2", "3")] == pytest.approx([2 / 3, 1 / 3, 1.0])
    assert metrics["accuracy"] == metrics["bon_accuracy_by_n"]["3"] == 1.0
    assert metrics["pass@1"] == pytest.approx(2 / 3) and metrics["pass@3"] == 1.0
    assert [r["chosen"] for r in records] == [False, False, True]  # "5" wins; of 0 (-3) and 2 (-2), 2


def test_lift_over_greedy_is_the_papers_relative_percent_and_none_at_zero():
    assert lift_over_greedy(0.6, 0.5) == pytest.approx(20.0)  # 100 * 0.1 / 0.5
    assert lift_over_greedy(0.4, 0.5) == pytest.approx(-20.0)
    assert lift_over_greedy(0.3, 0.0) is None


def test_lift_metrics_along_the_curve():
    assert lift_metrics(0.5, {"1": 0.25, "2": 0.5}, 1.0) == {
        "greedy_accuracy": 1.0, "lift_over_greedy": -50.0, "lift_over_greedy_by_n": {"1": -75.0, "2": -50.0}}


def test_score_judges_the_greedy_reference_for_the_lift():
    # log-prob BoN picks candidate 1 ("7", wrong); the greedy reference says 5 (right): accuracy 0 against 1
    problems, decoding = _majority_problem()
    decoder = BoNDecoder(BoNConfig())
    decoding.outputs[0].chosen = decoder.choose(decoding.outputs[0].candidates)
    decoding.reference = [Decoded([_candidate(-1.0, 2, "#### 5")], [0])]
    metrics, records = score(problems, decoding, NumericAnswerChecker(), decoder)
    assert metrics["accuracy"] == 0.0 and metrics["greedy_accuracy"] == 1.0 and metrics["lift_over_greedy"] == -100.0
    assert metrics["lift_over_greedy_by_n"]["3"] == -100.0
    assert len(records) == 3  # the reference's outputs are no generations of the run


# ---------------------------------------------------------------------------- config checks
@pytest.mark.parametrize("changes, key", [
    ({"samples_per_prompt": 0}, "samples_per_prompt"),
    ({"selector": "best"}, "selector"),
    ({"temperature": 0.0}, "temperature"),
    ({"temperature": -1.0}, "temperature"),
    ({"temperature": float("inf")}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"curve_draws": 0}, "curve_draws"),
])
def test_bad_values_name_the_key(changes, key):
    with pytest.raises(ConfigError, match=rf"decoder\.{key}"):
        BoNConfig(**changes).validate("decoder")


def test_temperature_zero_points_to_greedy():
    with pytest.raises(ConfigError, match="decoder=greedy"):
        BoNConfig(temperature=0.0).validate("decoder")


def test_composed_bon_config_validates(compose_cfg):
    run = to_validated(compose_cfg(["decoder=bon"]))
    assert isinstance(run.decoder, BoNConfig) and run.decoder.samples_per_prompt == 16
    with pytest.raises(ConfigError, match=r"decoder\.selector"):
        to_validated(compose_cfg(["decoder=bon", "decoder.selector=best"]))


# ---------------------------------------------------------------------------- decoding on a tiny model

def test_bon_decode_picks_the_highest_logprob_sample(model_and_tokenizer):
    engine = TransformersEngine(*model_and_tokenizer)
    settings = dict(max_new_tokens=10, samples_per_prompt=3)
    decoder = BoNDecoder(BoNConfig(**settings), seed=1)
    decoding = decoder.decode(engine, PROMPTS, progress=False)
    samples = SampleDecoder(SampleConfig(**settings), seed=1).decode(engine, PROMPTS, progress=False).outputs
    greedy = GreedyDecoder(GreedyConfig(max_new_tokens=10)).decode(engine, PROMPTS, progress=False).outputs
    for result, sampled in zip(decoding.outputs, samples):
        logprobs = [candidate.logprob for candidate in result.candidates]
        assert len(logprobs) == 3 and result.chosen == [logprobs.index(max(logprobs))]
        # the same seed draws the same samples as decoder=sample: BoN only adds the choice
        assert [c.text for c in result.candidates] == [c.text for c in sampled.candidates]
    assert [r.candidates[0].text for r in decoding.reference] == [r.candidates[0].text for r in greedy]


def test_bon_majority_decode_without_greedy_reference(model_and_tokenizer):
    extract = NumericAnswerChecker().extract
    decoder = BoNDecoder(BoNConfig(max_new_tokens=8, samples_per_prompt=3, selector="majority",
                                   greedy_reference=False), answer_extractor=extract)
    decoding = decoder.decode(TransformersEngine(*model_and_tokenizer), PROMPTS, progress=False)
    assert decoding.reference is None
    for result in decoding.outputs:
        answers = [extract(candidate.text) for candidate in result.candidates]
        assert result.chosen == [select_majority(result.candidates, answers)]


def test_subsets_keep_the_original_order():
    # first-index tie-breaking inside a subset must mean the smallest original index
    seen = []
    subsampled_accuracy(lambda subset: seen.append(subset) or 0, [True] * 6, 3, draws=4, rng=random.Random(0))
    assert len(seen) == 4 and all(subset == sorted(subset) for subset in seen)
    seen.clear()
    subsampled_accuracy(lambda subset: seen.append(tuple(subset)) or 0, [True] * 4, 2, draws=6, rng=random.Random(0))
    assert sorted(seen) == list(itertools.combinations(range(4), 2))  # 6 subsets <= 6 draws: every one, once
