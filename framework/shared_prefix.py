"""Attention over a shared prompt: the KV cache and attention function of the transformers engine's decoding loop
(framework/generation.py) when several sequences continue one prompt (samples, beams).

transformers' DynamicCache gives every sequence its own copy of the prompt's keys and values and concatenates a new
copy of the whole cache at every step. On the embedded model those copies and reading them back cost more than the
model's matmuls: a decoding step reads every row's prompt keys again, and 16 samples of one prompt read the same
prompt 16 times. Here the prompt's keys and values are stored once per prompt (the prefill), each sequence's own
generated tokens in a buffer allocated once, and attention at a decoding step is computed in two parts that are
then merged exactly (the softmax over the concatenation of both, from their maxima and sums):

    prefix  each prompt's queries (all its sequences, grouped) against its prompt's keys: one batched matmul that
            reads a prompt once per step however many sequences continue it
    own     each sequence's query against its own generated keys

This is the same attention transformers' eager and sdpa paths compute (softmax(q k^T * scaling) v, grouped-query
heads), written by hand because no library offers a shared-prefix attention for CPU; it plugs into transformers
through its documented extension point, `AttentionInterface` (and `AttentionMaskInterface`: the mask is implied by
the layout), so the model's own modules (projections, rotary embedding, MLP, norms) run unchanged. It is used only
for architectures whose attention is exactly that (`supports`); others decode with transformers' DynamicCache.
"""
from __future__ import annotations

import contextvars
from contextlib import contextmanager

import torch

IMPLEMENTATION = "framework_shared_prefix"
# Model families whose attention is plain scaled dot-product attention with grouped-query heads: no logit
# soft-capping, attention sinks, alibi or per-layer sliding windows shorter than a decode
PLAIN_ATTENTION = ("llama", "mistral", "qwen2", "qwen3", "phi3")
_active_cache: contextvars.ContextVar = contextvars.ContextVar("framework_shared_prefix_cache", default=None)
_registered = False


def supports(model, total_length: int) -> bool:
    """Whether `model` decodes correctly with the shared-prefix attention, for sequences up to `total_length`."""
    config = model.config
    if getattr(config, "model_type", None) not in PLAIN_ATTENTION:
        return False
    window = getattr(config, "sliding_window", None)
    uses_window = getattr(config, "use_sliding_window", window is not None)
    return not (uses_window and window is not None and window < total_length)


def _layer_class():
    from transformers.cache_utils import DynamicLayer

    class SharedPrefixLayer(DynamicLayer):
        """One layer's keys and values: each prompt's once (`prefix_*`, [prompts, kv heads, prompt length, head
        size], from the prefill) and each row's generated tokens time-major (`own_*`, [generated, rows, kv heads,
        head size]): what is filled is one contiguous block, so selecting rows copies only that."""

        def __init__(self, capacity: int):
            super().__init__()
            self.capacity, self.length = capacity, 0  # generated tokens the buffers hold
            self.prefix_keys = self.prefix_values = self.own_keys = self.own_values = None

        def update(self, key_states, value_states, *args, **kwargs):
            if self.prefix_keys is None:  # the prefill: the prompts themselves, attended to by sdpa with their mask
                self.prefix_keys, self.prefix_values = key_states, value_states
                self.is_initialized = True
                self.device, self.dtype = key_states.device, key_states.dtype
                return key_states, value_states
            if self.own_keys is None:
                rows, heads, _, size = key_states.shape
                self.shape = (heads, size)
                # two flat storages each for keys and values, allocated once: selecting rows copies into the spare
                # pair (fresh allocations of this size cost more in page faults than the copy itself)
                self.storages = [key_states.new_empty(self.capacity * rows * heads * size) for _ in range(4)]
                self.current = 0
                self.own_keys, self.own_values = self._views(0, rows)
            if self.length >= self.capacity:
                raise RuntimeError(f"decoding cache full at {self.capacity} generated tokens")
            self.own_keys[self.length] = key_states[:, :, -1]
            self.own_values[self.length] = value_states[:, :, -1]
            self.length += 1
            return self.own_keys[: self.length], self.own_values[: self.length]

        def _views(self, pair: int, rows: int):
            return tuple(storage[: self.capacity * rows * self.shape[0] * self.shape[1]].view(
                self.capacity, rows, *self.shape) for storage in self.storages[2 * pair : 2 * pair + 2])

        def get_seq_length(self, *args, **kwargs) -> int:
            return (0 if self.prefix_keys is None else self.prefix_keys.shape[-2]) + self.length

        def select_rows(self, rows: torch.Tensor) -> None:
            if self.own_keys is None:
                return
            spare = 1 - self.current
            needed = self.capacity * len(rows) * self.shape[0] * self.shape[1]
            if self.storages[2 * spare].numel() < needed:  # beams can repeat rows beyond the first allocation
                self.storages[2 * spare : 2 * spare + 2] = [self.storages[0].new_empty(needed) for _ in range(2)]
            keys, values = self._views(spare, len(rows))
            torch.index_select(self.own_keys[: self.length], 1, rows, out=keys[: self.length])
            torch.index_select(self.own_values[: self.length], 1, rows, out=values[: self.length])
            self.own_keys, self.own_values, self.current = keys, values, spare

        def select_prompts(self, prompts: torch.Tensor) -> None:
            self.prefix_keys = self.prefix_keys.index_select(0, prompts)
            self.prefix_values = self.prefix_values.index_select(0, prompts)

    return SharedPrefixLayer


def new_cache(model, prompt_mask: torch.Tensor, capacity: int):
    """An empty shared-prefix cache for prompts with padding mask `prompt_mask` ([prompts, width], left padded) and
    up to `capacity` generated tokens; `expand(rows_per_prompt)` after the prefill creates the sequences."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    layer = _layer_class()
    cache.layers = [layer(capacity) for _ in cache.layers]
    cache.prompt_mask = prompt_mask.bool()
    cache.row_prompt = torch.arange(prompt_mask.shape[0], device=prompt_mask.device)
    _index_rows(cache)
    return cache


def _index_rows(cache) -> None:
    """Each row's slot among its prompt's rows (rows are grouped by prompt, in order)."""
    first = torch.searchsorted(cache.row_prompt, cache.row_prompt)
    cache.row_slot = torch.arange(len(cache.row_prompt), device=first.device) - first
    cache.slots = int(cache.row_slot.max()) + 1 if len(cache.row_slot) else 1


def expand(cache, counts: torch.Tensor) -> None:
    """After the prefill: prompt i continues as `counts[i]` sequences (rows), grouped by prompt."""
    cache.row_prompt = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
    _index_rows(cache)


def select_rows(cache, rows: torch.Tensor) -> None:
    """Keep the sequences `rows` (ascending); prompts left without a sequence leave the cache too."""
    kept_prompts, row_prompt = torch.unique(cache.row_prompt.index_select(0, rows), return_inverse=True)
    for layer in cache.layers:
        layer.select_rows(rows)
        if len(kept_prompts) < cache.prompt_mask.shape[0]:
            layer.select_prompts(kept_prompts)
    cache.prompt_mask = cache.prompt_mask.index_select(0, kept_prompts)
    cache.row_prompt = row_prompt
    _index_rows(cache)


def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """softmax(q k^T * scaling) v of one decoding step, over each row's prompt (shared) and its own tokens.
    query [rows, heads, 1, size]; key, value: the rows' own tokens, time-major [generated, rows, kv heads, size].
    Returns [rows, 1, heads, size], as transformers' attention functions do. The prompt part is one matmul per
    prompt and KV head; the own part is broadcast multiplies and sums, since thousands of one-row matmuls (one per
    row and head) cost ten times more on a CPU."""
    cache = _active_cache.get()
    layer = cache.layers[module.layer_idx]
    rows, heads, _, size = query.shape
    kv_heads = key.shape[2]
    group = heads // kv_heads
    scaling = size ** -0.5 if scaling is None else scaling
    prompts, slots, width = cache.prompt_mask.shape[0], cache.slots, cache.prompt_mask.shape[1]
    q = query.reshape(rows, kv_heads, group, size)
    # the prompt part: every prompt's rows padded to `slots`, against the prompt's keys once (one matmul per
    # prompt and KV head, its rows and grouped heads stacked)
    padded = q.new_zeros(prompts, kv_heads, slots, group, size)
    padded[cache.row_prompt, :, cache.row_slot] = q
    prefix_scores = torch.matmul(padded.view(prompts, kv_heads, slots * group, size),
                                 layer.prefix_keys.transpose(-1, -2)) * scaling
    prefix_scores = prefix_scores.masked_fill(~cache.prompt_mask[:, None, None, :], float("-inf"))
    prefix_scores = prefix_scores.view(prompts, kv_heads, slots, group, width)[cache.row_prompt, :, cache.row_slot]
    # each row's own generated tokens: [generated, rows, kv heads, group]
    own_scores = (q.unsqueeze(0) * key.unsqueeze(3)).sum(dim=-1) * scaling
    # one softmax over both parts
    top = torch.maximum(prefix_scores.amax(dim=-1), own_scores.amax(dim=0))  # [rows, kv heads, group]
    prefix_weights = torch.exp(prefix_scores - top.unsqueeze(-1))
    own_weights = torch.exp(own_scores - top.unsqueeze(0))
    total = prefix_weights.sum(dim=-1) + own_weights.sum(dim=0)
    padded_weights = prefix_weights.new_zeros(prompts, kv_heads, slots, group, width)
    padded_weights[cache.row_prompt, :, cache.row_slot] = prefix_weights
    prefix_out = torch.matmul(padded_weights.view(prompts, kv_heads, slots * group, width), layer.prefix_values)
    prefix_out = prefix_out.view(prompts, kv_heads, slots, group, size)[cache.row_prompt, :, cache.row_slot]
    own_out = (own_weights.unsqueeze(-1) * value.unsqueeze(3)).sum(dim=0)
    out = (prefix_out + own_out) / total.unsqueeze(-1)
    return out.reshape(rows, heads, 1, size).transpose(1, 2), None


def _no_mask(*args, **kwargs):
    return None  # the layout is the mask: prompt padding in `prompt_mask`, no padding among generated tokens


def register() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(IMPLEMENTATION, attention)
    AttentionMaskInterface.register(IMPLEMENTATION, _no_mask)
    _registered = True


@contextmanager
def decoding(model, cache):
    """The model's attention is the shared-prefix attention over `cache` for the block (the decoding steps)."""
    register()
    previous = model.config._attn_implementation
    token = _active_cache.set(cache)
    model.set_attn_implementation(IMPLEMENTATION)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)
        _active_cache.reset(token)
