"""Self-Explore's first-pit exploration: rollouts per second, batched vs one prefix at a time, in one run.

Same model, same incorrect rationales, same k continuations per step prefix:

  one_at_a_time:        one `generate` per step prefix (its k continuations still come from one call)
  batched_all_prefixes: every prefix of every rationale in one decode call (the engine sizes its batches)
  batched_rounds:       the default schedule: one decode call per step index over the rationales still
                        without a pit (fewer rollouts, as they stop at the pit)

one_at_a_time and batched_all_prefixes sample the very same prefixes, so their rollouts are equal and
the ratio of their rates is the gain from batching.

    python benchmarks/exploration.py [--questions 32] [--rationales 48] [--k 4] [--json out.json]

The model is the embedded tiny base model (from the stage cache, built on first use); its incorrect
rationales are sampled from the arith training split at temperature 0.7.
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=32, help="training questions to sample rationales for")
    parser.add_argument("--rationales-per-question", type=int, default=4)
    parser.add_argument("--rationales", type=int, default=48, help="incorrect rationales explored (at most)")
    parser.add_argument("--k", type=int, default=4, help="continuations per step prefix")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--json", type=str, help="also write the figures here")
    args = parser.parse_args()

    import torch

    from framework import registry
    from framework.algorithms.rationales import Rationale, SampledQuestion
    from framework.algorithms.self_explore import (ExplorationConfig, SelfExploreConfig, explore_first_pits,
                                                   exploration_targets, sampling_explorer)
    from framework.data.loaders import ArithDatasetConfig
    from framework.generation import Request, TransformersEngine
    from framework.models import TinyModelConfig, resolve_runtime
    from framework.stages import StageStore

    registry.load_plugins()
    runtime = resolve_runtime("auto", "auto")
    stages = StageStore(os.environ.get("FRAMEWORK_CACHE_DIR", ".cache/framework"))
    data = registry.datasets.get("arith")(ArithDatasetConfig())
    base = registry.models.get("tiny")(TinyModelConfig(), stages, runtime)
    model, tokenizer = base.load_model(runtime), base.load_tokenizer()
    train = data.train.select(range(args.questions))

    engine = TransformersEngine(model, tokenizer)
    sampled = engine.generate(list(train["prompt"]), Request(max_new_tokens=args.max_new_tokens, temperature=0.7,
                                                             samples_per_prompt=args.rationales_per_question),
                              seed=0, progress=False)
    questions = []
    for index, (prompt, gold, candidates) in enumerate(zip(train["prompt"], train["gold_answer"], sampled)):
        questions.append(SampledQuestion(index, prompt, gold, [
            Rationale(c.text, c.finished, None, data.checker.check(c.text, gold).correct, c.num_tokens)
            for c in candidates]))
    # the timing needs targets, not outcome pairs; "lines": what step_splitter=auto resolves to on arith
    config = SelfExploreConfig(explored_rationales="all_incorrect", step_splitter="lines")
    targets = exploration_targets(questions, config, [])[0][: args.rationales]
    is_correct = lambda text, gold: data.checker.check(text, gold).correct  # noqa: E731

    def explorer():
        return sampling_explorer(engine, args.k, ExplorationConfig.exploration_temperature, 1.0,
                                 args.max_new_tokens, seed=0)

    def one_at_a_time():
        batched = explorer()
        return lambda prompts, keys=None: [batched([prompt])[0] for prompt in prompts]

    figures = {"device": runtime.device, "threads": torch.get_num_threads(), "rationales": len(targets),
               "k": args.k,
               "mean_steps": sum(len(t.steps) for t in targets) / max(len(targets), 1)}
    warm_up = explorer()
    warm_up([targets[0].prompt])  # allocator and kernels, so the first timed variant is not penalised
    for name, make, schedule in (("one_at_a_time", one_at_a_time, "all_prefixes"),
                                 ("batched_all_prefixes", explorer, "all_prefixes"),
                                 ("batched_rounds", explorer, "rounds")):
        continue_prefixes = make()
        started = time.perf_counter()
        records = explore_first_pits(targets, continue_prefixes, is_correct, config.max_explored_steps, schedule)
        seconds = time.perf_counter() - started
        rollouts = sum(r.rollouts for r in records)
        figures[name] = {"seconds": seconds, "rollouts": rollouts, "rollouts_per_second": rollouts / seconds,
                         "pits_found": sum(r.pit is not None for r in records)}
    figures["batched_over_one_at_a_time"] = (figures["batched_all_prefixes"]["rollouts_per_second"]
                                             / figures["one_at_a_time"]["rollouts_per_second"])
    print(json.dumps(figures, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2)


if __name__ == "__main__":
    main()
