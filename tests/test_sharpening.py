"""Label-free sharpening: self-rewards, the pair builder, the DPO losses against hand-computed values,
label stripping, and BoN-SFT / DPO on a training split whose answers were removed."""
import math
import random
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from conftest import PROMPTS, compose_config
from framework import registry
from framework.algorithms import AlgorithmContext, starting_context
from framework.algorithms.dpo import completion_logps, sigmoid_dpo_loss, squared_sharpening_loss
from framework.algorithms.sharpening import SampledPrompt, build_pairs, self_rewards
from framework.config import to_validated
from framework.data.answers import NumericAnswerChecker
from framework.data.loaders import TaskData
from framework.decoding import Candidate, teacher_forced_logprobs
from framework.errors import ConfigError
from framework.models import ModelHandle, resolve_runtime
from framework.stages import StageStore


def _candidate(logprob, tokens, text="x", finished=True):
    return Candidate(text=text, num_tokens=tokens, logprob=logprob, finished=finished, token_ids=[0] * tokens)


# logprob, tokens, extracted answer
ROWS = [(-3.0, 3, "5"), (-1.0, 1, "7"), (-1.0, 10, "5"), (-4.0, 0, None), (-2.0, 4, "5")]
CANDIDATES = [_candidate(lp, n, f"y{i}") for i, (lp, n, _) in enumerate(ROWS)]
ANSWERS = [answer for _, _, answer in ROWS]


# ---------------------------------------------------------------------------- self-rewards
def test_self_rewards_by_selector():
    assert self_rewards("logprob", CANDIDATES, ANSWERS) == [-3.0, -1.0, -1.0, -4.0, -2.0]
    assert self_rewards("length_norm", CANDIDATES, ANSWERS) == [-1.0, -1.0, -0.1, -4.0, -0.5]  # -4 / max(0, 1)
    assert self_rewards("majority", CANDIDATES, ANSWERS) == [3.0, 1.0, 3.0, 0.0, 3.0]  # "5" x3, "7" x1, none 0


# ---------------------------------------------------------------------------- pair builder
def test_best_vs_worst_pairs_the_selectors_pick_with_the_lowest_reward():
    rng = random.Random(0)
    assert build_pairs("logprob", CANDIDATES, ANSWERS, "best_vs_worst", rng) == [(1, 3)]  # -1 (first of ties) vs -4
    assert build_pairs("length_norm", CANDIDATES, ANSWERS, "best_vs_worst", rng) == [(2, 3)]  # -0.1 vs -4
    # majority: answer "5"; its best-log-prob member is 2 (-1.0); rejected: no answer (0 votes)
    assert build_pairs("majority", CANDIDATES, ANSWERS, "best_vs_worst", rng) == [(2, 3)]


def test_worst_ties_go_to_the_first_index():
    candidates = [_candidate(-1.0, 1), _candidate(-5.0, 1), _candidate(-5.0, 1)]
    assert build_pairs("logprob", candidates, [None] * 3, "best_vs_worst", random.Random(0)) == [(0, 1)]


def test_no_pair_when_every_reward_is_equal_or_there_is_one_candidate():
    equal = [_candidate(-2.0, 2), _candidate(-2.0, 2), _candidate(-2.0, 2)]
    for strategy in ("best_vs_worst", "best_vs_random", "random_pair"):
        assert build_pairs("logprob", equal, [None] * 3, strategy, random.Random(0)) == []
        assert build_pairs("logprob", equal[:1], [None], strategy, random.Random(0)) == []
    # majority with every answer equal: all 3 votes, nothing to prefer
    assert build_pairs("majority", equal, ["4", "4", "4"], "best_vs_worst", random.Random(0)) == []


def test_best_vs_random_rejects_only_strictly_lower_rewards():
    rng = random.Random(0)
    rejected = {build_pairs("logprob", CANDIDATES, ANSWERS, "best_vs_random", rng)[0][1] for _ in range(200)}
    assert rejected == {0, 3, 4}  # never 2: it ties the best (-1.0)


def test_random_pair_orders_the_two_by_reward():
    rng = random.Random(0)
    rewards = self_rewards("logprob", CANDIDATES, ANSWERS)
    seen = set()
    for _ in range(200):
        for chosen, rejected in build_pairs("logprob", CANDIDATES, ANSWERS, "random_pair", rng):
            assert rewards[chosen] > rewards[rejected]
            seen.add((chosen, rejected))
    assert (1, 2) not in seen and (2, 1) not in seen  # equal rewards give no pair
    assert len(seen) == 9  # 10 unordered pairs of 5, minus the tied (1, 2)


def test_unfinished_samples_are_dropped_when_required():
    sampled = SampledPrompt("p", [_candidate(-1.0, 3, finished=False), _candidate(-2.0, 3)], ["1", "2"])
    assert [c.logprob for c in sampled.usable(True).candidates] == [-2.0] and sampled.usable(True).answers == ["2"]
    assert sampled.usable(False) is sampled


# ---------------------------------------------------------------------------- losses
# one pair: log pi(y+) = -2, log pi(y-) = -5, log pi_base(y+) = -3, log pi_base(y-) = -4, beta = 0.5
# h+ = -2 - (-3) = 1; h- = -5 - (-4) = -1; margin = 2
PAIR = [torch.tensor([-2.0]), torch.tensor([-5.0]), torch.tensor([-3.0]), torch.tensor([-4.0])]


def test_sigmoid_loss_by_hand():
    expected = -math.log(1 / (1 + math.exp(-0.5 * 2)))  # -log sigmoid(beta * margin) = 0.31326
    assert sigmoid_dpo_loss(*PAIR, beta=0.5).item() == pytest.approx(expected, rel=1e-6)


def test_squared_loss_by_hand():
    # (beta * margin - (r+ - r-))^2 with r = log pi_base: (0.5 * 2 - (-3 - -4))^2 = (1 - 1)^2 = 0
    assert squared_sharpening_loss(*PAIR, beta=0.5).item() == pytest.approx(0.0, abs=1e-7)
    # beta = 2: (2 * 2 - 1)^2 = 9
    assert squared_sharpening_loss(*PAIR, beta=2.0).item() == pytest.approx(9.0)


def test_squared_loss_optimum_is_pi_base_to_the_power_one_plus_one_over_beta():
    # if log pi = (1 + 1/beta) log pi_base + c for both responses, the loss is 0 for any pair
    beta, base = 0.25, torch.tensor([-3.0, -7.0])
    policy = (1 + 1 / beta) * base + 0.3
    loss = squared_sharpening_loss(policy[:1], policy[1:], base[:1], base[1:], beta)
    assert loss.item() == pytest.approx(0.0, abs=1e-5)


def test_completion_logps_equal_a_teacher_forced_recomputation(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompts, completions = PROMPTS[:2], ["Ann has 7 pens.\n#### 7", "#### 5"]
    prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    completion_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in completions]
    rows = [p + c for p, c in zip(prompt_ids, completion_ids)]
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    attention = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    completion_mask = torch.tensor([[0] * len(p) + [1] * len(c) + [0] * (width - len(p) - len(c))
                                    for p, c in zip(prompt_ids, completion_ids)])
    with torch.no_grad():
        ours = completion_logps(model, input_ids, attention, completion_mask)
    reference = teacher_forced_logprobs(model, tokenizer, prompts, completions, append_eos=False)
    assert ours.tolist() == pytest.approx(reference, abs=1e-4)


# ---------------------------------------------------------------------------- config checks
@pytest.mark.parametrize("override, message", [
    ("algorithm.samples_per_prompt=0", "samples_per_prompt must be >= 1"),
    ("algorithm.selector=vote", "selector must be one of"),
    ("algorithm.temperature=0", "temperature must be > 0"),
    ("algorithm.starting_point=rft", "starting_point must be one of"),
])
@pytest.mark.parametrize("algorithm", ["bon_sft", "dpo"])
def test_bad_sampling_keys_fail_before_any_work(algorithm, override, message):
    with pytest.raises(ConfigError, match=message):
        to_validated(compose_config([f"algorithm={algorithm}", override]))


@pytest.mark.parametrize("override, message", [
    ("algorithm.beta=0", "beta must be > 0"),
    ("algorithm.loss=ipo", "loss must be one of"),
    ("algorithm.pair_strategy=all", "pair_strategy must be one of"),
    ("algorithm.samples_per_prompt=1", "must be >= 2 to form pairs"),
])
def test_bad_dpo_keys_fail_before_any_work(override, message):
    with pytest.raises(ConfigError, match=message):
        to_validated(compose_config(["algorithm=dpo", override]))


def test_squared_loss_refuses_a_selector_other_than_logprob():
    with pytest.raises(ConfigError, match="must be logprob with loss=squared"):
        to_validated(compose_config(["algorithm=dpo", "algorithm.loss=squared", "algorithm.selector=majority"]))


# ---------------------------------------------------------------------------- label-free
def test_label_free_methods_are_registered_as_such():
    for name in ("bon_sft", "dpo", "xpo"):
        if name in registry.algorithms.names():
            assert getattr(registry.algorithms.get(name), "label_free", False), name
    for name in ("sft", "soc"):
        assert not getattr(registry.algorithms.get(name), "label_free", False), name


def test_without_labels_keeps_only_questions_and_prompts():
    labelled = Dataset.from_dict({"question": ["q"], "prompt": ["q\n"], "completion": ["#### 1"], "gold_answer": ["1"]})
    stripped = TaskData(labelled, labelled, NumericAnswerChecker(), {"rows": 1}).without_labels()
    assert stripped.train.column_names == ["question", "prompt"] and stripped.test.column_names == ["question", "prompt"]
    assert stripped.fingerprint == {"rows": 1}


@pytest.fixture(scope="module")
def unlabelled_context(tmp_path_factory):
    """An AlgorithmContext on a small random model whose training split has no answers at all."""
    from framework import tiny

    root = tmp_path_factory.mktemp("unlabelled")
    tokenizer = tiny.build_tokenizer()
    model = tiny.build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                             max_positions=128, seed=0)
    model.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    questions = ["Ann has 3 pens. Ann finds 4 more. How many pens does Ann have now?",
                 "Ben has 12 coins. Ben loses 2. How many coins does Ben have now?"] * 4
    train = Dataset.from_dict({"question": questions, "prompt": [q + "\n" for q in questions]})
    data = TaskData(train=train, test=train, checker=NumericAnswerChecker(), fingerprint={"unlabelled": 8})
    return AlgorithmContext(config=None, base=ModelHandle(str(root / "base"), {"random": 0}), data=data,
                            stages=StageStore(root / "cache"), runtime=resolve_runtime("cpu", "fp32"), seed=0,
                            report_to="none", output_dir=root / "out")


@pytest.mark.parametrize("algorithm", ["bon_sft", "dpo"])
def test_trains_on_a_split_without_any_gold_answer(unlabelled_context, algorithm):
    from dataclasses import replace

    cfg = compose_config([f"algorithm={algorithm}", "algorithm.starting_point=base", "algorithm.samples_per_prompt=3",
                          "algorithm.max_new_tokens=12", "algorithm.require_finished=false", "algorithm.max_steps=2",
                          "algorithm.per_device_train_batch_size=4", "algorithm.save_steps=1"])
    config = to_validated(cfg).algorithm
    plugin = registry.algorithms.get(algorithm)
    ctx = starting_context(replace(unlabelled_context, config=config), plugin)
    assert "gold_answer" not in ctx.data.train.column_names and "completion" not in ctx.data.train.column_names
    trained = plugin(ctx)
    assert (Path(trained.path) / "config.json").is_file()
    sampled = list((unlabelled_context.stages.root / "samples").glob("*/output/samples.jsonl"))
    assert sampled, "the sampled set is saved as an artifact"
