"""Best-of-N overhead, measured in one run on the same model, prompts and samples:

  raw:  the engine's `generate` call for the same request and seed, nothing else: the same N
        samples per prompt, token for token (the counter-based sampler makes them a function of
        seed, prompt and row), so both sides do the same work;
  bon:  `decoder=bon` (log-probs recorded during generation, self-reward, selection), with its
        greedy reference pass off, because that pass is a second decode on purpose, not overhead.

The ratio bon / raw is the cost of self-reward and selection (the target: at most 1.2). The
engine's own speed against plain `transformers.generate` is benchmarks/generation.py's figure.

    python benchmarks/bon_overhead.py [--samples 16] [--prompts 64] [--repeats 3] [--json out.json]

The model is the embedded tiny base model (from the stage cache, built on first use).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16, help="N, samples per prompt")
    parser.add_argument("--prompts", type=int, default=64, help="test prompts")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions of each (median kept)")
    parser.add_argument("--selectors", default="logprob,length_norm,majority")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    import torch

    from framework import registry
    from framework.bon import BoNConfig, BoNDecoder
    from framework.generation import TransformersEngine
    from framework.data.loaders import ArithDatasetConfig
    from framework.models import TinyModelConfig, resolve_runtime
    from framework.stages import StageStore

    registry.load_plugins()
    runtime = resolve_runtime("auto", "auto")
    stages = StageStore(os.environ.get("FRAMEWORK_CACHE_DIR", ".cache/framework"))
    data = registry.datasets.get("arith")(ArithDatasetConfig(test_size=args.prompts))
    base = registry.models.get("tiny")(TinyModelConfig(), stages, runtime)
    model, tokenizer = base.load_model(runtime), base.load_tokenizer()
    model.eval()
    prompts = list(data.test["prompt"])

    def config(selector: str) -> BoNConfig:
        return BoNConfig(samples_per_prompt=args.samples, selector=selector, greedy_reference=False,
                         max_new_tokens=args.max_new_tokens)

    engine = TransformersEngine(model, tokenizer)

    def raw_sampling():
        """The samples alone: the request `decoder=bon` sends, on the same engine, with the same seed."""
        decoder = BoNDecoder(config("logprob"), seed=0, answer_extractor=data.checker.extract)
        return lambda: engine.generate(prompts, decoder.request(), seed=decoder.seed, progress=False)

    def bon(selector: str):
        decoder = BoNDecoder(config(selector), seed=0, answer_extractor=data.checker.extract)
        return lambda: decoder.decode(engine, prompts, progress=False)

    raw_texts = [[c.text for c in candidates] for candidates in raw_sampling()()]
    bon_texts = [[c.text for c in decoded.candidates] for decoded in bon("logprob")().outputs]
    if raw_texts != bon_texts:  # the ratio is a figure only over the same work
        raise SystemExit("the bon decoder's samples differ from the engine's for the same request and seed")

    def timed(function) -> float:
        function()  # warm-up: allocator, kernels
        seconds = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            function()
            seconds.append(time.perf_counter() - started)
        return statistics.median(seconds)

    figures = {"samples_per_prompt": args.samples, "prompts": len(prompts), "repeats": args.repeats,
               "device": runtime.device, "threads": torch.get_num_threads(), "generated_tokens": sum(len(c.token_ids) for cs in raw_sampling()() for c in cs),
               "raw_seconds": timed(raw_sampling())}
    for selector in args.selectors.split(","):
        figures[f"bon_{selector}_seconds"] = timed(bon(selector))
        figures[f"bon_{selector}_over_raw"] = figures[f"bon_{selector}_seconds"] / figures["raw_seconds"]
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
