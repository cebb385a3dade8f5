"""XPO: the loss against hand-computed values, its alpha = 0 identity with DPO, the alpha schedule, the
preference rule with ties, config checks, and two training steps on a tiny random model from prompts
alone (no gold-answer or completion column)."""
import copy
import json
import math
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset

from conftest import PROMPTS

from framework.algorithms import AlgorithmContext
from framework.algorithms.xpo import (SelfReward, XPOConfig, XPOTrainer, alpha_for_epoch, prefer_policy_sample,
                                      run, self_reward, xpo_loss)
from framework.config import to_validated
from framework.data.answers import NumericAnswerChecker
from framework.data.loaders import TaskData
from framework.errors import ConfigError
from framework.models import ModelHandle, Runtime
from framework.stages import StageStore


def _t(*values):
    return torch.tensor(values, dtype=torch.float64)


def _dpo(beta, margin):  # -log sigmoid(beta * margin) = log(1 + exp(-beta * margin))
    return math.log(1 + math.exp(-beta * margin))


# ---------------------------------------------------------------------------- loss
def test_matches_a_hand_computed_value():
    beta, alpha = 0.1, 0.01
    # prompt 0: the policy sample y won, so y~ is rejected and log pi(y~) = policy_rejected = -5.0
    #   margin = (-3 - -4) - (-5 - -4.5) = 1 - (-0.5) = 1.5
    # prompt 1: y~ won, so log pi(y~) = policy_chosen = -2.0
    #   margin = (-2 - -1.5) - (-2.5 - -3) = -0.5 - 0.5 = -1.0
    policy_chosen, policy_rejected = _t(-3.0, -2.0), _t(-5.0, -2.5)
    ref_chosen, ref_rejected = _t(-4.0, -1.5), _t(-4.5, -3.0)
    policy_ref_sample = _t(-5.0, -2.0)
    dpo = [math.log(1 + math.exp(-0.15)), math.log(1 + math.exp(0.1))]
    bonus = [0.01 * -5.0, 0.01 * -2.0]
    terms = xpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, policy_ref_sample,
                     beta=beta, alpha=alpha)
    assert terms.loss.item() == pytest.approx((dpo[0] + bonus[0] + dpo[1] + bonus[1]) / 2, abs=1e-12)
    assert terms.dpo_loss.item() == pytest.approx((dpo[0] + dpo[1]) / 2, abs=1e-12)
    assert terms.alpha_term.item() == pytest.approx(-0.035, abs=1e-12)
    assert terms.margin.tolist() == pytest.approx([1.5, -1.0])


def test_alpha_term_pushes_the_reference_sample_down():
    """d loss / d log pi(y~) through the alpha term is alpha / batch > 0: gradient descent lowers it."""
    policy_ref_sample = _t(-5.0, -2.0).requires_grad_(True)
    xpo_loss(_t(-3.0, -2.0), _t(-5.0, -2.5), _t(-4.0, -1.5), _t(-4.5, -3.0), policy_ref_sample,
             beta=0.1, alpha=0.3).loss.backward()
    assert policy_ref_sample.grad.tolist() == pytest.approx([0.15, 0.15])


def test_alpha_zero_is_the_dpo_sigmoid_loss():
    generator = torch.Generator().manual_seed(0)
    values = [-10 * torch.rand(5, generator=generator, dtype=torch.float64) for _ in range(5)]
    for beta in (0.1, 1.0, 2.5):
        terms = xpo_loss(*values, beta=beta, alpha=0.0)
        pc, pr, rc, rr = (v.tolist() for v in values[:4])
        expected = sum(_dpo(beta, (pc[i] - rc[i]) - (pr[i] - rr[i])) for i in range(5)) / 5
        assert terms.loss.item() == pytest.approx(expected, abs=1e-12)
        assert terms.alpha_term.item() == 0.0


def test_self_reward_is_logprob_or_length_norm_and_refuses_majority():
    sums, lengths = _t(-6.0, -2.0, -3.0), _t(3, 1, 0)
    assert self_reward(sums, lengths, "logprob").tolist() == [-6.0, -2.0, -3.0]
    assert self_reward(sums, lengths, "length_norm").tolist() == [-2.0, -2.0, -3.0]  # 0 tokens: divided by 1
    reward = SelfReward("length_norm")
    assert reward(prompts=["a", "b"], completions=["", ""], completion_ids=[[], []], base_logps=[-4.0, -1.0],
                  completion_lengths=[2, 4], trainer_state=None) == [-2.0, -0.25]
    with pytest.raises(ValueError):
        self_reward(sums, lengths, "majority")


# ---------------------------------------------------------------------------- schedule and preference
def test_alpha_schedule_per_epoch_then_the_last_value():
    schedule = [1e-3, 1e-4, 1e-5]
    assert alpha_for_epoch(schedule, 0.0) == 1e-3
    assert alpha_for_epoch(schedule, 0.99) == 1e-3  # still the first epoch
    assert alpha_for_epoch(schedule, 1.0) == 1e-4
    assert alpha_for_epoch(schedule, 2.5) == 1e-5
    assert alpha_for_epoch(schedule, 7.0) == 1e-5  # beyond the list: the last value repeats
    assert alpha_for_epoch(schedule, None) == 1e-3  # before the first step the Trainer may report no epoch
    assert alpha_for_epoch([2e-5], 4.0) == 2e-5
    assert alpha_for_epoch(3e-5, 9.0) == 3e-5  # a bare number is constant


def test_preference_rule_and_ties():
    policy, reference = _t(-3.0, -5.0, -4.0, -1.0), _t(-4.0, -2.0, -4.0, -1.0)
    # y better, y~ better, tie -> y, tie -> y
    assert prefer_policy_sample(policy, reference).tolist() == [True, False, True, True]


# ---------------------------------------------------------------------------- config
@pytest.mark.parametrize("key, value", [
    ("alpha", [-1e-5]), ("alpha", []), ("alpha", [1e-5, float("nan")]), ("beta", 0.0), ("beta", -0.1),
    ("temperature", 0.0), ("temperature", -1.0), ("top_p", 0.0), ("top_p", 1.5), ("max_new_tokens", 0),
    ("max_new_tokens", 3000), ("self_reward", "majority"), ("starting_point", "instruct"), ("learning_rate", 0.0),
])
def test_bad_values_are_refused(key, value):
    with pytest.raises(ConfigError, match=rf"algorithm\.{key}"):
        XPOConfig(**{key: value}).validate("algorithm")


def test_yaml_composes_with_the_schema_defaults(compose_cfg):
    # conf/algorithm/xpo.yaml restates the schema defaults (GSM8K: the schema's 512 new tokens; no preset)
    run_config = to_validated(compose_cfg(["algorithm=xpo", "experiment=none", "dataset=gsm8k"]))
    assert run_config.algorithm == XPOConfig()
    schedule = to_validated(compose_cfg(["algorithm=xpo", "algorithm.alpha=[1e-4,1e-5]"])).algorithm.alpha
    assert schedule == [1e-4, 1e-5] and all(isinstance(value, float) for value in schedule)
    with pytest.raises(ConfigError, match=r"algorithm\.alpha"):
        to_validated(compose_cfg(["algorithm=xpo", "algorithm.alpha=[]"]))


# ---------------------------------------------------------------------------- training
def _sequence_logprob(model, tokenizer, prompt, completion_ids):
    """log pi(completion | prompt) from one unpadded forward pass, summed up to and including the EOS."""
    eos = tokenizer.eos_token_id
    cut = completion_ids.index(eos) + 1 if eos in completion_ids else len(completion_ids)
    completion_ids = completion_ids[:cut]
    prompt_ids = tokenizer(prompt)["input_ids"]
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logps = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
    return sum(logps[len(prompt_ids) - 1 + t, token].item() for t, token in enumerate(completion_ids))


def _prompt_only_context(model_and_tokenizer, tmp_path, **config) -> AlgorithmContext:
    """A context whose training split has only `question` and `prompt` (no gold answer, no demonstration)."""
    model, tokenizer = model_and_tokenizer
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    base = ModelHandle(str(tmp_path / "base"), {"base": "test-random"})
    prompts = PROMPTS + ["Sam has 9 apples. Sam eats 4. How many apples does Sam have now?\n"]
    train = Dataset.from_dict({"question": [p.strip() for p in prompts], "prompt": prompts})
    data = TaskData(train=train, test=train, checker=NumericAnswerChecker(), fingerprint={"test": "xpo"})
    settings = dict(starting_point="base", max_steps=2, per_device_train_batch_size=4, max_new_tokens=12,
                    learning_rate=1e-3, logging_steps=1, save_steps=1, alpha=[1e-2])
    return AlgorithmContext(config=XPOConfig(**{**settings, **config}), base=base, data=data,
                            stages=StageStore(tmp_path / "cache"), runtime=Runtime("cpu", "fp32"), seed=0,
                            report_to="none", output_dir=tmp_path / "out")


@pytest.fixture(scope="module")
def recorded_run(model_and_tokenizer, tmp_path_factory):
    """Two XPO steps from prompts alone, recording per step what was sampled (with which model, and that
    model's weights), what the self-reward saw and returned, what the loss was given, and the logs."""
    import framework.algorithms.xpo as xpo

    tmp_path = tmp_path_factory.mktemp("xpo-run")
    record = SimpleNamespace(ctx=_prompt_only_context(model_and_tokenizer, tmp_path), cache=tmp_path / "cache",
                             samples=[], rewards=[], losses=[], logged=[])
    original_sample, original_call, original_loss = XPOTrainer._sample, SelfReward.__call__, xpo.xpo_loss
    original_log = XPOTrainer.log

    def sample(self, model, prompt_ids, prompt_mask):
        ids, mask = original_sample(self, model, prompt_ids, prompt_mask)
        record.samples.append({
            "frozen_reference": model is self.ref_model and not any(p.requires_grad for p in model.parameters()),
            "weights": {name: value.detach().clone() for name, value in model.state_dict().items()},
            "ids": [row[: int(n)] for row, n in zip(ids.tolist(), mask.sum(1).tolist())]})
        return ids, mask

    def reward(self, prompts, completions, completion_ids, **kwargs):
        rewards = original_call(self, prompts, completions, completion_ids, **kwargs)
        record.rewards.append((list(prompts), [list(ids) for ids in completion_ids], rewards))
        return rewards

    def loss(*logps, **kwargs):  # policy chosen, policy rejected, ref chosen, ref rejected, policy on y~
        record.losses.append([value.detach().clone() for value in logps])
        return original_loss(*logps, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(XPOTrainer, "_sample", sample)
        patch.setattr(SelfReward, "__call__", reward)
        patch.setattr(xpo, "xpo_loss", loss)
        patch.setattr(XPOTrainer, "log", lambda self, logs, *args, **kwargs: (  # checkpoints go when it commits
            record.logged.append(dict(logs)), original_log(self, logs, *args, **kwargs))[1])
        record.handle = run(record.ctx)
    record.steps = [entry for entry in record.logged if "xpo/policy_chosen" in entry]
    return record


def test_two_steps_from_prompts_alone(model_and_tokenizer, recorded_run):
    model, tokenizer = model_and_tokenizer
    handle = recorded_run.handle
    stage = json.loads((recorded_run.cache / "xpo" / handle.fingerprint["key"] / "stage.json").read_text())
    assert stage["global_step"] == 2
    assert len(recorded_run.steps) == 2
    for entry in recorded_run.steps:
        assert 0.0 <= entry["xpo/policy_chosen"] <= 1.0 and entry["xpo/alpha"] == pytest.approx(1e-2)
        assert math.isfinite(entry["loss"]) and entry["beta"] == pytest.approx(0.1)

    # r_self is log pi_base(y | x) at temperature 1: recompute each sample unpadded with the base model
    assert len(recorded_run.rewards) == 2 and all(len(rewards) == 8 for _, _, rewards in recorded_run.rewards)
    for call_prompts, call_ids, rewards in recorded_run.rewards:
        for prompt, ids, reward in zip(call_prompts, call_ids, rewards):
            assert reward == pytest.approx(_sequence_logprob(model, tokenizer, prompt, ids), abs=1e-4)

    # the alpha term is alpha * mean log pi(y~ | x) under the policy of that step (its weights as it sampled y),
    # recomputed unpadded from the y~ rows (the second half) of what the self-reward was handed
    policy = copy.deepcopy(model)
    for entry, policy_sample, (call_prompts, call_ids, _) in zip(recorded_run.steps, recorded_run.samples[::2],
                                                                  recorded_run.rewards):
        policy.load_state_dict(policy_sample["weights"])
        batch = len(call_prompts) // 2
        logps = [_sequence_logprob(policy, tokenizer, prompt, ids)
                 for prompt, ids in zip(call_prompts[batch:], call_ids[batch:])]
        assert entry["xpo/alpha_term"] == pytest.approx(1e-2 * sum(logps) / batch, rel=1e-4)
        # both terms of the loss are logged, with their ratio
        assert entry["xpo/alpha_to_dpo_ratio"] == pytest.approx(abs(entry["xpo/alpha_term"]) / entry["xpo/dpo_loss"],
                                                                rel=1e-4)

    from transformers import AutoModelForCausalLM

    trained = AutoModelForCausalLM.from_pretrained(handle.path)
    assert any(not torch.equal(p, q) for p, q in zip(trained.state_dict().values(), model.state_dict().values()))
    assert run(recorded_run.ctx).path == handle.path  # a finished stage is reused, not retrained


def test_a_step_pairs_a_policy_sample_with_a_frozen_base_sample_and_prefers_the_higher_self_reward(
        model_and_tokenizer, recorded_run):
    base = model_and_tokenizer[0].state_dict()
    same_as_base = lambda weights: all(torch.equal(weights[name], base[name]) for name in base)
    samples = recorded_run.samples
    assert len(samples) == 4  # per step: y from the policy, then y~ from pi_base
    policy_samples, reference_samples = samples[::2], samples[1::2]
    assert not any(sample["frozen_reference"] for sample in policy_samples)
    assert all(sample["frozen_reference"] and same_as_base(sample["weights"]) for sample in reference_samples)
    # the first step's policy is pi_base itself; by the second it has moved, and y is still drawn from it
    assert same_as_base(policy_samples[0]["weights"]) and not same_as_base(policy_samples[1]["weights"])

    for policy_sample, reference_sample, (prompts, ids, rewards), logps in zip(
            policy_samples, reference_samples, recorded_run.rewards, recorded_run.losses):
        batch = len(prompts) // 2
        assert ids == policy_sample["ids"] + reference_sample["ids"]  # rows: the y of each prompt, then its y~
        policy_chosen, policy_rejected, ref_chosen, ref_rejected, policy_ref_sample = (v.tolist() for v in logps)
        for i in range(batch):
            r_y, r_y_tilde = rewards[i], rewards[batch + i]
            y_wins = r_y >= r_y_tilde  # ties go to the policy sample
            # r_self = log pi_base, so the reference log-probs of the pair are the two self-rewards
            assert (ref_chosen[i], ref_rejected[i]) == pytest.approx(
                (r_y, r_y_tilde) if y_wins else (r_y_tilde, r_y), abs=1e-5)
            # and y~ is on the side its reward put it: rejected when y wins, chosen otherwise
            assert (policy_rejected if y_wins else policy_chosen)[i] == policy_ref_sample[i]


class Interrupted(Exception):
    pass


def test_an_interrupted_run_resumes_from_its_last_checkpoint(model_and_tokenizer, tmp_path, monkeypatch):
    ctx = _prompt_only_context(model_and_tokenizer, tmp_path, max_steps=3)
    original_step = XPOTrainer.training_step
    steps = []

    def step(self, *args, **kwargs):
        if getattr(self, "interrupt_at", None) == self.state.global_step:
            raise Interrupted  # as a kill after checkpoint-2 was written
        steps.append(self.state.global_step)
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(XPOTrainer, "training_step", step)
    monkeypatch.setattr(XPOTrainer, "interrupt_at", 2, raising=False)
    with pytest.raises(Interrupted):
        run(ctx)
    assert steps == [0, 1]
    monkeypatch.setattr(XPOTrainer, "interrupt_at", None, raising=False)
    handle = run(ctx)
    assert steps == [0, 1, 2]  # only the third step ran again
    stage = json.loads((tmp_path / "cache" / "xpo" / handle.fingerprint["key"] / "stage.json").read_text())
    assert stage["global_step"] == 3
