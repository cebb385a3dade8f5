"""Self-Explore, RFT and outcome-level DPO: splitters on real GSM8K and MATH rows, first-pit search with a
scripted policy whose continuations' correctness is known per prefix, the pair builders, config and data
errors, and one end-to-end run with scripted sampling so every stage (RFT, exploration, DPO) trains for real."""
import json
import re
from pathlib import Path

import pytest

from conftest import FAST, FAST_TRAINING, compose_config
from framework.algorithms import self_explore
from framework.algorithms.outcome_dpo import outcome_pairs
from framework.algorithms.rft import Rationale, SampledQuestion, distinct_correct, require_gold_answers, rft_targets
from framework.algorithms.self_explore import (ExplorationRecord, ExplorationTarget, explore_first_pits, first_pit,
                                               split_lines, split_sentences, split_steps, step_level_pairs)
from framework.config import to_validated
from framework.data.answers import NumericAnswerChecker
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
    monkeypatch.setitem(self_explore.SPLITTERS, "nothing", lambda text: [])
    with pytest.raises(ConfigError, match="step_splitter=nothing yields zero steps"):
        split_steps("nothing", "3 + 4 = 7\n#### 7")
    monkeypatch.setitem(self_explore.SPLITTERS, "lossy", lambda text: [line for line in text.split("\n")])
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

    def __call__(self, prompts):
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
    assert records[0].correct_continuations[0] == "right 0\n#### 5"
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
    pairs, dropped = step_level_pairs([record], {0: ["3 + 4 = 7\n7 - 2 = 5\n#### 5"]})
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


# ---------------------------------------------------------------------------- pairs
def _record(steps, counts, continuations, pit, question_index=0, rationale_index=0):
    return ExplorationRecord(question_index, rationale_index, QUESTION, steps, counts, continuations, pit, 0)


def test_step_level_pairs_have_exactly_the_specified_text():
    steps = ["3 + 4 = 7\n", "7 - 2 = 6\n", "#### 6"]
    later = _record(steps, [2, 0, None], ["7 - 2 = 5\n#### 5", None, None], pit=2)
    first = _record(["3 + 4 = 8\n", "8 - 2 = 6\n", "#### 6"], [0, None, None], [None] * 3, pit=1, rationale_index=1)
    also_first = _record(["3 + 5 = 8\n", "#### 8"], [0, None], [None] * 2, pit=1, rationale_index=2)
    correct = {0: ["3 + 4 = 7\n7 - 2 = 5\n#### 5", "3 + 4 = 7 \n7 - 2 = 5\n#### 5"]}
    pairs, dropped = step_level_pairs([later, first, also_first], correct)
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [
        (QUESTION + "3 + 4 = 7\n", "7 - 2 = 5\n#### 5", "7 - 2 = 6\n"),  # chosen: continuation from s1
        (QUESTION, "3 + 4 = 7\n7 - 2 = 5\n#### 5", "3 + 4 = 8\n"),  # pit at step 1: a correct rationale
        (QUESTION, "3 + 4 = 7 \n7 - 2 = 5\n#### 5", "3 + 5 = 8\n"),  # the next distinct one
    ]
    assert [p["pit"] for p in pairs] == [2, 1, 1] and not dropped
    pairs, dropped = step_level_pairs([first], {})
    assert pairs == [] and dropped["pit_at_step_1_without_a_correct_rationale"] == 1


def test_explored_records_give_pairs_end_to_end():
    wrong_second = ["3 + 4 = 7\n", "7 - 2 = 6\n", "#### 6"]
    policy = ScriptedPolicy({_prefix(wrong_second, 1): 3, _prefix(wrong_second, 2): 0})
    records = explore_first_pits([_target(wrong_second)], policy, _is_correct, max_explored_steps=20)
    pairs, _ = step_level_pairs(records, {})
    assert pairs[0]["prompt"] + pairs[0]["chosen"] == QUESTION + "3 + 4 = 7\nright 0\n#### 5"
    assert pairs[0]["rejected"] == "7 - 2 = 6\n"


# ---------------------------------------------------------------------------- RFT and outcome pairs
def _rationale(text, correct, finished=True):
    return Rationale(text, finished, None, correct, 3)


def test_rft_keeps_up_to_m_distinct_correct_rationales():
    rationales = [_rationale("a\n#### 5", True), _rationale("a \n#### 5", True), _rationale("b\n#### 4", False),
                  _rationale("c\n#### 5", True), _rationale("d\n#### 5", True, finished=False),
                  _rationale("e\n#### 5", True)]
    assert distinct_correct(rationales) == ["a\n#### 5", "c\n#### 5", "d\n#### 5", "e\n#### 5"]
    question = SampledQuestion(0, "Q\n", "5", rationales)
    assert rft_targets([question], 2, require_finished=True) == [
        {"prompt": "Q\n", "completion": "a\n#### 5"}, {"prompt": "Q\n", "completion": "c\n#### 5"}]
    assert [row["completion"] for row in rft_targets([question], 8, True)] == ["a\n#### 5", "c\n#### 5", "e\n#### 5"]


def test_outcome_pairs_pair_each_incorrect_with_a_correct_rationale():
    question = SampledQuestion(3, "Q\n", "5", [
        _rationale("w1", False), _rationale("c1", True), _rationale("w2", False), _rationale("w1 ", False),
        _rationale("c2", True), _rationale("w3", False), _rationale("w4", False, finished=False)])
    pairs = outcome_pairs(question, require_finished=True)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("c1", "w1"), ("c2", "w2"), ("c1", "w3")]
    assert all(p["prompt"] == "Q\n" and p["question_index"] == 3 for p in pairs)
    assert len(outcome_pairs(question, True, max_pairs_per_question=1)) == 1
    assert outcome_pairs(SampledQuestion(0, "Q\n", "5", [_rationale("w", False)]), True) == []


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("algorithm, override, message", [
    ("self_explore", "algorithm.continuations_per_step=0", "continuations_per_step must be >= 1"),
    ("self_explore", "algorithm.step_splitter=words", "step_splitter must be one of"),
    ("self_explore", "algorithm.max_explored_steps=0", "max_explored_steps must be >= 1"),
    ("self_explore", "algorithm.exploration_schedule=dfs", "exploration_schedule must be one of"),
    ("self_explore", "algorithm.rft.max_correct_per_question=0", "rft.max_correct_per_question must be >= 1"),
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
    from framework.algorithms.rft import rft_keys

    configs = {name: to_validated(compose_config([f"algorithm={name}"])).algorithm
               for name in ("rft", "outcome_dpo", "self_explore")}
    assert configs["rft"].sampling_keys() == configs["outcome_dpo"].sampling_keys() == \
        configs["self_explore"].sampling_keys()
    assert rft_keys(configs["rft"]) == rft_keys(configs["outcome_dpo"].rft) == rft_keys(configs["self_explore"].rft)


def test_a_dataset_without_gold_answers_is_refused():
    from types import SimpleNamespace

    from framework.data.loaders import ArithDatasetConfig, load_arith

    data = load_arith(ArithDatasetConfig(train_size=4, test_size=2))
    with pytest.raises(ConfigError, match="needs gold final answers"):
        require_gold_answers(SimpleNamespace(data=data.without_labels()), "self_explore")
    require_gold_answers(SimpleNamespace(data=data), "self_explore")


# ---------------------------------------------------------------------------- end to end, scripted sampling
def _scripted_sampling(monkeypatch, completions: dict[str, str], explorer_calls: list):
    """Rationales: per question the gold solution, one with a wrong final line, one with a wrong first
    line. Explorer: a prefix continues to the gold answer iff it is a prefix of the gold solution."""
    from framework.algorithms import rft
    from framework.decoding import Candidate, Decoded

    def wrong_last(solution):
        *lines, final = solution.split("\n")
        return "\n".join([*lines, f"#### {int(final.split()[-1]) + 1}"])

    def wrong_first(solution):
        first, *rest, final = solution.split("\n")
        left, result = first.rsplit(" = ", 1)
        return "\n".join([f"{left} = {int(result) + 1}", *rest, f"#### {int(final.split()[-1]) + 2}"])

    class FakeDecoder:
        def __init__(self, config, seed=0):
            self.config = config

        def decode(self, model, tokenizer, prompts, progress=True):
            results = []
            for prompt in prompts:
                gold = completions[prompt]
                texts = [gold, wrong_last(gold), wrong_first(gold)][: self.config.samples_per_prompt]
                results.append(Decoded([Candidate(t, 5, -1.0, True, [0] * 5) for t in texts], [0]))
            return results

    def fake_explorer(model, tokenizer, continuations_per_step, *args):
        def continue_prefixes(prompts):
            explorer_calls.append(len(prompts))
            outputs = []
            for text in prompts:
                question = next(p for p in completions if text.startswith(p))
                prefix, gold = text[len(question):], completions[question]
                good = gold[len(prefix):] if gold.startswith(prefix) else "#### 999"
                outputs.append([good] * continuations_per_step)
            return outputs
        return continue_prefixes

    monkeypatch.setattr(rft, "SampleDecoder", FakeDecoder)
    monkeypatch.setattr(self_explore, "sampling_explorer", fake_explorer)


def test_self_explore_runs_every_stage_and_reuses_them(monkeypatch, tmp_path):
    from framework.__main__ import run
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
    # 8 questions x 2 incorrect rationales: the wrong final line has its pit at the last step, the wrong
    # first line at step 1 (chosen: the question's correct rationale)
    assert len(records) == 16 and len(pairs) == 16
    assert sorted({p["pit"] for p in pairs}) == sorted({1, *(len(r["steps"]) for r in records)})
    for pair in pairs:
        gold = completions[next(p for p in completions if pair["prompt"].startswith(p))]
        assert pair["chosen"].endswith(gold.rsplit("\n", 1)[1]) and not pair["rejected"].endswith(gold.split()[-1])
    assert logged["self_explore/pairs"] == 16 and logged["self_explore/pits_found"] == 16
    assert logged["self_explore/pits_at_step_1"] == 8 and logged["self_explore/rollouts"] > 0
    assert explorer_calls and max(explorer_calls) == 16  # the first round batches every rationale
    # outcome DPO and RFT on the same inputs reuse the rationale set and the RFT model
    calls_before = len(explorer_calls)
    outcome = run(compose_config(["algorithm=outcome_dpo", *shared, *rft_node], cache), tmp_path / "b")
    # algorithm=rft's keys are flat; equal to the rft node above (FAST_TRAINING's save/logging keys undone)
    rft = run(compose_config(["algorithm=rft", *shared, "algorithm.save_steps=50", "algorithm.logging_steps=10"],
                             cache), tmp_path / "c")
    assert outcome["policy"]["stage"] == "outcome_dpo" and rft["policy"]["stage"] == "rft"
    assert len(list((cache / "rationales").glob("*/stage.json"))) == 1
    assert len(list((cache / "rft").glob("*/stage.json"))) == 1
    assert len(explorer_calls) == calls_before
    again = run(compose_config(overrides, cache), tmp_path / "d")  # unchanged inputs: every stage reused
    assert again["policy"] == results["policy"] and len(explorer_calls) == calls_before


def test_zero_pairs_is_an_error_that_says_what_to_raise(monkeypatch, tmp_path):
    from framework.__main__ import run
    from framework.algorithms import rft
    from framework.decoding import Candidate, Decoded

    class AlwaysWrong:  # every rationale incorrect: RFT has nothing to learn from, and no chosen side exists
        def __init__(self, config, seed=0):
            self.config = config

        def decode(self, model, tokenizer, prompts, progress=True):
            return [Decoded([Candidate("1 + 1 = 2\n#### 999", 5, -1.0, True, [0] * 5)], [0]) for _ in prompts]

    monkeypatch.setattr(rft, "SampleDecoder", AlwaysWrong)
    monkeypatch.setattr(self_explore, "sampling_explorer",
                        lambda *args: (lambda prompts: [["#### 999"] * 4 for _ in prompts]))
    shared = [*FAST, *FAST_TRAINING, "algorithm.starting_point=base", "algorithm.train_prompts=4"]
    with pytest.raises(ConfigError, match="RFT has nothing to train on; raise rationales_per_question"):
        run(compose_config(["algorithm=self_explore", *shared], tmp_path / "cache"), tmp_path / "a")
    with pytest.raises(ConfigError, match="no step-level pair .* 4 pits at step 1 with no correct rationale"):
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
