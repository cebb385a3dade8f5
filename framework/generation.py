"""One generation engine for every stage that generates: the decoders, the sampled set, the rationale set,
first-pit exploration. A stage asks an `Engine` for completions (text, token ids, log-probs) of its prompts
under a `Request` (those types: framework/engine.py); `engine=transformers` (default) or `engine=vllm`
(framework/vllm_backend.py) selects the engine (conf/engine/).

    with open_engine(model_handle, settings.engine, runtime) as engine:
        completions = engine.generate(prompts, Request(max_new_tokens=512, samples_per_prompt=4, temperature=1.0),
                                      seed=seed, keys=problem_ids)

Sampling is counter-based on the transformers engine: each sample's randomness is a pure function of (the
seed, the prompt's key, the sample's index, the step), through an exact Gumbel-max sampler (argmax of the
temperature- and top-p-warped logits plus Gumbel noise). So a prompt's samples do not depend on which
prompts share its batch, on how many processes split the work, or on where an interrupted stage resumed:
`generate_sharded` writes each finished batch as a shard, splits batches across processes and skips the
shards a killed run already wrote. Greedy (temperature 0) and beam search draw no noise.

Log-probabilities are log pi(token | prefix) at temperature 1, read from the logits `generate` computes
anyway (no second pass), before any warper. The counter hash is written here because no library offers a
per-row, batch-independent sampler for `generate`.
"""
from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch
from tqdm.auto import tqdm

from framework import distributed
from framework.config import EngineConfig, register_schema, require
from framework.engine import Candidate, Engine, Request  # the engines' shared types; stages import them from here

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- engine configs
@dataclass
class TransformersEngineConfig(EngineConfig):
    name: str = "transformers"
    static_cache: bool = False  # transformers' static KV cache (with compile: fewer recompilations)
    compile: bool = False  # torch.compile the forward pass used by `generate`


@dataclass
class VLLMEngineConfig(EngineConfig):
    name: str = "vllm"
    gpu_memory_utilization: float = 0.5  # fraction of the whole GPU the engine may take (training shares it); on a CPU, of its memory
    tensor_parallel_size: int = 1
    max_model_len: int | None = None  # null: the model's
    dtype: str = "auto"  # auto: the run's precision (model.precision)
    enforce_eager: bool = False  # true: no CUDA graphs (slower; less memory, faster start)
    per_request_seed: str = "auto"  # auto: on a GPU (samples independent of batching); off on CPU, where vLLM refuses it

    def checks(self, prefix: str) -> None:
        require(0 < self.gpu_memory_utilization <= 1, f"{prefix}.gpu_memory_utilization", "must be in (0, 1]",
                self.gpu_memory_utilization)
        require(self.tensor_parallel_size >= 1, f"{prefix}.tensor_parallel_size", "must be >= 1",
                self.tensor_parallel_size)
        require(self.max_model_len is None or self.max_model_len >= 1, f"{prefix}.max_model_len", "must be >= 1 or null",
                self.max_model_len)
        require(self.dtype in ("auto", "float32", "bfloat16", "float16"), f"{prefix}.dtype",
                "must be one of auto, float32, bfloat16, float16", self.dtype)
        require(self.per_request_seed in ("auto", "on", "off"), f"{prefix}.per_request_seed",
                "must be one of auto, on, off", self.per_request_seed)
        from framework import vllm_backend  # never imports vllm itself

        vllm_backend.require_available(prefix)


register_schema("engine", "transformers", TransformersEngineConfig)
register_schema("engine", "vllm", VLLMEngineConfig)


# ---------------------------------------------------------------------------- counter-based sampling
_MASK = 0xFFFFFFFF


def hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (Wellons' lowbias32) on int64 tensors holding values in [0, 2^32). Products
    overflow int64 and wrap; only their low 32 bits are kept, which wrapping leaves exact."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK
    return x ^ (x >> 16)


def hash32_int(x: int) -> int:
    """`hash32` on one Python int (the reference the tensor version is tested against)."""
    x &= _MASK
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK
    return x ^ (x >> 16)


def row_state(seed: int, key: int, sample: int) -> int:
    """The 32-bit state of one sample's noise stream."""
    return hash32_int(hash32_int(hash32_int(seed & _MASK) ^ (key & _MASK)) ^ hash32_int(sample + 0x9E3779B9))


def counter_uniform(states: torch.Tensor, step: int, vocabulary: int) -> torch.Tensor:
    """[rows, vocabulary] uniforms in (0, 1), float64: a function of each row's state, the step and the token."""
    step_states = hash32(states ^ hash32_int(step + 0x632BE5AB))
    tokens = (torch.arange(vocabulary, device=states.device, dtype=torch.int64) * 0x27D4EB2F) & _MASK
    bits = hash32(step_states[:, None] ^ tokens[None, :])
    return (bits.double() + 0.5) / 4294967296.0


class GumbelMaxSampler:
    """Logits processor, last in line: adds Gumbel noise to the warped scores, so that the argmax `generate`
    takes in its greedy mode is an exact sample from softmax(warped scores) (Gumbel-max). The noise of row r
    at step t comes from `counter_uniform(states[r], t)`."""

    def __init__(self, states: list[int], prompt_width: int, device):
        self.states = torch.tensor(states, dtype=torch.int64, device=device)
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_width
        uniform = counter_uniform(self.states, step, scores.shape[-1])
        gumbel = -torch.log(-torch.log(uniform))
        return (scores.double() + gumbel).to(scores.dtype)


# ---------------------------------------------------------------------------- the transformers engine
class TokenLogprobRecorder:
    """Records log pi(token) of every generated token from the raw logits, one step behind: the token
    chosen at step t is only known (as input_ids[:, -1]) when step t+1 calls. Must run before any
    warper, so the engine passes temperature/top-p/noise as processors after it."""

    def __init__(self):
        self.previous: torch.Tensor | None = None  # log-softmax of the last step's raw logits
        self.columns: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.previous is not None:
            self.columns.append(self.previous.gather(1, input_ids[:, -1:]))
        self.previous = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def token_logprobs(self, generated: torch.Tensor) -> torch.Tensor:
        """[rows, steps] log-probs of `generated` (the new tokens of the finished `generate` call)."""
        if self.previous is not None and len(self.columns) < generated.shape[1]:
            step = len(self.columns)
            self.columns.append(self.previous.gather(1, generated[:, step : step + 1]))
        return torch.cat(self.columns, dim=1) if self.columns else generated.new_zeros(generated.shape, dtype=torch.float)


def valid_token_mask(generated: torch.Tensor, eos_token_ids: list[int]) -> torch.Tensor:
    """True up to and including the first end-of-sequence token of each row."""
    is_eos = torch.isin(generated, torch.tensor(eos_token_ids, device=generated.device))
    eos_before = torch.cumsum(is_eos.int(), dim=1) - is_eos.int()
    return eos_before == 0


def eos_ids(model, tokenizer) -> list[int]:
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def batch_plan(prompts: Sequence[str], prompts_per_batch: int) -> list[list[int]]:
    """Prompt indices per `generate` call: longest first, so a batch wastes little on padding. A pure
    function of the prompts, so every process and every resumed run forms the same batches."""
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    return [order[i : i + prompts_per_batch] for i in range(0, len(order), prompts_per_batch)]


class TransformersEngine:
    """`generate` of a loaded transformers model, batched; sampling by counter-based Gumbel-max."""

    def __init__(self, model, tokenizer, config: TransformersEngineConfig | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.config = config or TransformersEngineConfig()
        self.eos_ids = eos_ids(model, tokenizer)
        if self.config.compile:
            model.forward = torch.compile(model.forward, dynamic=True)

    @property
    def transformers_model(self):
        return self.model

    def close(self) -> None:
        self.model = None

    def _generation_config(self, request: Request):
        from transformers import GenerationConfig

        # A fresh GenerationConfig: the model's own defaults (top_k=50, repetition penalties, ...) must not
        # leak in. do_sample stays off: samples come from the Gumbel-max processor's argmax.
        return GenerationConfig(
            max_new_tokens=request.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.eos_ids, return_dict_in_generate=True, output_scores=request.beam, do_sample=False,
            num_beams=request.num_beams, length_penalty=request.length_penalty if request.beam else 1.0,
            num_return_sequences=1, **({"cache_implementation": "static"} if self.config.static_cache else {}))

    @torch.no_grad()
    def generate_batch(self, prompts: Sequence[str], request: Request, seed: int, keys: Sequence[int]) -> list[list[Candidate]]:
        """One `generate` call over `prompts` (each repeated samples_per_prompt times when sampling)."""
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

        model, tokenizer = self.model, self.tokenizer
        model.eval()
        repeats = request.samples_per_prompt if request.samples else 1
        rows = [prompt for prompt in prompts for _ in range(repeats)]
        encoded = tokenizer(rows, return_tensors="pt", padding=True, return_token_type_ids=False).to(model.device)
        width = encoded["input_ids"].shape[1]
        recorder = None if request.beam else TokenLogprobRecorder()
        processors = [] if recorder is None else [recorder]
        if request.samples:
            if request.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(request.temperature))
            if request.top_p < 1.0:
                processors.append(TopPLogitsWarper(request.top_p))
            states = [row_state(seed, key, sample) for key in keys for sample in range(repeats)]
            processors.append(GumbelMaxSampler(states, width, model.device))
        output = model.generate(**encoded, generation_config=self._generation_config(request),
                                logits_processor=LogitsProcessorList(processors))
        generated = output.sequences[:, width:]
        valid = valid_token_mask(generated, self.eos_ids)
        lengths_tensor = valid.sum(dim=1)
        if recorder is None:  # beam: undo the length normalisation of the final beam score
            logprobs = (output.sequences_scores.float()
                        * lengths_tensor.clamp(min=1).float() ** request.length_penalty).tolist()
        else:
            logprobs = (recorder.token_logprobs(generated) * valid).sum(dim=1).tolist()
        lengths = lengths_tensor.tolist()
        finished = (valid & torch.isin(generated, torch.tensor(self.eos_ids, device=generated.device))).any(dim=1)
        texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
        ids = generated.tolist()
        candidates = [Candidate(texts[r], int(lengths[r]), float(logprobs[r]), bool(finished[r]), ids[r][: int(lengths[r])])
                      for r in range(len(rows))]
        return [candidates[i * repeats:(i + 1) * repeats] for i in range(len(prompts))]

    def generate(self, prompts: Sequence[str], request: Request, *, seed: int, keys: Sequence[int] | None = None,
                 prompts_per_batch: int = 32, progress: bool = True) -> list[list[Candidate]]:
        keys = list(range(len(prompts))) if keys is None else list(keys)
        results: list[list[Candidate] | None] = [None] * len(prompts)
        batches = batch_plan(prompts, prompts_per_batch)
        for batch in tqdm(batches, desc="generate", disable=not progress, leave=False):
            for index, candidates in zip(batch, self.generate_batch([prompts[i] for i in batch], request, seed,
                                                                    [keys[i] for i in batch])):
                results[index] = candidates
        return results  # type: ignore[return-value]


# ---------------------------------------------------------------------------- opening an engine
@contextmanager
def open_engine(handle, config: EngineConfig | None, runtime, seed: int = 0) -> Iterator[Engine]:
    """An engine serving `handle` (a ModelHandle), closed on exit (config None: transformers, defaults). The
    vLLM engine reads the weights from the handle's directory: no transformers copy is loaded beside it."""
    config = config if config is not None else TransformersEngineConfig()
    if config.name == "vllm":
        from framework import vllm_backend  # imports vllm: only reached with engine=vllm

        with vllm_backend.open_engine(handle, config, runtime, seed) as engine:
            yield engine
        return
    engine = TransformersEngine(handle.load_model(runtime), handle.load_tokenizer(), config)
    try:
        yield engine
    finally:
        engine.close()


# ---------------------------------------------------------------------------- resumable, split generation
def _shard_name(batch_index: int) -> str:
    return f"shard-{batch_index:06d}.jsonl"


def generate_sharded(engine: Engine, prompts: Sequence[str], request: Request, *, seed: int,
                     keys: Sequence[int] | None = None, prompts_per_batch: int, shard_dir: Path | None,
                     progress: bool = True) -> list[list[Candidate]]:
    """`engine.generate` in fixed batches (`batch_plan`), each written to `shard_dir` as it finishes.

    - Resume: a batch whose shard exists is read, not generated (a kill leaves at most one batch to redo).
    - Processes: under accelerate/torchrun every process generates the batches b with b % world == rank,
      then all read every shard; the result equals one process's (counter-based sampling, same batches).
    `shard_dir` must be on a filesystem every process sees (the stage cache). None: no shards (one process).
    """
    keys = list(range(len(prompts))) if keys is None else list(keys)
    batches = batch_plan(prompts, prompts_per_batch)
    if shard_dir is None:
        return engine.generate(prompts, request, seed=seed, keys=keys, prompts_per_batch=prompts_per_batch,
                               progress=progress)
    shard_dir.mkdir(parents=True, exist_ok=True)
    together = distributed.synchronized()  # false for one process, or for the main process alone in a section
    rank, world = (distributed.rank(), distributed.world_size()) if together else (0, 1)
    mine = [b for b in range(len(batches)) if b % world == rank and not (shard_dir / _shard_name(b)).is_file()]
    done = len(batches) - len(mine) - sum(1 for b in range(len(batches)) if b % world != rank)
    if done:
        log.info("resuming generation: %d of %d batches already written in %s", done, len(batches), shard_dir)
    for b in tqdm(mine, desc="generate", disable=not progress, leave=False):
        batch = batches[b]
        outputs = engine.generate([prompts[i] for i in batch], request, seed=seed, keys=[keys[i] for i in batch],
                                  prompts_per_batch=len(batch), progress=False)
        temporary = shard_dir / (_shard_name(b) + f".tmp{rank}")
        with temporary.open("w", encoding="utf-8") as handle:
            for index, candidates in zip(batch, outputs):
                handle.write(json.dumps({"index": index, "candidates": [asdict(c) for c in candidates]}) + "\n")
        os.replace(temporary, shard_dir / _shard_name(b))  # a shard is complete or absent
    if together:
        distributed.barrier()
    results: list[list[Candidate] | None] = [None] * len(prompts)
    for b in range(len(batches)):
        with (shard_dir / _shard_name(b)).open(encoding="utf-8") as handle:
            for line in handle:
                record = json.loads(line)
                results[record["index"]] = [Candidate(**c) for c in record["candidates"]]
    return results  # type: ignore[return-value]


class ShardedEngine:
    """An engine whose every `generate` call goes through `generate_sharded`, call i into `directory/call-i`:
    what a stage hands its decoders or samplers so that its generation resumes and splits across processes
    (calls come in the same order in every process and every rerun)."""

    def __init__(self, engine: Engine, directory: Path):
        self.engine, self.directory, self.calls = engine, directory, 0

    def generate(self, prompts: Sequence[str], request: Request, *, seed: int, keys: Sequence[int] | None = None,
                 prompts_per_batch: int = 32, progress: bool = True) -> list[list[Candidate]]:
        directory = self.directory / f"call-{self.calls:03d}"
        self.calls += 1
        return generate_sharded(self.engine, prompts, request, seed=seed, keys=keys,
                                prompts_per_batch=prompts_per_batch, shard_dir=directory, progress=progress)

    @property
    def transformers_model(self):
        return self.engine.transformers_model

    def close(self) -> None:
        self.engine.close()


def engine_identity(config: EngineConfig) -> dict:
    """What of the engine config changes generated text (a stage spec's `engine`): its name and keys, less
    those that only place it (memory fraction)."""
    return {key: value for key, value in vars(config).items() if key not in ("gpu_memory_utilization",)}
