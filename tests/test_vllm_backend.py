"""engine=vllm without vLLM: the config-time checks, and `VLLMEngine` against a stand-in `vllm` module shaped
like the real one (LLM, EngineArgs, SamplingParams, RequestOutput / CompletionOutput / Logprob,
BeamSearchOutput / BeamSearchSequence). tests/test_vllm_engine.py runs the real vLLM (the vLLM test tier)."""
from __future__ import annotations

import dataclasses
import importlib
import importlib.machinery
import shutil
import sys
import types
from types import SimpleNamespace

import pytest

from framework import tiny, vllm_backend
from framework.config import to_validated
from framework.errors import ConfigError
from framework.generation import Request, VLLMEngineConfig, open_engine
from framework.models import ModelHandle, Runtime

EOS = 1  # the tiny tokenizer's </s>
CPU = Runtime("cpu", "fp32")


def pretend_vllm_is_missing(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "vllm" else real_find_spec(name, *args))


# ---------------------------------------------------------------------------- config checks
def test_engine_vllm_without_the_package_fails_validation_in_one_line_naming_engine(compose_cfg, monkeypatch):
    pretend_vllm_is_missing(monkeypatch)
    with pytest.raises(ConfigError) as error:
        to_validated(compose_cfg(["engine=vllm"]))
    message = str(error.value)
    assert "\n" not in message and message.startswith("engine=vllm needs the vllm package: pip install -e '.[vllm]'")
    assert message.endswith("(the vllm package is not installed)")


def test_engine_vllm_validates_without_importing_vllm(compose_cfg, monkeypatch, tmp_path):
    # a `vllm` that can be found but fails if anything imports it
    (tmp_path / "vllm").mkdir()
    (tmp_path / "vllm" / "__init__.py").write_text("raise ImportError('vllm must not be imported here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "vllm", raising=False)  # the vLLM tier's environment may have imported it
    importlib.invalidate_caches()
    run = to_validated(compose_cfg(["engine=vllm", "decoder=sample"]))
    assert run.engine.name == "vllm" and "vllm" not in sys.modules


def test_default_engine_is_transformers_and_needs_no_vllm(compose_cfg, monkeypatch):
    pretend_vllm_is_missing(monkeypatch)
    for decoder in ("greedy", "sample", "beam", "bon"):
        assert to_validated(compose_cfg([f"decoder={decoder}"])).engine.name == "transformers"


@pytest.mark.parametrize("override, key", [
    ("engine.gpu_memory_utilization=0", "engine.gpu_memory_utilization"),
    ("engine.gpu_memory_utilization=1.5", "engine.gpu_memory_utilization"),
    ("engine.tensor_parallel_size=0", "engine.tensor_parallel_size"),
    ("engine.max_model_len=0", "engine.max_model_len"),
    ("engine.dtype=float8", "engine.dtype"),
    ("engine.per_request_seed=sometimes", "engine.per_request_seed"),
])
def test_bad_engine_values_name_the_key(compose_cfg, monkeypatch, override, key):
    pretend_vllm_is_missing(monkeypatch)  # the value checks come before the package check
    with pytest.raises(ConfigError, match="^" + key.replace(".", r"\.") + " must"):
        to_validated(compose_cfg(["engine=vllm", override]))


def test_misspelt_engine_key_names_the_key_and_the_close_one(compose_cfg):
    with pytest.raises(ConfigError, match=r"^engine\.gpu_memory_utilisation: unknown key \(did you mean "
                                          r"engine\.gpu_memory_utilization\?\); engine=vllm has no such key"):
        to_validated(compose_cfg(["engine=vllm", "+engine.gpu_memory_utilisation=0.3"]))


def test_beam_search_with_a_length_penalty_is_refused_at_config_time(compose_cfg, monkeypatch):
    monkeypatch.setattr(vllm_backend, "unavailable_reason", lambda: None)
    with pytest.raises(ConfigError, match=r"^decoder\.length_penalty must be 0 for beam search with engine=vllm"):
        to_validated(compose_cfg(["engine=vllm", "decoder=beam", "decoder.length_penalty=1.0"]))
    to_validated(compose_cfg(["engine=vllm", "decoder=beam", "decoder.length_penalty=0"]))
    to_validated(compose_cfg(["engine=vllm", "decoder=beam", "decoder.num_beams=1", "decoder.length_penalty=1.0"]))
    to_validated(compose_cfg(["decoder=beam", "decoder.length_penalty=1.0"]))  # transformers: any penalty


def test_lora_adapter_checkpoints_are_refused_at_config_time(compose_cfg, monkeypatch):
    monkeypatch.setattr(vllm_backend, "unavailable_reason", lambda: None)
    lora = ["model=hf", "model.name_or_path=/nowhere", "model.lora.enabled=true"]
    with pytest.raises(ConfigError, match=r"^engine vllm needs full weights on disk; with LoRA set "
                                          r"model\.lora\.checkpoint=merged"):
        to_validated(compose_cfg(["engine=vllm", *lora, "model.lora.checkpoint=adapter"]))
    to_validated(compose_cfg(["engine=vllm", *lora, "model.lora.checkpoint=merged"]))


def test_gguf_without_dequantising_is_refused_at_config_time(compose_cfg, monkeypatch):
    monkeypatch.setattr(vllm_backend, "unavailable_reason", lambda: None)
    with pytest.raises(ConfigError, match=r"^engine vllm cannot read GGUF here; set model\.cache_dequantized=true"):
        to_validated(compose_cfg(["engine=vllm", "model=smollm2_gguf", "model.cache_dequantized=false"]))
    to_validated(compose_cfg(["engine=vllm", "model=smollm2_gguf"]))


# ---------------------------------------------------------------------------- where the weights are
def test_an_adapter_only_handle_is_refused_before_starting_an_engine(tmp_path):
    adapter = ModelHandle(str(tmp_path), {}, adapter_base=ModelHandle("base", {}))
    with pytest.raises(ConfigError, match="this model is a LoRA adapter; set model.lora.checkpoint=merged"):
        vllm_backend.model_directory(adapter)


def test_a_directory_without_config_json_is_refused(tmp_path):
    (tmp_path / "model.gguf").write_text("")
    with pytest.raises(ConfigError, match="has no config.json"):
        vllm_backend.model_directory(ModelHandle(str(tmp_path), {}))


# ---------------------------------------------------------------------------- a stand-in vllm module
class FakeParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


@dataclasses.dataclass
class FakeEngineArgs:  # only its signature is read: the fields vllm.EngineArgs has
    model: str = ""
    tokenizer: str = ""
    dtype: str = "auto"
    seed: int = 0
    tensor_parallel_size: int = 1
    enforce_eager: bool = False
    max_logprobs: int = 20
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None
    logprobs_mode: str = "raw_logprobs"


def logprobs_of(token_ids, values, distractor=99):
    """vLLM's per-step dicts: the chosen token's Logprob, plus (logprobs=1) the top token when it differs."""
    return [{token: SimpleNamespace(logprob=value, rank=2), distractor: SimpleNamespace(logprob=-0.01, rank=1)}
            for token, value in zip(token_ids, values)]


def completion(index, token_ids, values):
    return SimpleNamespace(index=index, text="<vLLM's own text, unused>", token_ids=tuple(token_ids),
                           cumulative_logprob=sum(values), logprobs=logprobs_of(token_ids, values))


class FakeVllm:
    """A `vllm` module; `respond(prompt_token_ids, params kwargs) -> completions`, `beams(prompt_token_ids) ->
    sequences` answer its LLM's generate and beam_search."""

    def __init__(self, respond=None, beams=None):
        self.engines: list = []
        self.respond, self.beams = respond, beams
        module = types.ModuleType("vllm")
        module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)  # find_spec answers from sys.modules
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
def policy(tmp_path_factory):
    """A tiny random policy saved as the launcher's stages save one, as a handle on its directory."""
    directory = tmp_path_factory.mktemp("policy")
    tokenizer = tiny.build_tokenizer()
    tiny.build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_positions=64,
                     seed=0).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return ModelHandle(str(directory), {"base": "test"})


PROMPTS = ["Ann has 3 pens.\n", "Kim has 7 cards.\n"]


def ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def rows(candidates):
    return [(c.text, c.token_ids, c.num_tokens, c.logprob, c.finished) for c in candidates]


# ---------------------------------------------------------------------------- request -> SamplingParams
def test_sampling_gives_each_prompt_seed_plus_key_times_n_when_per_request_seeds_are_on(install, policy):
    fake = install(respond=lambda prompt, params: [completion(i, [EOS], [-1.0]) for i in range(params["n"])])
    request = Request(max_new_tokens=5, samples_per_prompt=3, temperature=0.7, top_p=0.9)
    with open_engine(policy, VLLMEngineConfig(per_request_seed="on"), CPU, seed=10) as engine:
        engine.generate(PROMPTS, request, seed=10, keys=[4, 9])
    ((kind, prompts, params),) = fake.engines[0].calls
    assert kind == "generate"
    # vLLM seeds a request's n samples seed, seed + 1, ...: a stride of n keeps prompts' seeds apart
    assert [p.kwargs for p in params] == [
        {"n": 3, "max_tokens": 5, "logprobs": 1, "stop_token_ids": [EOS], "skip_special_tokens": True,
         "temperature": 0.7, "top_p": 0.9, "seed": seed} for seed in (10 + 4 * 3, 10 + 9 * 3)]


def test_sampling_without_keys_seeds_prompts_by_position(install, policy):
    fake = install(respond=lambda prompt, params: [completion(i, [EOS], [-1.0]) for i in range(params["n"])])
    with open_engine(policy, VLLMEngineConfig(per_request_seed="on"), CPU, seed=3) as engine:
        engine.generate(PROMPTS, Request(max_new_tokens=5, samples_per_prompt=2, temperature=1.0), seed=3)
    assert [p.kwargs["seed"] for p in fake.engines[0].calls[0][2]] == [3, 5]


@pytest.mark.parametrize("setting, runtime, per_request", [
    ("off", Runtime("cuda", "bf16"), False), ("auto", CPU, False), ("auto", Runtime("cuda", "bf16"), True),
    ("on", CPU, True)])
def test_per_request_seeds_follow_the_setting_and_auto_means_on_a_gpu_only(install, policy, setting, runtime,
                                                                         per_request):
    fake = install(respond=lambda prompt, params: [completion(0, [EOS], [-1.0])])
    with open_engine(policy, VLLMEngineConfig(per_request_seed=setting), runtime, seed=7) as engine:
        engine.generate(PROMPTS[:1], Request(max_new_tokens=5, temperature=1.0), seed=7)
    (params,) = fake.engines[0].calls[0][2]
    assert ("seed" in params.kwargs) is per_request
    assert fake.engines[0].kwargs["seed"] == 7  # the engine's own seed: always the run's


def test_greedy_asks_for_temperature_zero_one_completion_and_no_seed(install, policy):
    fake = install(respond=lambda prompt, params: [completion(0, [137, 137, 137], [-0.5, -0.5, -0.5])])
    with open_engine(policy, VLLMEngineConfig(per_request_seed="on"), CPU, seed=4) as engine:
        ((candidate,),) = engine.generate(PROMPTS[:1], Request(max_new_tokens=3), seed=4)
    (params,) = fake.engines[0].calls[0][2]
    assert params.kwargs == {"n": 1, "max_tokens": 3, "logprobs": 1, "stop_token_ids": [EOS],
                             "skip_special_tokens": True, "temperature": 0.0}
    assert (candidate.num_tokens, candidate.logprob, candidate.finished) == (3, -1.5, False)


def test_prompts_go_in_as_the_policy_tokenizers_ids(install, policy):
    fake = install(respond=lambda prompt, params: [completion(0, [EOS], [-1.0])])
    tokenizer = policy.load_tokenizer()
    with open_engine(policy, VLLMEngineConfig(), CPU, seed=0) as engine:
        engine.generate(PROMPTS, Request(max_new_tokens=2), seed=0)
    assert fake.engines[0].calls[0][1] == [{"prompt_token_ids": tokenizer(p)["input_ids"]} for p in PROMPTS]


def test_stop_tokens_are_the_generation_configs_and_the_tokenizers(install, policy, tmp_path):
    from transformers import GenerationConfig

    directory = tmp_path / "policy"
    shutil.copytree(policy.path, directory)
    GenerationConfig(eos_token_id=[5, 7]).save_pretrained(directory)
    fake = install(respond=lambda prompt, params: [completion(0, [7], [-1.0])])
    with open_engine(ModelHandle(str(directory), {}), VLLMEngineConfig(), CPU, seed=0) as engine:
        ((candidate,),) = engine.generate(PROMPTS[:1], Request(max_new_tokens=2), seed=0)
    assert fake.engines[0].calls[0][2][0].kwargs["stop_token_ids"] == [5, 7, EOS]
    assert candidate.finished  # any of them ends a sequence, as in the transformers engine


# ---------------------------------------------------------------------------- outputs -> Candidates
def test_completions_become_candidates_with_summed_logprobs_finished_flags_and_the_policys_text(install, policy):
    tokenizer = policy.load_tokenizer()
    twelve, answer = ids(tokenizer, "12"), ids(tokenizer, "#### 7")
    by_prompt = {
        tuple(tokenizer(PROMPTS[0])["input_ids"]): [  # listed out of order: grouping follows `index`
            completion(1, answer, [-0.5, -0.75]),
            completion(0, twelve + [EOS], [-1.0, -0.25]),
        ],
        tuple(tokenizer(PROMPTS[1])["input_ids"]): [
            completion(0, answer + [EOS], [-2.0, -0.5, -0.125]),
            completion(1, [EOS], [-3.0]),
        ],
    }
    fake = install(respond=lambda prompt, params: by_prompt[tuple(prompt)])
    with open_engine(policy, VLLMEngineConfig(), CPU, seed=10) as engine:
        first, second = engine.generate(PROMPTS, Request(max_new_tokens=5, samples_per_prompt=2, temperature=0.7),
                                        seed=10, progress=False)
    # the sum of the chosen tokens' log-probs (not the distractor's), EOS counted, text without it
    assert rows(first) == [("12", [*twelve, EOS], 2, -1.25, True), ("#### 7", answer, 2, -1.25, False)]
    assert rows(second) == [("#### 7", [*answer, EOS], 3, -2.625, True), ("", [EOS], 1, -3.0, True)]
    assert fake.engines[0].shut_down  # closed on leaving the block


def test_a_missing_logprob_or_completion_is_an_error_not_a_wrong_record(install, policy):
    install(respond=lambda prompt, params: [SimpleNamespace(index=0, token_ids=(5, EOS), logprobs=None)])
    with open_engine(policy, VLLMEngineConfig(), CPU, seed=0) as engine:
        with pytest.raises(RuntimeError, match="no log-prob"):
            engine.generate(PROMPTS[:1], Request(max_new_tokens=2), seed=0)
    install(respond=lambda prompt, params: [completion(0, [EOS], [-1.0])])
    with open_engine(policy, VLLMEngineConfig(), CPU, seed=0) as engine:
        with pytest.raises(RuntimeError, match="returned 1 completions for a prompt, expected 2"):
            engine.generate(PROMPTS[:1], Request(max_new_tokens=2, samples_per_prompt=2, temperature=1.0), seed=0)


def test_no_prompts_need_no_call(install, policy):
    fake = install(respond=None)
    with open_engine(policy, VLLMEngineConfig(), CPU, seed=0) as engine:
        assert engine.generate([], Request(max_new_tokens=2), seed=0) == []
    assert fake.engines[0].calls == []


# ---------------------------------------------------------------------------- beam search
def test_beam_takes_the_top_beam_without_its_prompt(install, policy):
    tokenizer = policy.load_tokenizer()
    answer = ids(tokenizer, "#### 7")

    def beams(prompt):  # vLLM's sequences hold the prompt too, best first
        return [SimpleNamespace(tokens=[*prompt, *answer, EOS], cum_logprob=-1.5, text="<prompt and all>"),
                SimpleNamespace(tokens=[*prompt, 137, 137], cum_logprob=-2.0, text="")]

    fake = install(beams=beams)
    with open_engine(policy, VLLMEngineConfig(), CPU, seed=0) as engine:
        results = engine.generate(PROMPTS, Request(max_new_tokens=4, num_beams=3, length_penalty=0.0), seed=0)
    assert [rows(candidates) for candidates in results] == [[("#### 7", [*answer, EOS], 3, -1.5, True)]] * 2
    ((kind, prompts, params),) = fake.engines[0].calls
    assert kind == "beam_search" and prompts[1] == {"prompt_token_ids": tokenizer(PROMPTS[1])["input_ids"]}
    assert params.kwargs == {"beam_width": 3, "max_tokens": 4, "length_penalty": 0.0, "temperature": 0.0}


def test_beam_with_a_length_penalty_is_refused_before_generating(install, policy):
    fake = install(beams=lambda prompt: [])
    with open_engine(policy, VLLMEngineConfig(), CPU, seed=0) as engine:
        with pytest.raises(ConfigError, match="beam search needs decoder.length_penalty=0"):
            engine.generate(PROMPTS, Request(max_new_tokens=4, num_beams=2, length_penalty=1.0), seed=0)
    assert fake.engines[0].calls == []


def test_beam_refuses_models_with_extra_stop_tokens(install, policy, tmp_path):
    from transformers import GenerationConfig

    directory = tmp_path / "policy"
    shutil.copytree(policy.path, directory)
    GenerationConfig(eos_token_id=[EOS, 5]).save_pretrained(directory)
    fake = install(beams=lambda prompt: [])
    with open_engine(ModelHandle(str(directory), {}), VLLMEngineConfig(), CPU, seed=0) as engine:
        with pytest.raises(ConfigError, match="stops only at the tokenizer's end-of-sequence token 1, but this model "
                                              r"also stops at \[5\]"):
            engine.generate(PROMPTS, Request(max_new_tokens=4, num_beams=2, length_penalty=0.0), seed=0)
    assert fake.engines[0].calls == []


# ---------------------------------------------------------------------------- the engine's arguments
def test_engine_arguments_follow_the_run_precision_and_its_memory_share(install, policy):
    fake = install(respond=None)
    with open_engine(policy, VLLMEngineConfig(gpu_memory_utilization=0.3), Runtime("cuda", "bf16"), seed=7):
        pass
    with open_engine(policy, VLLMEngineConfig(dtype="float16", max_model_len=256, enforce_eager=True), CPU, seed=1):
        pass
    gpu, cpu = (engine.kwargs for engine in fake.engines)
    assert gpu == {"model": policy.path, "tokenizer": policy.path, "dtype": "bfloat16", "seed": 7,
                   "tensor_parallel_size": 1, "enforce_eager": False, "max_logprobs": 20,
                   "gpu_memory_utilization": 0.3, "logprobs_mode": "raw_logprobs"}
    assert cpu == {"model": policy.path, "tokenizer": policy.path, "dtype": "float16", "seed": 1,
                   "tensor_parallel_size": 1, "enforce_eager": True, "max_logprobs": 20, "max_model_len": 256,
                   "gpu_memory_utilization": 0.5, "logprobs_mode": "raw_logprobs"}  # on a CPU: of its memory


def test_arguments_the_installed_vllm_lacks_are_left_out(install, policy):
    fake = install(respond=None)

    class OlderEngineArgs:  # a plain class: only its signature is read
        def __init__(self, model: str = "", seed: int = 0):
            pass

    fake.module.EngineArgs = OlderEngineArgs
    with open_engine(policy, VLLMEngineConfig(), CPU, seed=2):
        pass
    assert fake.engines[0].kwargs == {"model": policy.path, "tokenizer": policy.path, "seed": 2}


def test_the_engine_is_shut_down_when_the_block_raises(install, policy):
    fake = install(respond=None)
    with pytest.raises(KeyError):
        with open_engine(policy, VLLMEngineConfig(), CPU, seed=0):
            raise KeyError("a stage failed")
    assert fake.engines[0].shut_down
