"""decoder.backend=vllm without vLLM or a GPU: the config checks, and the mapping from vLLM's outputs to
the framework's records through a stand-in `vllm` module shaped like the real one (RequestOutput /
CompletionOutput / Logprob, BeamSearchOutput / BeamSearchSequence). The last test runs the real thing
and is skipped unless vllm and a CUDA device are present."""
from __future__ import annotations

import dataclasses
import importlib
import os
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from framework import tiny, vllm_backend
from framework.bon import BoNConfig, BoNDecoder
from framework.config import to_validated
from framework.decoding import BeamConfig, BeamDecoder, GreedyConfig, GreedyDecoder, SampleConfig, SampleDecoder
from framework.errors import ConfigError

EOS = 1  # the tiny tokenizer's </s>


# ---------------------------------------------------------------------------- config checks
def test_backend_vllm_without_the_package_fails_validation_in_one_line(compose_cfg, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "vllm" else real_find_spec(name, *args))
    with pytest.raises(ConfigError) as error:
        to_validated(compose_cfg(["decoder=bon", "decoder.backend=vllm"]))
    assert str(error.value) == ("decoder.backend=vllm needs the vllm package and a CUDA GPU: pip install -e '.[vllm]' "
                                "(the vllm package is not installed)")


def test_backend_vllm_without_cuda_fails_validation_without_importing_vllm(compose_cfg, monkeypatch, tmp_path):
    # a `vllm` that can be found but fails if anything imports it
    (tmp_path / "vllm").mkdir()
    (tmp_path / "vllm" / "__init__.py").write_text("raise ImportError('vllm must not be imported here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^decoder\.backend=vllm needs the vllm package and a CUDA GPU: .*"
                                          r"\(torch sees no CUDA device\)$"):
        to_validated(compose_cfg(["decoder=greedy", "decoder.backend=vllm"]))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    run = to_validated(compose_cfg(["decoder=sample", "decoder.backend=vllm"]))  # found + CUDA: valid
    assert run.decoder.backend == "vllm" and "vllm" not in sys.modules


def test_default_backend_is_transformers_and_needs_nothing(compose_cfg):
    for decoder in ("greedy", "sample", "beam", "bon"):
        assert to_validated(compose_cfg([f"decoder={decoder}"])).decoder.backend == "transformers"


@pytest.mark.parametrize("override, key", [
    ("decoder.backend=vlm", "decoder.backend"),
    ("decoder.gpu_memory_utilization=0", "decoder.gpu_memory_utilization"),
    ("decoder.gpu_memory_utilization=1.5", "decoder.gpu_memory_utilization"),
])
def test_bad_backend_keys_name_the_key(compose_cfg, override, key):
    with pytest.raises(ConfigError, match="^" + key.replace(".", r"\.") + " must"):
        to_validated(compose_cfg(["decoder=greedy", override]))


def test_vllm_beam_search_needs_length_penalty_zero(monkeypatch):
    monkeypatch.setattr(vllm_backend, "unavailable_reason", lambda: None)
    with pytest.raises(ConfigError, match=r"^decoder\.length_penalty must be 0 with decoder\.backend=vllm"):
        BeamConfig(backend="vllm", num_beams=4, length_penalty=1.0).validate("decoder")
    BeamConfig(backend="vllm", num_beams=4, length_penalty=0.0).validate("decoder")
    BeamConfig(backend="vllm", num_beams=1, length_penalty=1.0).validate("decoder")  # width 1 is greedy
    BeamConfig(backend="transformers", num_beams=4, length_penalty=1.0).validate("decoder")


# ---------------------------------------------------------------------------- a stand-in vllm module
class FakeParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


@dataclasses.dataclass
class FakeEngineArgs:
    model: str = ""
    logprobs_mode: str = "raw_logprobs"


def logprobs_of(token_ids, values, distractor=None):
    """vLLM's per-step dicts: the chosen token's Logprob, plus (logprobs=1) the top token when it differs."""
    steps = []
    for token, value in zip(token_ids, values):
        step = {token: SimpleNamespace(logprob=value, rank=1)}
        if distractor is not None:
            step[distractor] = SimpleNamespace(logprob=-0.01, rank=1)
        steps.append(step)
    return steps


def completion(index, token_ids, values, finish_reason):
    return SimpleNamespace(index=index, text="<vLLM's own text, unused>", token_ids=tuple(token_ids),
                           cumulative_logprob=sum(values), logprobs=logprobs_of(token_ids, values, distractor=99),
                           finish_reason=finish_reason)


class FakeVllm:
    """Installs itself as `vllm`; `respond(prompt_token_ids, params_kwargs) -> list of completions`."""

    def __init__(self, respond=None, beams=None):
        self.engines: list = []
        self.respond, self.beams = respond, beams
        module = types.ModuleType("vllm")
        module.EngineArgs = FakeEngineArgs
        self.params_module = types.ModuleType("vllm.sampling_params")
        self.params_module.SamplingParams = self.params_module.BeamSearchParams = FakeParams
        module.sampling_params = self.params_module
        fake = self

        class LLM:
            def __init__(self, **kwargs):
                self.kwargs, self.calls, self.shut_down = kwargs, [], False
                self.llm_engine = SimpleNamespace(engine_core=SimpleNamespace(shutdown=self.shutdown))
                fake.engines.append(self)

            def shutdown(self):
                self.shut_down = True

            def generate(self, prompts, sampling_params, use_tqdm=True):
                self.calls.append(("generate", prompts, sampling_params))
                return [SimpleNamespace(prompt_token_ids=p["prompt_token_ids"],
                                        outputs=fake.respond(p["prompt_token_ids"], params.kwargs))
                        for p, params in zip(prompts, sampling_params)]

            def beam_search(self, prompts, params):
                self.calls.append(("beam_search", prompts, params))
                return [SimpleNamespace(sequences=fake.beams(p["prompt_token_ids"])) for p in prompts]

        module.LLM = LLM
        self.module = module


@pytest.fixture
def install(monkeypatch):
    def install_fake(**kwargs) -> FakeVllm:
        fake = FakeVllm(**kwargs)
        monkeypatch.setitem(sys.modules, "vllm", fake.module)
        monkeypatch.setitem(sys.modules, "vllm.sampling_params", fake.params_module)
        return fake
    return install_fake


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A tiny random policy saved as the launcher's policies are, and loaded back from its directory."""
    from transformers import AutoModelForCausalLM

    directory = tmp_path_factory.mktemp("policy")
    tokenizer = tiny.build_tokenizer()
    tiny.build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_positions=64,
                     seed=0).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory), AutoModelForCausalLM.from_pretrained(directory), tokenizer


PROMPTS = ["Ann has 3 pens.\n", "Kim has 7 cards.\n"]


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------------------- outputs -> records
def test_sample_maps_completions_to_candidates(install, saved_model):
    directory, model, tokenizer = saved_model
    twelve, answer = ids(tokenizer, "12"), ids(tokenizer, "#### 7")  # [137], [3, 128]
    by_prompt = {
        tuple(ids(tokenizer, PROMPTS[0])): [  # listed out of order: grouping follows `index`
            completion(1, answer, [-0.5, -0.75], "length"),
            completion(0, twelve + [EOS], [-1.0, -0.25], "stop"),
        ],
        tuple(ids(tokenizer, PROMPTS[1])): [
            completion(0, answer + [EOS], [-2.0, -0.5, -0.125], "stop"),
            completion(1, [EOS], [-3.0], "stop"),
        ],
    }
    fake = install(respond=lambda prompt, params: by_prompt[tuple(prompt)])
    decoder = SampleDecoder(SampleConfig(backend="vllm", samples_per_prompt=2, temperature=0.7, top_p=0.9,
                                         max_new_tokens=5), seed=10)
    results = decoder.decode(model, tokenizer, PROMPTS, progress=False)

    first, second = results
    assert [(c.text, c.token_ids, c.num_tokens, c.logprob, c.finished) for c in first.candidates] == [
        ("12", [137, EOS], 2, -1.25, True), ("#### 7", [3, 128], 2, -1.25, False)]
    assert [(c.text, c.token_ids, c.num_tokens, c.logprob, c.finished) for c in second.candidates] == [
        ("#### 7", [3, 128, EOS], 3, -2.625, True), ("", [EOS], 1, -3.0, True)]
    assert first.chosen == [0, 1] and second.chosen == [0, 1]  # `sample`: every sample is an answer

    (engine,) = fake.engines
    assert engine.kwargs == {"model": directory, "tokenizer": directory, "dtype": "float32", "seed": 10,
                             "gpu_memory_utilization": 0.5, "max_logprobs": 20, "logprobs_mode": "raw_logprobs"}
    ((kind, prompts, params),) = engine.calls
    assert kind == "generate"
    assert prompts == [{"prompt_token_ids": tokenizer(p)["input_ids"]} for p in PROMPTS]
    # each prompt its own seed, the stride being n: vLLM seeds a request's samples seed, seed + 1, ...
    assert [p.kwargs for p in params] == [
        {"n": 2, "max_tokens": 5, "logprobs": 1, "stop_token_ids": [EOS], "skip_special_tokens": True,
         "temperature": 0.7, "top_p": 0.9, "seed": seed} for seed in (10, 12)]
    assert engine.shut_down  # freed after decoding


def test_greedy_asks_for_temperature_zero_and_no_seed(install, saved_model):
    _, model, tokenizer = saved_model
    fake = install(respond=lambda prompt, params: [completion(0, [137, 137, 137], [-0.5, -0.5, -0.5], "length")])
    (result,) = GreedyDecoder(GreedyConfig(backend="vllm", max_new_tokens=3), seed=4).decode(
        model, tokenizer, PROMPTS[:1], progress=False)
    assert (result.candidates[0].num_tokens, result.candidates[0].logprob, result.candidates[0].finished) == (3, -1.5,
                                                                                                             False)
    assert result.chosen == [0]
    (params,) = fake.engines[0].calls[0][2]
    assert params.kwargs == {"n": 1, "max_tokens": 3, "logprobs": 1, "stop_token_ids": [EOS],
                             "skip_special_tokens": True, "temperature": 0.0}


def test_bon_samples_and_greedy_reference_share_one_engine(install, saved_model):
    _, model, tokenizer = saved_model

    def respond(prompt, params):
        if params["temperature"] == 0.0:
            return [completion(0, [137, EOS], [-0.25, -0.25], "stop")]
        return [completion(0, [3, EOS], [-2.0, -1.0], "stop"), completion(1, [128, EOS], [-0.5, -0.5], "stop"),
                completion(2, [137, EOS], [-0.25, -4.0], "stop")]

    fake = install(respond=respond)
    decoder = BoNDecoder(BoNConfig(backend="vllm", samples_per_prompt=3, selector="logprob", greedy_reference=True,
                                   max_new_tokens=4), seed=0)
    results = decoder.decode(model, tokenizer, PROMPTS, progress=False)
    assert [r.chosen for r in results] == [[1], [1]]  # log-probs -3.0, -1.0, -4.25
    assert [r.candidates[0].logprob for r in decoder.greedy_decoded] == [-0.5, -0.5]
    (engine,) = fake.engines  # one engine for both passes
    assert [call[0] for call in engine.calls] == ["generate", "generate"]
    assert [p.kwargs["n"] for p in engine.calls[1][2]] == [1, 1] and engine.shut_down


def test_beam_maps_the_top_beam_without_its_prompt(install, saved_model):
    directory, model, tokenizer = saved_model

    def beams(prompt):
        best = SimpleNamespace(tokens=list(prompt) + [3, 128, EOS], cum_logprob=-1.5, text="<prompt and all>")
        other = SimpleNamespace(tokens=list(prompt) + [137, 137, 137, 137], cum_logprob=-2.0, text="")
        return [best, other]

    fake = install(beams=beams)
    decoder = BeamDecoder(BeamConfig(backend="vllm", num_beams=12, length_penalty=0.0, max_new_tokens=4))
    results = decoder.decode(model, tokenizer, PROMPTS, progress=False)
    for result in results:
        (candidate,) = result.candidates
        assert (candidate.text, candidate.token_ids, candidate.num_tokens, candidate.logprob, candidate.finished) == (
            "#### 7", [3, 128, EOS], 3, -1.5, True)
    (engine,) = fake.engines
    assert engine.kwargs["max_logprobs"] == 24  # 2 x num_beams candidates per step
    ((kind, prompts, params),) = engine.calls
    assert kind == "beam_search" and prompts[1] == {"prompt_token_ids": tokenizer(PROMPTS[1])["input_ids"]}
    assert params.kwargs == {"beam_width": 12, "max_tokens": 4, "length_penalty": 0.0, "temperature": 0.0}


def test_beam_refuses_models_with_extra_stop_tokens_before_starting_an_engine(install, saved_model, monkeypatch):
    _, model, tokenizer = saved_model
    fake = install(beams=lambda prompt: [])
    monkeypatch.setattr(model.generation_config, "eos_token_id", [EOS, 5])
    with pytest.raises(ConfigError, match="stops only at the tokenizer's end-of-sequence token 1, but this model "
                                          r"also stops at \[5\]"):
        BeamDecoder(BeamConfig(backend="vllm", num_beams=2, length_penalty=0.0)).decode(model, tokenizer, PROMPTS)
    assert fake.engines == []


def test_older_vllm_without_logprobs_mode_is_held_to_its_v1_engine(install, saved_model, monkeypatch):
    _, model, tokenizer = saved_model
    fake = install(respond=lambda prompt, params: [completion(0, [EOS], [-1.0], "stop")])

    class OldEngineArgs:  # a plain class: only its signature is read
        def __init__(self, model: str = ""):
            self.model = model

    fake.module.EngineArgs = OldEngineArgs
    monkeypatch.setenv("VLLM_USE_V1", "0")
    decoder = GreedyDecoder(GreedyConfig(backend="vllm"))
    with pytest.raises(ConfigError, match="VLLM_USE_V1=0 selects vLLM's V0 engine"):
        decoder.decode(model, tokenizer, PROMPTS[:1], progress=False)
    monkeypatch.delenv("VLLM_USE_V1")
    decoder.decode(model, tokenizer, PROMPTS[:1], progress=False)
    assert "logprobs_mode" not in fake.engines[0].kwargs
    assert os.environ["VLLM_USE_V1"] == "1"  # monkeypatch restores the variable after the test


def test_engine_kwargs_follow_the_loaded_precision_and_beam_width(saved_model):
    from transformers import AutoModelForCausalLM

    directory, _, _ = saved_model
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16)
    assert vllm_backend.engine_kwargs(model, BeamConfig(num_beams=16, gpu_memory_utilization=0.3), 7, set()) == {
        "model": directory, "tokenizer": directory, "dtype": "bfloat16", "seed": 7, "gpu_memory_utilization": 0.3,
        "max_logprobs": 32}


# ---------------------------------------------------------------------------- where the weights are
def test_a_directory_without_config_json_is_refused(tmp_path):
    (tmp_path / "model.gguf").write_text("")
    model = SimpleNamespace(name_or_path=str(tmp_path), config=SimpleNamespace())
    with pytest.raises(ConfigError, match="has no config.json"):
        vllm_backend.model_directory(model)


def test_weights_check_passes_on_a_reload_and_catches_an_adapter_merged_at_load(saved_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    directory, model, _ = saved_model
    vllm_backend.check_same_weights(model, directory)
    vllm_backend.check_same_weights(AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16), directory)
    # what an adapter-only LoRA policy looks like once loaded: the base's name_or_path, other weights
    lora = LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False, task_type="CAUSAL_LM")
    merged = get_peft_model(AutoModelForCausalLM.from_pretrained(directory), lora).merge_and_unload()
    assert merged.name_or_path == directory
    with pytest.raises(ConfigError, match=r"differs from them \(model\.layers\.0\.self_attn\.q_proj\.weight\)"):
        vllm_backend.check_same_weights(merged, directory)


# ---------------------------------------------------------------------------- the real engine
def teacher_forced(model, prompt_ids: list[int], completion_ids: list[int]) -> float:
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + completion_ids], device=model.device)).logits.float()
    logprobs = torch.log_softmax(logits[0], dim=-1)
    return sum(logprobs[len(prompt_ids) + i - 1, token].item() for i, token in enumerate(completion_ids))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None,
                    reason="needs vllm and a CUDA device")
def test_real_vllm_logprobs_are_raw_temperature_one(saved_model):
    from transformers import AutoModelForCausalLM

    directory, _, tokenizer = saved_model
    model = AutoModelForCausalLM.from_pretrained(directory).to("cuda")
    decoders = [GreedyDecoder(GreedyConfig(backend="vllm", max_new_tokens=8, gpu_memory_utilization=0.3)),
                SampleDecoder(SampleConfig(backend="vllm", max_new_tokens=8, samples_per_prompt=3, temperature=0.5,
                                           top_p=0.9, gpu_memory_utilization=0.3), seed=1)]
    for decoder in decoders:
        for prompt, result in zip(PROMPTS, decoder.decode(model, tokenizer, PROMPTS, progress=False)):
            for candidate in result.candidates:
                expected = teacher_forced(model, tokenizer(prompt)["input_ids"], candidate.token_ids)
                assert candidate.logprob == pytest.approx(expected, abs=1e-2)
