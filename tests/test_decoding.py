"""Decoders on a small random model: shapes, batching, and log-probs that match teacher forcing."""
import pytest
import torch

from conftest import PROMPTS
from framework.decoding import BeamConfig, BeamDecoder, GreedyConfig, GreedyDecoder, SampleConfig, SampleDecoder
from framework.decoding import valid_token_mask





def teacher_forced_logprob(model, tokenizer, prompt: str, completion_ids: list[int]) -> float:
    prompt_ids = tokenizer(prompt)["input_ids"]
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits.float(), dim=-1)
    return sum(logprobs[0, len(prompt_ids) + i - 1, token].item() for i, token in enumerate(completion_ids))


@pytest.mark.parametrize("decoder", [
    GreedyDecoder(GreedyConfig(max_new_tokens=12, prompts_per_batch=2)),
    SampleDecoder(SampleConfig(max_new_tokens=12, prompts_per_batch=2, samples_per_prompt=3, temperature=0.7, top_p=0.9)),
    BeamDecoder(BeamConfig(max_new_tokens=12, prompts_per_batch=2, num_beams=3)),
    BeamDecoder(BeamConfig(max_new_tokens=12, prompts_per_batch=2, num_beams=3, length_penalty=0.5)),
], ids=["greedy", "sample", "beam", "beam-length-penalty"])
def test_sequence_logprobs_equal_teacher_forcing(model_and_tokenizer, decoder):
    model, tokenizer = model_and_tokenizer
    results = decoder.decode(model, tokenizer, PROMPTS, progress=False)
    assert len(results) == len(PROMPTS)
    for prompt, result in zip(PROMPTS, results):
        assert len(result.candidates) == decoder.outputs_per_prompt()
        for candidate in result.candidates:
            ids = candidate.token_ids
            assert len(ids) == candidate.num_tokens and (ids[-1] == tokenizer.eos_token_id) == candidate.finished
            assert tokenizer.decode(ids, skip_special_tokens=True) == candidate.text
            # temperature/top-p shape the sampling, never the reported log pi (temperature 1)
            assert candidate.logprob == pytest.approx(teacher_forced_logprob(model, tokenizer, prompt, ids), abs=1e-3)


def test_greedy_is_independent_of_batching(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    batched = GreedyDecoder(GreedyConfig(max_new_tokens=10, prompts_per_batch=8)).decode(model, tokenizer, PROMPTS, False)
    single = GreedyDecoder(GreedyConfig(max_new_tokens=10, prompts_per_batch=1)).decode(model, tokenizer, PROMPTS, False)
    assert [r.candidates[0].text for r in batched] == [r.candidates[0].text for r in single]


def test_temperature_is_applied_while_logprobs_stay_at_temperature_one(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    greedy = GreedyDecoder(GreedyConfig(max_new_tokens=10)).decode(model, tokenizer, PROMPTS, False)
    cold = SampleDecoder(SampleConfig(max_new_tokens=10, temperature=1e-4, samples_per_prompt=2)).decode(
        model, tokenizer, PROMPTS, False)
    for g, c in zip(greedy, cold):
        assert all(candidate.text == g.candidates[0].text for candidate in c.candidates)
        assert c.candidates[0].logprob == pytest.approx(g.candidates[0].logprob, abs=1e-4)


def test_sampling_is_seeded(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    config = SampleConfig(max_new_tokens=10, samples_per_prompt=2)
    first = SampleDecoder(config, seed=1).decode(model, tokenizer, PROMPTS, False)
    again = SampleDecoder(config, seed=1).decode(model, tokenizer, PROMPTS, False)
    assert [c.text for r in first for c in r.candidates] == [c.text for r in again for c in r.candidates]


def test_beam_width_one_equals_greedy(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    greedy = GreedyDecoder(GreedyConfig(max_new_tokens=10)).decode(model, tokenizer, PROMPTS, False)
    beam = BeamDecoder(BeamConfig(max_new_tokens=10, num_beams=1)).decode(model, tokenizer, PROMPTS, False)
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
