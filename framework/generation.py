"""One generation engine for every stage that generates: the decoders, the sampled set, the rationale set,
first-pit exploration. A stage asks an `Engine` for completions (text, token ids, log-probs) of its prompts
under a `Request` (those types: framework/engine.py); `engine=transformers` (default) or `engine=vllm`
(framework/vllm_backend.py) selects the engine (conf/engine/).

    with open_engine(model_handle, settings.engine, runtime) as engine:
        completions = engine.generate(prompts, Request(max_new_tokens=512, samples_per_prompt=4, temperature=1.0),
                                      seed=seed, keys=problem_ids)

Batches are sized by work, not by prompt count: the transformers engine fills each decoding batch with as many
sequences (prompts x samples) as its budget allows (`decode_rows_budget`: the KV cache and logits that fit in
the free memory, and on a CPU a cap beyond which larger batches decode no faster), longest prompts first; a
prompt's samples share one prefill of the prompt. Greedy and sampled requests run the engine's own decoding
loop (`decode_batch`): transformers' `generate` copies the whole KV cache at every step (its DynamicLayer
concatenates) and hashes noise for every vocabulary entry, which on the embedded model cost more than the model
itself. The loop keeps the cache in one preallocated buffer per layer, drops finished rows from the batch, and
calls the model's own forward, so any architecture transformers loads decodes as `generate` would. Beam search
stays transformers' `generate`.

Sampling is counter-based: each sample's randomness is a pure function of (the seed, the prompt's key, the
sample's index, the step): one uniform per sample and step (53 random bits), turned into a token by inverse-CDF
sampling of softmax(temperature- and top-p-warped logits), exact up to float32 rounding of each token's weight. So a prompt's samples do not
depend on which prompts share its batch, on how many processes split the work, or on where an interrupted stage
resumed: `generate_sharded` writes each finished shard of prompts, splits shards across processes and skips the
shards a killed run already wrote. Greedy (temperature 0) and beam search draw no noise.

Log-probabilities are log pi(token | prefix) at temperature 1, read from the logits the decoding step computes
anyway (no second pass), before any warper. The counter hash is written here because no library offers a
per-row, batch-independent sampler.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from framework import distributed, shared_prefix
from framework.config import EngineConfig, register_schema, require
from framework.engine import Candidate, Engine, Request  # the engines' shared types; stages import them from here

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- engine configs
@dataclass
class TransformersEngineConfig(EngineConfig):
    name: str = "transformers"
    # sequences (prompts x samples or beams) decoded together; null: as many as the memory budget allows, and on a
    # CPU at most CPU_BATCH_ROWS (larger batches decode no faster there: benchmarks/generation.py)
    max_batch_rows: int | None = None
    memory_fraction: float = 0.8  # share of the memory free when a batch starts that its KV cache and logits may take
    compile: bool = False  # torch.compile the model's forward pass (slow to start; for long GPU stages)

    def checks(self, prefix: str) -> None:
        super().checks(prefix)
        require(self.max_batch_rows is None or self.max_batch_rows >= 1, f"{prefix}.max_batch_rows",
                "must be >= 1 or null", self.max_batch_rows)
        require(0 < self.memory_fraction <= 1, f"{prefix}.memory_fraction", "must be in (0, 1]", self.memory_fraction)


@dataclass
class VLLMEngineConfig(EngineConfig):
    name: str = "vllm"
    # share of the whole GPU the engine may take (on a CPU: of the machine's memory); null: what is free when the
    # engine starts, less a margin (on a CPU at most 0.5), refused in one line when too little is free
    gpu_memory_utilization: float | None = None
    tensor_parallel_size: int = 1
    max_model_len: int | None = None  # null: the stage's longest prompt + new tokens, rounded up to a power of two
    dtype: str = "auto"  # auto: the run's precision (model.precision)
    enforce_eager: bool = False  # true: no CUDA graphs (slower; less memory, faster start)
    per_request_seed: str = "auto"  # auto: on a GPU (samples independent of batching); off on CPU, where vLLM refuses it

    def checks(self, prefix: str) -> None:
        super().checks(prefix)
        require(self.gpu_memory_utilization is None or 0 < self.gpu_memory_utilization <= 1,
                f"{prefix}.gpu_memory_utilization", "must be in (0, 1] or null", self.gpu_memory_utilization)
        require(self.tensor_parallel_size >= 1, f"{prefix}.tensor_parallel_size", "must be >= 1",
                self.tensor_parallel_size)
        # several processes split the shards of a stage, each on its own engine: a tensor-parallel group would
        # need every member to generate the same prompts
        require(self.tensor_parallel_size == 1 or distributed.launched_world_size() == 1,
                f"{prefix}.tensor_parallel_size", f"must be 1 under {distributed.launched_world_size()} processes "
                "(each process generates its own shards on its own GPU); launch one process to use tensor "
                "parallelism", self.tensor_parallel_size)
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


def counter_uniform(states: torch.Tensor, step: int) -> torch.Tensor:
    """One uniform in (0, 1) per row, float64 with 53 random bits: a function of the row's state and the step."""
    high = hash32(states ^ hash32_int(step + 0x632BE5AB))
    low = hash32(high ^ 0x85EBCA6B)
    return ((high >> 5).double() * 67108864.0 + (low >> 6).double() + 0.5) / 9007199254740992.0


def sample_tokens(logits: torch.Tensor, temperature: float, top_p: float, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: row r gets the first token whose cumulative probability under softmax(logits / T),
    top-p-filtered (transformers' TopPLogitsWarper), exceeds uniforms[r]: an exact draw from that softmax, up to
    float32 rounding of each token's weight."""
    scores = logits.float() / temperature
    if top_p < 1.0:
        from transformers import TopPLogitsWarper

        scores = TopPLogitsWarper(top_p)(None, scores)
    # the unnormalised CDF, summed in float64 (each token's weight is exact to float32 rounding); the uniform is
    # scaled by its total instead of dividing every entry
    cdf = torch.exp(scores - scores.max(dim=-1, keepdim=True).values).cumsum(dim=-1, dtype=torch.float64)
    targets = (uniforms * cdf[:, -1]).unsqueeze(1)
    return torch.searchsorted(cdf, targets, right=True).squeeze(1).clamp_(max=cdf.shape[1] - 1)


# ---------------------------------------------------------------------------- batches sized by work
# On a CPU a decoding step's cost grows with the rows until the KV cache no longer fits the caches; beyond about
# this many rows larger batches decode no faster (measured on the embedded model: benchmarks/generation.py).
CPU_BATCH_ROWS = 512


def free_memory_bytes(device: torch.device) -> int:
    """What the device has free now: CUDA's own count, or the machine's available memory on a CPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def decode_bytes_per_row(model_config, dtype: torch.dtype, length: int) -> int:
    """Memory one decoded sequence of `length` tokens takes: its KV cache (2 x layers x KV heads x head size per
    token, in the model's dtype), its step's logits (the vocabulary, in fp32 and fp64 for the sampler) and the
    prefill's transients, one layer's MLP intermediates over its tokens (3 x intermediate + 4 x hidden per token;
    counted over all `length` tokens and per row, an upper bound where a prompt's samples share one prefill). The
    pre-flight plan (plan.py: budget_rows) counts the same terms, so the batch it plans is the one the engine forms."""
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_size = getattr(text, "head_dim", None) or text.hidden_size // heads
    element = torch.finfo(dtype).bits // 8 if dtype.is_floating_point else 4
    kv = 2 * text.num_hidden_layers * kv_heads * head_size * element * length
    logits = text.vocab_size * (4 + 4 + 8 + 8)  # logits, log-softmax, warped fp64 scores, their CDF
    intermediate = getattr(text, "intermediate_size", None) or 4 * text.hidden_size
    prefill = length * (3 * intermediate + 4 * text.hidden_size) * element
    return kv + logits + prefill


def decode_rows_budget(model, config: TransformersEngineConfig, length: int) -> int:
    """How many sequences of `length` tokens one decoding batch may hold (at least 1)."""
    device = next(model.parameters()).device
    per_row = decode_bytes_per_row(model.config, next(model.parameters()).dtype, length)
    rows = int(free_memory_bytes(device) * config.memory_fraction) // max(per_row, 1)
    if config.max_batch_rows is not None:
        rows = min(rows, config.max_batch_rows)
    elif device.type == "cpu":
        rows = min(rows, CPU_BATCH_ROWS)
    return max(rows, 1)


@dataclass(frozen=True)
class RowGroup:
    """`count` samples of prompt `prompt`, starting at sample index `first` (a prompt's samples may be split)."""
    prompt: int
    first: int
    count: int


def plan_decode_batches(lengths: Sequence[int], samples: int, max_rows: Callable[[int], int]) -> list[list[RowGroup]]:
    """Decoding batches over prompts of token `lengths`, each prompt bringing `samples` rows: longest prompts first
    (little padding), each batch filled up to `max_rows(longest length in it)` rows. A prompt whose samples alone
    exceed that is split into groups. A pure function of its inputs, so every process forms the same batches."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[RowGroup]] = []
    current: list[RowGroup] = []
    capacity = rows = 0
    for index in order:
        if not current:
            capacity = max(1, max_rows(lengths[index]))
        first = 0
        while first < samples:
            if rows == capacity:
                batches.append(current)
                current, rows, capacity = [], 0, max(1, max_rows(lengths[index]))
            count = min(samples - first, capacity - rows)
            current.append(RowGroup(index, first, count))
            rows += count
            first += count
    if current:
        batches.append(current)
    return batches


# ---------------------------------------------------------------------------- the transformers engine
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


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the first of the `stop` strings (excluded, as vLLM returns it), and whether one occurred."""
    cuts = [position for position in (text.find(s) for s in stop) if position >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


# Finished rows leave the batch once they are this share of it (each drop copies the filled part of the cache)
COMPACT_SHARE = 0.1


class TransformersEngine:
    """A loaded transformers model generating in batches sized by its memory budget (module docstring)."""

    def __init__(self, model, tokenizer, config: TransformersEngineConfig | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.config = config or TransformersEngineConfig()
        self.eos_ids = eos_ids(model, tokenizer)
        # transformers 5.2x passes the cache as `cache`, earlier 5.x as `past_key_values`
        parameters = inspect.signature(model.forward).parameters
        self.cache_argument = "cache" if "cache" in parameters else "past_key_values"
        self.keeps_last_logits = "logits_to_keep" in parameters
        if self.config.compile:
            model.forward = torch.compile(model.forward, dynamic=True)

    @property
    def transformers_model(self):
        return self.model

    def close(self) -> None:
        self.model = None

    def generate(self, prompts: Sequence[str], request: Request, *, seed: int, keys: Sequence[int] | None = None,
                 progress: bool = True) -> list[list[Candidate]]:
        """Candidates of every prompt, in batches sized by the memory budget (`plan_decode_batches`)."""
        if not prompts:
            return []
        keys = list(range(len(prompts))) if keys is None else list(keys)
        self.model.eval()
        prompt_ids = self.tokenizer(list(prompts), return_token_type_ids=False)["input_ids"]
        per_prompt = request.num_beams if request.beam else (request.samples_per_prompt if request.samples else 1)
        # a prompt's beams are decoded together (one generate call): beam batches hold whole prompts
        grouped = 1 if request.beam else per_prompt
        batches = plan_decode_batches(
            [len(ids) for ids in prompt_ids], grouped,
            lambda length: decode_rows_budget(self.model, self.config, length + request.max_new_tokens)
            // (per_prompt if request.beam else 1))
        results: list[list[Candidate]] = [[] for _ in prompts]
        with tqdm(total=len(prompts) * per_prompt, desc="generate", unit="seq", disable=not progress,
                  leave=False) as bar:
            for batch in batches:
                ids = [prompt_ids[group.prompt] for group in batch]
                if request.beam:
                    outputs = self.beam_batch(ids, request)
                else:
                    outputs = self.decode_batch(ids, [group.count for group in batch], request,
                                                [[row_state(seed, keys[group.prompt], group.first + s)
                                                  for s in range(group.count)] for group in batch])
                for group, candidates in zip(batch, outputs):
                    results[group.prompt].extend(candidates)
                bar.update(sum(group.count for group in batch) * (per_prompt // grouped))
        return results

    def _prefill(self, prompt_ids: list[list[int]], capacity: int, counts: torch.Tensor):
        """Left-pad and prefill the prompts, then start `counts[i]` rows of prompt i. Returns (rows' next-token
        logits, the cache, the rows' attention mask or None for the shared-prefix cache, their last positions)."""
        model, device = self.model, self.model.device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]
        width = max(len(ids) for ids in prompt_ids)
        input_ids = torch.full((len(prompt_ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompt_ids), width), dtype=torch.long)
        for i, ids in enumerate(prompt_ids):  # left padding: every prompt ends at the last column
            input_ids[i, width - len(ids):] = torch.tensor(ids)
            mask[i, width - len(ids):] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        if shared_prefix.supports(model, width + capacity):
            cache = shared_prefix.new_cache(model, mask, capacity)
        else:  # another attention: transformers' own cache, a copy of the prompt per row
            from transformers import DynamicCache

            cache = DynamicCache(config=model.config)
        extra = {"logits_to_keep": 1} if self.keeps_last_logits else {}
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                       **{self.cache_argument: cache}, **extra).logits[:, -1]
        expand = torch.repeat_interleave(torch.arange(len(counts), device=device), counts)
        if getattr(cache, "row_prompt", None) is not None:
            shared_prefix.expand(cache, counts)
            mask = None  # the shared-prefix layout is its own mask
        else:
            cache.batch_select_indices(expand)
            mask = mask[expand]
        return logits[expand], cache, mask, positions[expand, -1:]

    def _step(self, tokens: torch.Tensor, cache, mask, last: torch.Tensor):
        """One decoding step: the next-token logits of every row after `tokens`, and the grown mask."""
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones((len(tokens), 1))], dim=1)
        logits = self.model(input_ids=tokens[:, None], attention_mask=mask, position_ids=last + 1, use_cache=True,
                            **{self.cache_argument: cache}).logits[:, -1]
        return logits, mask

    @staticmethod
    def _select(cache, mask, rows: torch.Tensor):
        """Keep (or repeat) the batch rows `rows`, grouped by prompt, in the cache and the mask."""
        if getattr(cache, "row_prompt", None) is not None:
            shared_prefix.select_rows(cache, rows)
            return None
        cache.batch_select_indices(rows)
        return mask[rows]

    @torch.no_grad()
    def decode_batch(self, prompt_ids: list[list[int]], counts: list[int], request: Request,
                     states: list[list[int]]) -> list[list[Candidate]]:
        """Greedy or sampled decoding of `counts[i]` rows of prompt i (noise streams `states[i]`): one prefill per
        prompt, its rows share it (framework/shared_prefix.py), finished rows leave the batch."""
        device = self.model.device
        logits, cache, mask, last = self._prefill(prompt_ids, request.max_new_tokens, torch.tensor(counts, device=device))
        rows = len(logits)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_ids[0]
        noise = torch.tensor([state for row in states for state in row], dtype=torch.int64, device=device)
        alive = torch.arange(rows, device=device)  # the original row of each row still in the batch
        active = torch.ones(rows, dtype=torch.bool, device=device)  # of the rows in the batch: not finished yet
        tokens = torch.full((rows, request.max_new_tokens), pad, dtype=torch.long, device=device)
        logprobs = torch.zeros((rows, request.max_new_tokens), dtype=torch.float32, device=device)
        lengths = torch.full((rows,), request.max_new_tokens, dtype=torch.long, device=device)
        stopped = torch.zeros(rows, dtype=torch.bool, device=device)  # ended by a stop string
        eos = torch.tensor(self.eos_ids, device=device)
        with shared_prefix.decoding(self.model, cache) if mask is None else contextlib.nullcontext():
            for step in range(request.max_new_tokens):
                if request.samples:
                    chosen = sample_tokens(logits, request.temperature, request.top_p, counter_uniform(noise, step))
                else:
                    chosen = logits.argmax(dim=-1)
                # rows that finished earlier but still sit in the batch write here too: past their length, never read
                tokens[alive, step] = chosen
                # log pi(chosen) at temperature 1: its logit less the log-partition (no full log-softmax)
                logits = logits.float()
                logprobs[alive, step] = logits.gather(1, chosen[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)
                ended = torch.isin(chosen, eos)
                if request.stop:
                    by_stop = self._stop_hits(tokens[alive, : step + 1], request.stop) & ~ended & active
                    stopped[alive[by_stop]] = True
                    ended = ended | by_stop
                lengths[alive[ended & active]] = step + 1
                active = active & ~ended
                remaining = int(active.sum())
                if remaining == 0 or step + 1 == request.max_new_tokens:
                    break
                if len(alive) - remaining > COMPACT_SHARE * len(alive):  # drop the finished rows from the batch
                    indices = active.nonzero().squeeze(1)
                    mask = self._select(cache, mask, indices)
                    alive, chosen, last, noise, active = (alive[indices], chosen[indices], last[indices],
                                                          noise[indices], active[indices])
                logits, mask = self._step(chosen, cache, mask, last)
                last = last + 1
        return self._candidates(tokens, logprobs, lengths, stopped, counts, request)

    @torch.no_grad()
    def beam_batch(self, prompt_ids: list[list[int]], request: Request) -> list[list[Candidate]]:
        """Beam search of width B per prompt, on the same cache and steps as decode_batch (transformers' `generate`
        copies the whole cache at every step, twice: concatenating and reordering beams). Each step extends every
        running beam by every token, keeps each prompt's top 2B extensions: those that end (EOS or a stop string)
        become finished hypotheses scored sum log-prob / length^length_penalty (length counting the end token,
        as transformers does), the best B others run on. A prompt is done when B hypotheses have finished and no
        running beam can still beat the worst of them; at max_new_tokens its running beams join the hypotheses.
        The answer is the best hypothesis; its log-prob is the plain sum."""
        device, beams, penalty = self.model.device, request.num_beams, request.length_penalty
        prompts = len(prompt_ids)
        logits, cache, mask, last = self._prefill(prompt_ids, request.max_new_tokens,
                                                  torch.full((prompts,), beams, device=device))
        eos = set(self.eos_ids)
        # running beams: prompt-major rows; at the start only beam 0 of each prompt is real
        sums = torch.full((prompts, beams), float("-inf"), device=device)
        sums[:, 0] = 0.0
        history = torch.zeros((prompts * beams, request.max_new_tokens), dtype=torch.long, device=device)
        live = list(range(prompts))  # prompts still searching, in row-block order
        finished: list[list[tuple[float, float, list[int], bool]]] = [[] for _ in range(prompts)]
        vocabulary = logits.shape[-1]
        stop_window = max((len(text) for text in request.stop), default=0) + 4
        with shared_prefix.decoding(self.model, cache) if mask is None else contextlib.nullcontext():
            for step in range(request.max_new_tokens):
                length = step + 1
                extended = (sums.view(-1, 1) + torch.log_softmax(logits.float(), dim=-1)).view(len(live), -1)
                top_scores, top_indices = extended.topk(min(2 * beams, extended.shape[1]), dim=1)
                top_scores, top_indices = top_scores.tolist(), top_indices.tolist()
                tails = history[:, max(0, step - stop_window): step].tolist() if request.stop else None
                sources, next_tokens, next_sums, still = [], [], [], []
                for block, prompt in enumerate(live):
                    running: list[tuple[int, int, float]] = []
                    for score, flat in zip(top_scores[block], top_indices[block]):
                        if score == float("-inf"):
                            break
                        row, token = block * beams + flat // vocabulary, flat % vocabulary
                        ends = token in eos or (tails is not None and self._stop_in_text(
                            tails[row] + [token], request.stop))
                        if ends:
                            ids = history[row, :step].tolist() + [token]
                            finished[prompt].append((score / length ** penalty, score, ids, True))
                            finished[prompt].sort(key=lambda hypothesis: -hypothesis[0])
                            del finished[prompt][beams:]
                        elif len(running) < beams:
                            running.append((row, token, score))
                    best_running = running[0][2] if running else float("-inf")
                    bound = best_running / ((request.max_new_tokens if penalty > 0 else length) ** penalty)
                    done = (not running or (len(finished[prompt]) >= beams and bound <= finished[prompt][-1][0])
                            or length == request.max_new_tokens)
                    if done:
                        for row, token, score in running:  # unfinished beams compete at the length limit
                            ids = history[row, :step].tolist() + [token]
                            finished[prompt].append((score / length ** penalty, score, ids, False))
                        finished[prompt].sort(key=lambda hypothesis: -hypothesis[0])
                        continue
                    running += [(running[0][0], running[0][1], float("-inf"))] * (beams - len(running))
                    still.append(prompt)
                    for row, token, score in running:
                        sources.append(row)
                        next_tokens.append(token)
                        next_sums.append(score)
                if not still:
                    break
                rows = torch.tensor(sources, device=device)
                history = history[rows]
                history[:, step] = torch.tensor(next_tokens, device=device)
                sums = torch.tensor(next_sums, device=device).view(len(still), beams)
                mask = self._select(cache, mask, rows)
                last = last[rows]
                live = still
                logits, mask = self._step(history[:, step], cache, mask, last)
                last = last + 1
        outputs = []
        for prompt in range(prompts):
            _, total, ids, ended = finished[prompt][0]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            if request.stop:
                text = cut_at_stop(text, request.stop)[0]
            outputs.append([Candidate(text, len(ids), float(total), ended, ids)])
        return outputs

    def _stop_in_text(self, ids: list[int], stop: Sequence[str]) -> bool:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return any(text_stop in text for text_stop in stop)

    def _stop_hits(self, generated: torch.Tensor, stop: Sequence[str]) -> torch.Tensor:
        """Whether each row's generated tokens now end with a stop string (only the last few tokens are read: a
        stop string completes within as many tokens as it has characters, special tokens aside)."""
        window = max(len(text) for text in stop) + 4
        return self._ends_with_stop(generated[:, -window:], stop)

    def _ends_with_stop(self, tails: torch.Tensor, stop: Sequence[str]) -> torch.Tensor:
        """Whether each row's last tokens hold a stop string. Decoded text, not token patterns: transformers'
        StopStringCriteria cannot read every vocabulary (it fails on the embedded word-level one)."""
        texts = self.tokenizer.batch_decode(tails.tolist(), skip_special_tokens=True)
        return torch.tensor([any(text_stop in text for text_stop in stop) for text in texts], device=tails.device)

    def _candidates(self, tokens, logprobs, lengths, stopped, counts, request) -> list[list[Candidate]]:
        lengths = lengths.tolist()
        valid = torch.arange(tokens.shape[1], device=tokens.device)[None, :] < torch.tensor(lengths, device=tokens.device)[:, None]
        sums = (logprobs * valid).sum(dim=1).tolist()
        tokens = tokens.cpu().numpy()
        ids = [tokens[r, :n].tolist() for r, n in enumerate(lengths)]  # only the generated part becomes Python ints
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        stopped = stopped.tolist()
        candidates = []
        for r, (row, n) in enumerate(zip(ids, lengths)):
            text, by_stop = cut_at_stop(texts[r], request.stop) if request.stop else (texts[r], False)
            finished = (n > 0 and row[-1] in self.eos_ids) or by_stop or stopped[r]
            candidates.append(Candidate(text, n, sums[r], finished, row))
        out, start = [], 0
        for count in counts:
            out.append(candidates[start : start + count])
            start += count
        return out

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
def _shard_name(index: int) -> str:
    return f"shard-{index:06d}.jsonl"


def shard_plan(prompts: Sequence[str], rows_per_prompt: int, rows_per_shard: int, processes: int = 1) -> list[list[int]]:
    """Prompt indices per shard: longest first (the engine's own batches pad little), at most `rows_per_shard`
    rows (prompts x samples) a shard, and at least as many shards as processes when there are enough prompts, so
    that every process has work. A pure function of its inputs: every process and every resumed run forms the
    same shards."""
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    rows = max(1, min(rows_per_shard, math.ceil(len(order) * rows_per_prompt / max(processes, 1))))
    per_shard = max(1, rows // max(rows_per_prompt, 1))
    return [order[i : i + per_shard] for i in range(0, len(order), per_shard)]


def generate_sharded(engine: Engine, prompts: Sequence[str], request: Request, *, seed: int,
                     keys: Sequence[int] | None = None, rows_per_shard: int, shard_dir: Path | None,
                     progress: bool = True) -> list[list[Candidate]]:
    """`engine.generate` over shards of the prompts (`shard_plan`), each written to `shard_dir` as it finishes.

    - Resume: a shard whose file exists is read, not generated (a kill leaves at most one shard to redo).
    - Processes: under accelerate/torchrun every process generates the shards s with s % world == rank, then
      all read every shard; the result equals one process's (counter-based sampling: a sample does not depend
      on its batch). The shards of a plan live in a directory named by the plan, so a rerun with another number
      of processes or another `rows_per_shard` never mixes two plans' shards.
    - An engine with a `prepare(prompts, request)` method (vLLM) gets the whole call first, on every process at
      the same point, so that it can start sized to the call (starting vLLM under several processes is
      collective); then each process generates its own shards.
    `shard_dir` must be on a filesystem every process sees (the stage cache). None: no shards (one process).
    """
    keys = list(range(len(prompts))) if keys is None else list(keys)
    if shard_dir is None:
        return engine.generate(prompts, request, seed=seed, keys=keys, progress=progress)
    together = distributed.synchronized()  # false for one process, or for the main process alone in a section
    rank, world = (distributed.rank(), distributed.world_size()) if together else (0, 1)
    per_prompt = request.num_beams if request.beam else (request.samples_per_prompt if request.samples else 1)
    shards = shard_plan(prompts, per_prompt, rows_per_shard, world)
    shard_dir = shard_dir / f"{len(shards[0]) if shards else 0}-prompts-per-shard"
    shard_dir.mkdir(parents=True, exist_ok=True)
    mine = [b for b in range(len(shards)) if b % world == rank and not (shard_dir / _shard_name(b)).is_file()]
    done = len(shards) - len(mine) - sum(1 for b in range(len(shards)) if b % world != rank)
    if done:
        log.info("resuming generation: %d of %d shards already written in %s", done, len(shards), shard_dir)
    prepare = getattr(engine, "prepare", None)  # vLLM: starts sized to the whole call (collective when together)
    if prepare is not None and (together or mine):
        prepare(prompts, request)
    total = sum(len(shards[b]) for b in mine) * per_prompt
    with tqdm(total=total, desc="generate", unit="seq", disable=not progress or not total, leave=False) as bar:
        for b in mine:
            shard = shards[b]
            outputs = engine.generate([prompts[i] for i in shard], request, seed=seed, keys=[keys[i] for i in shard],
                                      progress=False)
            temporary = shard_dir / (_shard_name(b) + f".tmp{rank}")
            with temporary.open("w", encoding="utf-8") as handle:
                for index, candidates in zip(shard, outputs):
                    handle.write(json.dumps({"index": index, "candidates": [asdict(c) for c in candidates]}) + "\n")
            os.replace(temporary, shard_dir / _shard_name(b))  # a shard is complete or absent
            bar.update(len(shard) * per_prompt)
    if together:
        distributed.barrier()
    results: list[list[Candidate] | None] = [None] * len(prompts)
    for b in range(len(shards)):
        with (shard_dir / _shard_name(b)).open(encoding="utf-8") as handle:
            for line in handle:
                record = json.loads(line)
                results[record["index"]] = [Candidate(**c) for c in record["candidates"]]
    return results  # type: ignore[return-value]


class ShardedEngine:
    """An engine whose every `generate` call goes through `generate_sharded`, call i into `directory/call-i`:
    what a stage hands its decoders or samplers so that its generation resumes and splits across processes
    (calls come in the same order in every process and every rerun)."""

    def __init__(self, engine: Engine, directory: Path, rows_per_shard: int = 4096):
        self.engine, self.directory, self.rows_per_shard, self.calls = engine, directory, rows_per_shard, 0

    def generate(self, prompts: Sequence[str], request: Request, *, seed: int, keys: Sequence[int] | None = None,
                 progress: bool = True) -> list[list[Candidate]]:
        directory = self.directory / f"call-{self.calls:03d}"
        self.calls += 1
        return generate_sharded(self.engine, prompts, request, seed=seed, keys=keys,
                                rows_per_shard=self.rows_per_shard, shard_dir=directory, progress=progress)

    @property
    def transformers_model(self):
        return self.engine.transformers_model

    def close(self) -> None:
        self.engine.close()


# Engine keys that only size, place or split the work: a stage's generated text does not depend on them
PLACEMENT_KEYS = ("gpu_memory_utilization", "max_batch_rows", "memory_fraction", "rows_per_shard")


def engine_identity(config: EngineConfig) -> dict:
    """What of the engine config changes generated text (a stage spec's `engine`): its name and keys, less
    those that only size or place the work (PLACEMENT_KEYS)."""
    return {key: value for key, value in vars(config).items() if key not in PLACEMENT_KEYS}
