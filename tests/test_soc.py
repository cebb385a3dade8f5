"""SOC loss against hand-computed values, its lambda = 0 identity with SFT, and its gradient."""
import math

import pytest
import torch

from framework.algorithms.soc import SOCConfig, soc_loss
from framework.errors import ConfigError

# One sequence, three positions, vocabulary of three; position 0 is a prompt state (not supervised).
LOGITS = torch.tensor([[[0.5, -1.0, 2.0], [1.0, 2.0, 0.0], [0.0, 0.0, math.log(2.0)]]])
LABELS = torch.tensor([[-100, 1, 2]])


def test_matches_a_hand_computed_value():
    # position 1: lse = log(e + e^2 + 1) = 2.4076059644; -z_y = -2
    # position 2: lse = log(1 + 1 + 2) = log 4;           -z_y = -log 2
    lse1, lse2 = math.log(math.e + math.e ** 2 + 1), math.log(4.0)
    sft = ((lse1 - 2.0) + (lse2 - math.log(2.0))) / 2
    value_loss = -(lse1 + lse2) / 2
    terms = soc_loss(LOGITS, LABELS, value_coef=0.2)
    assert terms.sft_loss.item() == pytest.approx(sft, abs=1e-6)
    assert terms.value_loss.item() == pytest.approx(value_loss, abs=1e-6)
    assert terms.loss.item() == pytest.approx(sft + 0.2 * value_loss, abs=1e-6)
    # identity for beta = 1: per token -z_y + (1 - lambda) * lse
    assert terms.loss.item() == pytest.approx(((-2.0 + 0.8 * lse1) + (-math.log(2.0) + 0.8 * lse2)) / 2, abs=1e-6)
    assert terms.mean_value.item() == pytest.approx((lse1 + lse2) / 2, abs=1e-6)


def test_coefficient_zero_is_exactly_the_sft_loss():
    torch.manual_seed(0)
    logits, labels = torch.randn(3, 7, 11), torch.randint(0, 11, (3, 7))
    labels[:, :2] = -100
    sft = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), labels.reshape(-1), ignore_index=-100)
    assert soc_loss(logits, labels, value_coef=0.0).loss.item() == pytest.approx(sft.item(), abs=1e-6)


@pytest.mark.parametrize("value_coef", [0.0, 0.2, 0.5])
def test_gradient_on_logits_is_scaled_softmax_minus_onehot(value_coef):
    logits = LOGITS.clone().requires_grad_(True)
    soc_loss(logits, LABELS, value_coef=value_coef).loss.backward()
    expected = (1 - value_coef) * torch.softmax(LOGITS, -1) - torch.nn.functional.one_hot(LABELS.clamp(min=0), 3)
    expected = expected / 2  # token mean over the two supervised positions
    expected[0, 0] = 0.0  # the prompt state gets no gradient
    assert torch.allclose(logits.grad, expected, atol=1e-6)


def test_beta_scales_the_value():
    beta = 0.5
    terms = soc_loss(LOGITS, LABELS, value_coef=1.0, beta=beta)
    values = [beta * torch.logsumexp(LOGITS[0, t] / beta, -1).item() for t in (1, 2)]
    assert terms.value_loss.item() == pytest.approx(-sum(values) / 2, abs=1e-6)


def test_state_mask_and_sequence_mean():
    all_states = torch.ones(1, 3, dtype=torch.bool)
    terms = soc_loss(LOGITS, LABELS, value_coef=1.0, state_mask=all_states)
    lse = torch.logsumexp(LOGITS[0], -1)
    assert terms.value_loss.item() == pytest.approx(-lse.mean().item(), abs=1e-6)
    # sequence_mean: each sequence's token mean, then the mean over sequences

    labels = torch.tensor([[-100, 1, 2], [-100, -100, 2]])
    terms = soc_loss(torch.cat([LOGITS, LOGITS]), labels, value_coef=0.0, normalisation="sequence_mean")
    first = ((lse[1] - 2.0) + (lse[2] - math.log(2.0))) / 2
    second = lse[2] - math.log(2.0)
    assert terms.sft_loss.item() == pytest.approx(((first + second) / 2).item(), abs=1e-6)


@pytest.mark.parametrize("key, value", [("value_coef", -0.1), ("value_coef", float("nan")), ("beta", 0.0),
                                        ("value_states", "everything"), ("normalisation", "sum")])
def test_bad_values_are_refused(key, value):
    with pytest.raises(ConfigError, match=f"algorithm.{key}"):
        SOCConfig(**{key: value}).validate("algorithm")
