"""`decoder.backend=vllm`: the greedy, sample, beam and bon decoders on a vLLM engine (optional, CUDA only).

Nothing here imports vllm at module level, and the decoders only import this module when a config
asks for the backend, so CPU installs never need the package. `require_available` is the config-time
check: it looks for the package without importing it and asks torch for a CUDA device.

What each decoder becomes (one `LLM.generate` call over all prompts; vLLM batches by its own memory
budget, so `prompts_per_batch` does not apply):
  greedy   SamplingParams(temperature=0)
  sample   SamplingParams(n=samples_per_prompt, temperature, top_p, seed), top-k/min-p/penalties off
  bon      as sample, then greedy on the same engine for the greedy reference
  beam     `LLM.beam_search` with length_penalty 0 only (see BeamConfig.checks and `check_decoder`)

Log-probabilities keep the framework's meaning, log pi(token | prefix) at temperature 1 before top-p:
the engine is built with `logprobs_mode="raw_logprobs"` (the log-softmax of the raw logits, before
temperature, penalties and top-k/top-p), and each request asks for the chosen token's log-prob, whose
sum over the generated tokens (end-of-sequence included) is the candidate's `logprob`. Prompts go in
as token ids from the policy's own tokenizer and texts come out of the same tokenizer, so both
backends see and report the same tokens.
"""
from __future__ import annotations

import gc
import importlib.util
import inspect
import logging
import os
from contextlib import contextmanager
from typing import Iterator

from framework.decoding import Candidate, Decoded, Decoder
from framework.errors import ConfigError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install -e '.[vllm]'"
# torch dtype name -> vLLM's `dtype` argument: vLLM runs the policy in the precision the launcher loaded it in
VLLM_DTYPES = {"torch.float32": "float32", "torch.bfloat16": "bfloat16", "torch.float16": "float16"}
# vLLM refuses requests for more log-probs per token than this engine setting (its default is 20)
DEFAULT_MAX_LOGPROBS = 20


# ---------------------------------------------------------------------------- availability (config time)
def unavailable_reason() -> str | None:
    """Why backend=vllm cannot run here, or None. Never imports vllm (find_spec only locates it)."""
    if importlib.util.find_spec("vllm") is None:
        return "the vllm package is not installed"
    import torch

    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    return None


def require_available(prefix: str = "decoder") -> None:
    reason = unavailable_reason()
    if reason is not None:
        raise ConfigError(f"{prefix}.backend=vllm needs the vllm package and a CUDA GPU: {INSTALL_HINT} ({reason})")


def check_decoder(decoder: Decoder, eos_ids: list[int], tokenizer) -> None:
    """Refuse what vLLM cannot do the way the transformers backend does, before an engine starts."""
    others = sorted(set(eos_ids) - {tokenizer.eos_token_id})
    if decoder.uses_beam_scores and others:
        # vLLM's beam search ends a beam only at the tokenizer's end-of-sequence token, while `generate`
        # (and the sampling decoders here) also stop at the generation config's other stop tokens.
        raise ConfigError(
            f"decoder.backend=vllm: vLLM's beam search stops only at the tokenizer's end-of-sequence token "
            f"{tokenizer.eos_token_id}, but this model also stops at {others}; use decoder.backend=transformers "
            f"for beam search with this model")


# ---------------------------------------------------------------------------- engine
def model_directory(model) -> str:
    """Where the loaded policy's weights are: transformers records the `from_pretrained` argument as
    `name_or_path`. Every model the framework trains or builds is a save_pretrained directory."""
    path = str(getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", ""))
    if not path:
        raise ConfigError("decoder.backend=vllm needs the policy's weights directory, and the loaded model does not "
                          "record one (name_or_path is empty); use decoder.backend=transformers")
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "config.json")):
        raise ConfigError(f"decoder.backend=vllm loads the policy from a Hugging Face directory, and {path} has no "
                          f"config.json (a GGUF model?); use decoder.backend=transformers for this model")
    return path  # a directory, or a hub name vLLM resolves from the Hugging Face cache


def check_same_weights(model, path: str) -> None:
    """vLLM reads the weights in `path`, not the model in memory: make sure they are the same. They are
    not when the loaded model was changed after loading, e.g. a LoRA adapter merged in at load time
    (`name_or_path` then names the base model's directory). Compares the first row of every tensor
    the directory and the model share: cheap (safetensors reads slices), and a merged low-rank update
    changes essentially every row of the matrices it targets."""
    import glob

    import torch
    from safetensors import safe_open

    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    parameters = dict(model.named_parameters())
    compared = 0
    for file in files:
        with safe_open(file, framework="pt") as weights:
            for name in weights.keys():
                stored = weights.get_slice(name)
                if name not in parameters or not stored.get_shape():
                    continue
                loaded = parameters[name].detach()[0:1].cpu()
                if not torch.equal(stored[0:1].to(loaded.dtype), loaded):
                    raise ConfigError(
                        f"decoder.backend=vllm would decode the weights stored in {path}, but the loaded policy "
                        f"differs from them ({name}): a LoRA adapter merged in at load time? Save merged weights "
                        f"(model.lora.checkpoint=merged) or use decoder.backend=transformers")
                compared += 1
    if not compared:
        log.warning("could not check that %s holds the loaded policy's weights (no shared safetensors tensor)", path)


def engine_kwargs(model, config, seed: int, engine_fields: set[str]) -> dict:
    """`vllm.LLM` arguments for decoding `model` under decoder `config`. `engine_fields`: the names
    vllm.EngineArgs accepts in the installed version."""
    dtype = VLLM_DTYPES.get(str(model.dtype))
    if dtype is None:
        raise ConfigError(f"decoder.backend=vllm: the policy is loaded in {model.dtype}, which vLLM does not run; "
                          f"use model.precision=fp32, bf16 or fp16")
    path = model_directory(model)
    kwargs = {
        "model": path, "tokenizer": path, "dtype": dtype, "seed": seed,
        "gpu_memory_utilization": config.gpu_memory_utilization,
        # beam search asks for 2 x num_beams candidates per step
        "max_logprobs": max(DEFAULT_MAX_LOGPROBS, 2 * getattr(config, "num_beams", 1)),
    }
    if "logprobs_mode" in engine_fields:
        kwargs["logprobs_mode"] = "raw_logprobs"  # the default today; pinned so a change of default cannot leak in
    return kwargs


class Engine:
    """An open `vllm.LLM`. `close` shuts it down and drops the only reference the framework keeps, so
    the GPU memory it took (weights, KV cache) is free for whatever runs next."""

    def __init__(self, llm):
        self.llm = llm

    def close(self) -> None:
        llm, self.llm = self.llm, None
        if llm is None:
            return
        # V1 runs the engine in a child process; shutting its client down ends it and frees its memory
        shutdown = getattr(getattr(getattr(llm, "llm_engine", None), "engine_core", None), "shutdown", None)
        if callable(shutdown):
            shutdown()
        del llm
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


@contextmanager
def open_engine(model, config, seed: int) -> Iterator[Engine]:
    """A vLLM engine on the policy `model` was loaded from, closed on exit."""
    import vllm

    kwargs = engine_kwargs(model, config, seed, set(inspect.signature(vllm.EngineArgs).parameters))
    if os.path.isdir(kwargs["model"]):
        check_same_weights(model, kwargs["model"])
    if "logprobs_mode" not in kwargs:
        # Older vLLM has no logprobs_mode; its V1 engine returns raw log-probs, its V0 engine returns them
        # after temperature and top-p. Require V1 rather than report the wrong quantity.
        if os.environ.get("VLLM_USE_V1") == "0":
            raise ConfigError("decoder.backend=vllm: VLLM_USE_V1=0 selects vLLM's V0 engine, whose log-probs are "
                              "taken after temperature/top-p; unset it or install a vLLM with logprobs_mode")
        os.environ["VLLM_USE_V1"] = "1"
    log.info("starting a vLLM engine on %s (%s, gpu_memory_utilization=%s)", kwargs["model"], kwargs["dtype"],
             kwargs["gpu_memory_utilization"])
    engine = Engine(vllm.LLM(**kwargs))
    try:
        yield engine
    finally:
        engine.close()


# ---------------------------------------------------------------------------- requests and outputs
def sampling_params(decoder: Decoder, eos_ids: list[int], prompt_index: int):
    """One prompt's SamplingParams. A sampled prompt gets its own seed, so results do not depend on how
    vLLM batches; vLLM gives the n samples of a request seeds seed, seed + 1, ..., hence the stride n."""
    from vllm.sampling_params import SamplingParams

    arguments = decoder.vllm_sampling()
    samples = decoder.outputs_per_prompt()
    if arguments.get("temperature", 1.0) > 0:
        arguments["seed"] = decoder.seed + prompt_index * samples
    return SamplingParams(n=samples, max_tokens=decoder.config.max_new_tokens, logprobs=1,
                          stop_token_ids=list(eos_ids), skip_special_tokens=True, **arguments)


def sequence_logprob(token_ids: list[int], step_logprobs) -> float:
    """Sum of the chosen tokens' log-probs; `step_logprobs[i]` maps token id -> vLLM Logprob at step i."""
    if step_logprobs is None or len(step_logprobs) != len(token_ids):
        raise RuntimeError("vLLM returned no log-prob for some generated token (were log-probs requested?)")
    return float(sum(step[token].logprob for token, step in zip(token_ids, step_logprobs)))


def make_candidate(token_ids: list[int], logprob: float, eos_ids: list[int], tokenizer) -> Candidate:
    # finished and text as the transformers path defines them: ends with an end-of-sequence id; the
    # policy tokenizer's decoding without special tokens
    finished = bool(token_ids) and token_ids[-1] in eos_ids
    return Candidate(tokenizer.decode(token_ids, skip_special_tokens=True), len(token_ids), logprob, finished,
                     token_ids)


def candidates_from_request(request_output, samples: int, eos_ids: list[int], tokenizer) -> list[Candidate]:
    """The candidates of one vLLM RequestOutput, in sample order."""
    completions = sorted(request_output.outputs, key=lambda completion: completion.index)
    if len(completions) != samples:
        raise RuntimeError(f"vLLM returned {len(completions)} completions for a prompt, expected {samples}")
    candidates = []
    for completion in completions:
        token_ids = list(completion.token_ids)
        candidates.append(make_candidate(token_ids, sequence_logprob(token_ids, completion.logprobs), eos_ids,
                                         tokenizer))
    return candidates


def candidate_from_beam(sequence, prompt_length: int, eos_ids: list[int], tokenizer) -> Candidate:
    """A vLLM BeamSearchSequence: its tokens start with the prompt's; cum_logprob sums the generated ones."""
    token_ids = list(sequence.tokens[prompt_length:])
    return make_candidate(token_ids, float(sequence.cum_logprob), eos_ids, tokenizer)


def decode(decoder: Decoder, engine: Engine, eos_ids: list[int], tokenizer, prompts: list[str],
           progress: bool = True) -> list[Decoded]:
    """Decode `prompts` with `decoder`'s settings on `engine`; same records as `Decoder.decode`."""
    from vllm.sampling_params import BeamSearchParams

    check_decoder(decoder, eos_ids, tokenizer)
    if not prompts:
        return []
    prompt_ids = tokenizer(list(prompts), return_token_type_ids=False)["input_ids"]
    requests = [{"prompt_token_ids": list(ids)} for ids in prompt_ids]  # vLLM's TokensPrompt
    if decoder.uses_beam_scores:
        config = decoder.config
        params = BeamSearchParams(beam_width=config.num_beams, max_tokens=config.max_new_tokens,
                                  length_penalty=config.length_penalty, temperature=0.0)
        outputs = engine.llm.beam_search(requests, params)
        # sequences come best first; the top beam is the answer, as with num_return_sequences=1
        per_prompt = [[candidate_from_beam(output.sequences[0], len(ids), eos_ids, tokenizer)]
                      for output, ids in zip(outputs, prompt_ids)]
    else:
        params = [sampling_params(decoder, eos_ids, index) for index in range(len(prompts))]
        outputs = engine.llm.generate(requests, params, use_tqdm=progress)
        per_prompt = [candidates_from_request(output, decoder.outputs_per_prompt(), eos_ids, tokenizer)
                      for output in outputs]
    if len(per_prompt) != len(prompts):
        raise RuntimeError(f"vLLM returned {len(per_prompt)} results for {len(prompts)} prompts")
    return [Decoded(candidates, decoder.choose(candidates)) for candidates in per_prompt]
