"""Label-free sharpening: self-rewards, the pair builder, the DPO losses against hand-computed values,
label stripping, and BoN-SFT / DPO on a training split whose answers were removed."""
import random
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from conftest import PROMPTS, compose_config
from framework import registry
from framework.algorithms import AlgorithmContext
from framework.algorithms.starting import starting_context
from framework.algorithms.dpo import SquaredSharpeningDPOTrainer, completion_logps, squared_sharpening_loss
from framework.algorithms.sharpening import SampledPrompt, build_pairs
from framework.config import to_validated
from framework.data.answers import NumericAnswerChecker
from framework.data.loaders import TaskData
from framework.decoding import Candidate, teacher_forced_logprobs
from framework.errors import ConfigError
from framework.models import ModelHandle, resolve_runtime
from framework.self_reward import SELECTOR_NAMES, select, self_rewards
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


@pytest.mark.parametrize("selector", SELECTOR_NAMES)
def test_the_bon_pick_never_has_a_lower_self_reward_than_another_sample(selector):
    """best-of-N's pick (and BoN-SFT's target, DPO's chosen side) and the r_self that orders the pairs are one
    definition: the pick scores the highest r_self."""
    rewards = self_rewards(selector, CANDIDATES, ANSWERS)
    assert rewards[select(selector, CANDIDATES, ANSWERS)] == max(rewards)


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


PAIRS = [{"prompt": PROMPTS[0], "chosen": "3 + 4 = 7\n#### 7", "rejected": "3 + 4 = 8\n#### 8"},
         {"prompt": PROMPTS[1], "chosen": "12 - 2 = 10\n10 - 5 = 5\n#### 5", "rejected": "#### 4"},
         {"prompt": PROMPTS[0], "chosen": "#### 7", "rejected": "3 + 4 = 7\n7 - 1 = 6\n#### 6"}]


def _dpo_trainer(trainer_class, policy, reference, tokenizer, tmp_path, lora=False):
    from peft import LoraConfig
    from trl import DPOConfig

    args = DPOConfig(output_dir=str(tmp_path / "dpo"), beta=0.5, loss_type=["sigmoid"], per_device_train_batch_size=3,
                     report_to="none", use_cpu=True, bf16=False)
    peft = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM") if lora else None
    return trainer_class(model=policy, ref_model=reference, args=args, train_dataset=Dataset.from_list(PAIRS),
                         processing_class=tokenizer, peft_config=peft)


def _hand_loss(policy, reference, tokenizer, loss: str) -> float:
    """The loss from per-sequence log-probs recomputed one by one (TRL appends EOS to both sides here)."""
    prompts = [pair["prompt"] for pair in PAIRS]
    logp = lambda model, side: torch.tensor(teacher_forced_logprobs(  # noqa: E731
        model, tokenizer, prompts, [pair[side] for pair in PAIRS], append_eos=True), dtype=torch.float64)
    chosen, rejected = logp(policy, "chosen"), logp(policy, "rejected")
    ref_chosen, ref_rejected = logp(reference, "chosen"), logp(reference, "rejected")
    margin = (chosen - ref_chosen) - (rejected - ref_rejected)
    if loss == "sigmoid":
        return (-torch.nn.functional.logsigmoid(0.5 * margin)).mean().item()
    return ((0.5 * margin - (ref_chosen - ref_rejected)) ** 2).mean().item()


def _models():
    from framework import tiny

    tokenizer = tiny.build_tokenizer()
    build = lambda seed: tiny.build_model(tokenizer, hidden_size=32, num_layers=2, num_heads=2,  # noqa: E731
                                          intermediate_size=64, max_positions=128, seed=seed)
    return build(0), build(1), tokenizer


@pytest.mark.parametrize("trainer_kind", ["sigmoid", "squared"])
def test_the_trainers_optimise_the_hand_formula_on_a_batch(trainer_kind, tmp_path):
    """What `compute_loss` returns (what the Trainer backpropagates) equals the formula computed by hand:
    TRL's sigmoid loss (algorithm=dpo, outcome_dpo, self_explore) and the squared regression."""
    from trl import DPOTrainer

    policy, reference, tokenizer = _models()
    expected = _hand_loss(policy, reference, tokenizer, trainer_kind)
    trainer_class = DPOTrainer if trainer_kind == "sigmoid" else SquaredSharpeningDPOTrainer
    trainer = _dpo_trainer(trainer_class, policy, reference, tokenizer, tmp_path)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch).item()
    assert loss == pytest.approx(expected, rel=1e-4) and abs(expected) > 1e-3


def test_squared_dpo_survives_trl_renaming_its_private_loss_helper(monkeypatch, tmp_path):
    """If a TRL release renamed DPOTrainer's private `_compute_loss`, an override of it would silently train
    the sigmoid loss; the squared trainer overrides the Trainer's public `compute_loss` instead."""
    from trl import DPOTrainer

    renamed = DPOTrainer._compute_loss
    monkeypatch.delattr(DPOTrainer, "_compute_loss")
    monkeypatch.setattr(DPOTrainer, "_compute_loss_renamed", renamed, raising=False)
    monkeypatch.setattr(DPOTrainer, "compute_loss", lambda self, model, inputs, return_outputs=False,
                        num_items_in_batch=None: self._compute_loss_renamed(model, inputs, return_outputs))
    policy, reference, tokenizer = _models()
    trainer = _dpo_trainer(SquaredSharpeningDPOTrainer, policy, reference, tokenizer, tmp_path)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch).item()
    assert loss == pytest.approx(_hand_loss(policy, reference, tokenizer, "squared"), rel=1e-4)


def test_squared_dpo_under_lora_scores_the_reference_with_the_adapter_off(tmp_path):
    """Under LoRA there is no reference copy (TRL switches the adapter off): the loss must still be the
    formula with pi_base = the model without its adapter, once the adapter has moved."""
    import copy

    policy, _, tokenizer = _models()
    base = copy.deepcopy(policy)
    trainer = _dpo_trainer(SquaredSharpeningDPOTrainer, policy, None, tokenizer, tmp_path, lora=True)
    assert trainer.ref_model is None
    with torch.no_grad():  # move the adapter: LoRA's B starts at zero, so the policy would equal the base
        generator = torch.Generator().manual_seed(0)
        for name, parameter in trainer.model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))
    moved = trainer.accelerator.unwrap_model(trainer.model)
    expected = _hand_loss(moved, base, tokenizer, "squared")
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch).item()
    assert loss == pytest.approx(expected, rel=1e-4)
    assert _hand_loss(moved, moved, tokenizer, "squared") != pytest.approx(expected, rel=1e-2)  # the base mattered


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
    for name in ("bon_sft", "dpo", "xpo"):  # get() raises for a method that is no longer registered
        assert registry.algorithms.get(name).label_free, name
    for name in ("sft", "soc"):
        assert not registry.algorithms.get(name).label_free, name


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

    cfg = compose_config([f"algorithm={algorithm}", "algorithm.starting_point=base", "algorithm.prompt_pool=train",
                          "algorithm.samples_per_prompt=3",
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


@pytest.mark.parametrize("trainer_kind", ["sigmoid", "squared"])
def test_a_precomputed_reference_holds_no_second_model_and_gives_the_same_loss(trainer_kind, tmp_path):
    """precompute_ref_log_probs: TRL scores every pair with the starting model once before training; the
    trainer then keeps no reference copy, and the loss on a batch equals the one with a live reference."""
    import copy

    from trl import DPOConfig, DPOTrainer

    policy, _, tokenizer = _models()
    trainer_class = DPOTrainer if trainer_kind == "sigmoid" else SquaredSharpeningDPOTrainer
    losses = {}
    for precompute in (False, True):
        args = DPOConfig(output_dir=str(tmp_path / f"dpo{precompute}"), beta=0.5, loss_type=["sigmoid"],
                         per_device_train_batch_size=3, report_to="none", use_cpu=True, bf16=False,
                         precompute_ref_log_probs=precompute)
        trainer = trainer_class(model=copy.deepcopy(policy), ref_model=None if precompute else copy.deepcopy(policy),
                                args=args, train_dataset=Dataset.from_list(PAIRS), processing_class=tokenizer)
        assert (trainer.ref_model is None) == precompute
        with torch.no_grad():  # move the policy off the reference, so the reference's numbers matter
            for parameter in trainer.model.parameters():
                parameter.add_(0.01 * torch.sin(torch.arange(parameter.numel(), dtype=parameter.dtype)).view_as(parameter))
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        assert ("ref_chosen_logps" in batch) == precompute
        with torch.no_grad():
            losses[precompute] = trainer.compute_loss(trainer.model, batch).item()
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


# ---------------------------------------------------------------------------- the sampled set's key
SHARPENING_SWEEP = Path(__file__).resolve().parent.parent / "sweeps" / "sharpening.yaml"


def _sweep_jobs(sweep_file: Path) -> list[list[str]]:
    """Every job of a sweep file's grid as overrides (the product of its swept keys)."""
    import itertools

    from omegaconf import OmegaConf

    params = OmegaConf.load(sweep_file).hydra.sweeper.params
    grid = [[f"{key}={value.strip()}" for value in str(values).split(",")] for key, values in params.items()]
    return [list(job) for job in itertools.product(*grid)]


def _sampled_set_spec(monkeypatch, config) -> dict:
    """The stage spec `sample_training_set` gives the sampled set of `config`, for a fixed model and data."""
    from framework.algorithms import sharpening
    from framework.data.loaders import ArithDatasetConfig, load_arith

    specs = []
    monkeypatch.setattr(sharpening, "generated_records",
                        lambda ctx, kind, spec, *args, **kwargs: (specs.append(spec), ([], "key", {}))[1])
    data = load_arith(ArithDatasetConfig(train_size=8, test_size=2, heldout_size=4)).without_labels()
    ctx = AlgorithmContext(config=config, base=ModelHandle("start", {"base": "start"}), data=data,
                           stages=StageStore("unused"), runtime=resolve_runtime("cpu", "fp32"), seed=0,
                           report_to="none", output_dir=Path("unused"))
    sharpening.sample_training_set(ctx, config)
    return specs[0]


def test_the_sharpening_sweep_draws_one_sampled_set_whatever_the_selector_or_batching(monkeypatch):
    """Every job of sweeps=sharpening that samples (BoN-SFT, DPO), under every selector and with other batch
    sizes, a cap on training prompts above the split's size and either filter for unfinished samples, keys
    the same sampled set: none of these changes a sample (the stored answers are the checker's, which every
    selector reads), so the set is drawn once."""
    specs = []
    for job in _sweep_jobs(SHARPENING_SWEEP):
        settings = to_validated(compose_config(["sweeps=sharpening", *job]))
        if not hasattr(settings.algorithm, "sampling_keys"):
            continue  # sft, xpo: no sampled set
        variants = [[], ["algorithm.train_prompts=100000"], ["algorithm.require_finished=false"]]
        if hasattr(settings.algorithm, "prompts_per_batch"):  # an engine that sizes its batches itself has no such key
            variants.append(["algorithm.prompts_per_batch=3"])
        if settings.algorithm.name == "bon_sft":
            variants += [[f"algorithm.selector={selector}"] for selector in SELECTOR_NAMES]
        for variant in variants:
            config = to_validated(compose_config(["sweeps=sharpening", *job, *variant])).algorithm
            specs.append(_sampled_set_spec(monkeypatch, config))
    assert len(specs) >= 8 and all(spec == specs[0] for spec in specs)
    drawn = to_validated(compose_config(["sweeps=sharpening", "algorithm=bon_sft", "algorithm.temperature=0.7"]))
    assert _sampled_set_spec(monkeypatch, drawn.algorithm) != specs[0]  # a key that changes the samples counts


def test_each_prompt_pool_keys_its_own_sampled_set(monkeypatch):
    """BoN-SFT on the held-out pool (the cross-method table) and on the test prompts (the paper's protocol) sample
    different prompts: two sampled sets (before: both keyed by the prompt count only, so the second job reused the
    first's samples and trained on the wrong prompts)."""
    specs = {pool: _sampled_set_spec(monkeypatch, to_validated(compose_config(
        ["algorithm=bon_sft", f"algorithm.prompt_pool={pool}", "algorithm.train_prompts=2"])).algorithm)
        for pool in ("heldout", "test", "train")}
    assert len({repr(spec) for spec in specs.values()}) == 3
