"""Decoders on a small random model through the transformers engine: shapes, batching, log-probs that match
teacher forcing, and the counter-based sampler (exact, seeded, independent of batching)."""
import math
import random

import pytest
import torch

from conftest import PROMPTS
from framework.decoding import BeamConfig, BeamDecoder, GreedyConfig, GreedyDecoder, SampleConfig, SampleDecoder
from framework.generation import (Request, RowGroup, TransformersEngine, TransformersEngineConfig, counter_uniform,
                                  hash32, hash32_int, plan_decode_batches, row_state, sample_tokens, valid_token_mask)


def _engine(model_and_tokenizer, max_batch_rows=None):
    return TransformersEngine(*model_and_tokenizer, TransformersEngineConfig(max_batch_rows=max_batch_rows))


def teacher_forced_logprob(model, tokenizer, prompt: str, completion_ids: list[int]) -> float:
    prompt_ids = tokenizer(prompt)["input_ids"]
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits.float(), dim=-1)
    return sum(logprobs[0, len(prompt_ids) + i - 1, token].item() for i, token in enumerate(completion_ids))


@pytest.mark.parametrize("decoder", [
    GreedyDecoder(GreedyConfig(max_new_tokens=12)),
    SampleDecoder(SampleConfig(max_new_tokens=12, samples_per_prompt=3, temperature=0.7, top_p=0.9)),
    BeamDecoder(BeamConfig(max_new_tokens=12, num_beams=3)),
    BeamDecoder(BeamConfig(max_new_tokens=12, num_beams=3, length_penalty=0.5)),
], ids=["greedy", "sample", "beam", "beam-length-penalty"])
def test_sequence_logprobs_equal_teacher_forcing(model_and_tokenizer, decoder):
    model, tokenizer = model_and_tokenizer
    results = decoder.decode(_engine(model_and_tokenizer, max_batch_rows=4), PROMPTS, progress=False).outputs
    assert len(results) == len(PROMPTS)
    request = decoder.request()
    for prompt, result in zip(PROMPTS, results):
        assert len(result.candidates) == (request.samples_per_prompt if request.samples else 1)
        for candidate in result.candidates:
            ids = candidate.token_ids
            assert len(ids) == candidate.num_tokens and (ids[-1] == tokenizer.eos_token_id) == candidate.finished
            assert tokenizer.decode(ids, skip_special_tokens=True) == candidate.text
            # temperature/top-p shape the sampling, never the reported log pi (temperature 1)
            assert candidate.logprob == pytest.approx(teacher_forced_logprob(model, tokenizer, prompt, ids), abs=1e-3)


def test_greedy_is_independent_of_batching(model_and_tokenizer):
    decoder = GreedyDecoder(GreedyConfig(max_new_tokens=10))
    batched = decoder.decode(_engine(model_and_tokenizer, max_batch_rows=8), PROMPTS, False)
    single = decoder.decode(_engine(model_and_tokenizer, max_batch_rows=1), PROMPTS, False)
    assert batched.reference is None  # a plain decoder decodes no baseline
    assert [r.candidates[0].text for r in batched.outputs] == [r.candidates[0].text for r in single.outputs]


def test_samples_are_independent_of_batching_and_follow_the_prompt_key(model_and_tokenizer):
    """Counter-based noise: a prompt's samples depend on (seed, key, sample, step) only, not on its batch, nor on
    a budget that splits one prompt's samples over two batches (2 rows a batch here)."""
    request = Request(max_new_tokens=12, samples_per_prompt=3, temperature=1.0)
    together = _engine(model_and_tokenizer, max_batch_rows=9).generate(PROMPTS, request, seed=5, progress=False)
    engine = _engine(model_and_tokenizer, max_batch_rows=2)
    alone = [engine.generate([prompt], request, seed=5, keys=[key], progress=False)[0]
             for key, prompt in enumerate(PROMPTS)]
    assert [[c.token_ids for c in p] for p in together] == [[c.token_ids for c in p] for p in alone]
    other_key = engine.generate(PROMPTS[:1], request, seed=5, keys=[7], progress=False)[0]
    assert [c.token_ids for c in other_key] != [c.token_ids for c in together[0]]


def test_temperature_is_applied_while_logprobs_stay_at_temperature_one(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    engine = _engine(model_and_tokenizer)
    greedy = GreedyDecoder(GreedyConfig(max_new_tokens=10)).decode(engine, PROMPTS, False).outputs
    cold = SampleDecoder(SampleConfig(max_new_tokens=10, temperature=1e-4, samples_per_prompt=2)).decode(
        engine, PROMPTS, False).outputs
    for g, c in zip(greedy, cold):
        assert all(candidate.text == g.candidates[0].text for candidate in c.candidates)
        assert c.candidates[0].logprob == pytest.approx(g.candidates[0].logprob, abs=1e-4)


def test_sampling_repeats_with_the_same_seed_and_differs_with_another(model_and_tokenizer):
    engine = _engine(model_and_tokenizer)
    config = SampleConfig(max_new_tokens=10, samples_per_prompt=2)
    first = SampleDecoder(config, seed=1).decode(engine, PROMPTS, False).outputs
    again = SampleDecoder(config, seed=1).decode(engine, PROMPTS, False).outputs
    other = SampleDecoder(config, seed=2).decode(engine, PROMPTS, False).outputs
    assert [c.text for r in first for c in r.candidates] == [c.text for r in again for c in r.candidates]
    assert [c.token_ids for r in first for c in r.candidates] != [c.token_ids for r in other for c in r.candidates]


def test_beam_width_one_equals_greedy(model_and_tokenizer):
    engine = _engine(model_and_tokenizer)
    greedy = GreedyDecoder(GreedyConfig(max_new_tokens=10)).decode(engine, PROMPTS, False).outputs
    beam = BeamDecoder(BeamConfig(max_new_tokens=10, num_beams=1)).decode(engine, PROMPTS, False).outputs
    assert [r.candidates[0].text for r in greedy] == [r.candidates[0].text for r in beam]


def test_valid_token_mask_keeps_the_first_eos():
    generated = torch.tensor([[5, 6, 2, 0, 0], [5, 2, 7, 2, 0], [5, 6, 7, 8, 9]])
    assert valid_token_mask(generated, [2]).int().tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_teacher_forced_logprobs_batched_with_padding(model_and_tokenizer):
    from framework.decoding import teacher_forced_logprobs

    model, tokenizer = model_and_tokenizer
    completions = ["3 + 4 = 7\n#### 7", "12 - 2 = 10\n10 - 5 = 5\n#### 5", "#### 7"]
    scored = teacher_forced_logprobs(model, tokenizer, PROMPTS, completions, sequences_per_batch=2)
    for prompt, completion, value in zip(PROMPTS, completions, scored):
        ids = tokenizer(completion)["input_ids"] + [tokenizer.eos_token_id]
        assert value == pytest.approx(teacher_forced_logprob(model, tokenizer, prompt, ids), abs=1e-4)


# ---------------------------------------------------------------------------- the counter-based sampler
def test_the_tensor_hash_equals_the_integer_reference():
    """int64 products wrap; the low 32 bits that the hash keeps must equal exact integer arithmetic."""
    values = [0, 1, 2, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x9E3779B9] + [random.Random(0).getrandbits(32)
                                                                        for _ in range(2000)]
    assert hash32(torch.tensor(values, dtype=torch.int64)).tolist() == [hash32_int(v) for v in values]


def test_counter_uniforms_are_uniform_and_distinct_per_row_and_step():
    states = torch.tensor([row_state(0, key, sample) for key in range(5000) for sample in range(4)], dtype=torch.int64)
    first, second = counter_uniform(states, 0), counter_uniform(states, 1)
    assert first.dtype == torch.float64 and 0 < first.min() and first.max() < 1
    assert abs(first.mean().item() - 0.5) < 0.005 and abs(first.var().item() - 1 / 12) < 0.002
    assert len(set(first.tolist())) == len(states) and not torch.equal(first, second)
    assert abs(torch.corrcoef(torch.stack([first, second]))[0, 1].item()) < 0.03  # steps draw independently


@pytest.mark.parametrize("top_p", [1.0, 0.7])
def test_inverse_cdf_sampling_draws_the_warped_softmax_exactly(top_p):
    """20,000 rows on one set of logits: the token frequencies match softmax(logits / T) after top-p (binomial
    4 sigma); top-p 0.7 keeps the two most likely tokens (0.47 + 0.26 of the mass at T = 0.8)."""
    logits, temperature, rows = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5]), 0.8, 20000
    uniforms = counter_uniform(torch.tensor([row_state(3, key, 0) for key in range(rows)], dtype=torch.int64), 0)
    picks = sample_tokens(logits.repeat(rows, 1), temperature, top_p, uniforms)
    expected = torch.softmax(logits / temperature, -1)
    if top_p < 1:
        expected = torch.where(expected >= expected.sort(descending=True).values[1], expected, torch.zeros(5))
        expected = expected / expected.sum()
    observed = torch.bincount(picks, minlength=5).double() / rows
    for p, q in zip(observed.tolist(), expected.tolist()):
        assert abs(p - q) <= 4 * math.sqrt(q * (1 - q) / rows), (observed, expected)


def test_decode_batches_fill_the_budget_longest_prompts_first_and_split_a_prompts_samples():
    # rows per batch: 5 when its longest prompt has >= 10 tokens, else 8
    plan = plan_decode_batches([3, 12, 7, 12], 3, lambda length: 5 if length >= 10 else 8)
    assert plan == [[RowGroup(1, 0, 3), RowGroup(3, 0, 2)], [RowGroup(3, 2, 1), RowGroup(2, 0, 3), RowGroup(0, 0, 1)],
                    [RowGroup(0, 1, 2)]]
    assert plan_decode_batches([4, 4], 10, lambda length: 4) == [
        [RowGroup(0, 0, 4)], [RowGroup(0, 4, 4)], [RowGroup(0, 8, 2), RowGroup(1, 0, 2)], [RowGroup(1, 2, 4)],
        [RowGroup(1, 6, 4)]]


def test_stop_strings_end_a_sequence_and_are_cut_from_its_text(model_and_tokenizer):
    """A model that continues past its answer: the same greedy decode with a stop string taken from its own
    output ends right there, its text stops before it, and it counts as finished."""
    engine = _engine(model_and_tokenizer)
    outputs = engine.generate(PROMPTS, Request(max_new_tokens=24), seed=0, progress=False)
    prompt, free = next((p, o[0]) for p, o in zip(PROMPTS, outputs) if len(o[0].text.split()) >= 4)  # it rambles on
    stop = " " + free.text.split()[2]
    stopped = engine.generate([prompt], Request(max_new_tokens=24, stop=(stop,)), seed=0, progress=False)[0][0]
    assert free.text.startswith(stopped.text) and stop not in stopped.text
    assert stopped.finished and stopped.num_tokens < free.num_tokens
