"""How much of an XPO step is generation: XPO samples y from the policy and y~ from pi_base online, with
transformers `generate` (its vLLM path is not wired: TRL's vLLM integration serves the policy, not a frozen
second model). Times a few steps on the tiny model (or SmolLM2) and reports the share spent in `_sample`.

    python benchmarks/xpo_generation.py [--model smollm2]
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "smollm2"], default="tiny")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--json", type=str)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    from datasets import Dataset

    from framework.algorithms import AlgorithmContext
    from framework.algorithms.xpo import XPOConfig, XPOTrainer, make_xpo_trainer
    from framework.data.answers import NumericAnswerChecker
    from framework.data.loaders import ArithDatasetConfig, TaskData, load_arith
    from framework.stages import StageStore
    from dpo_memory import _handle

    with tempfile.TemporaryDirectory() as workdir:
        handle, runtime = _handle(Path(workdir), args.model)
        prompts = list(load_arith(ArithDatasetConfig()).train["prompt"])[: 16 * args.steps]
        data = TaskData(Dataset.from_dict({"prompt": prompts}), Dataset.from_dict({"prompt": prompts[:1]}),
                        NumericAnswerChecker())
        config = XPOConfig(starting_point="base", max_steps=args.steps, per_device_train_batch_size=16,
                           gradient_accumulation_steps=1, max_new_tokens=64, max_length=512, save_steps=1000)
        ctx = AlgorithmContext(config=config, base=handle, data=data, stages=StageStore(Path(workdir) / "s"),
                               runtime=runtime, seed=0, report_to="none", output_dir=Path(workdir))
        trainer = make_xpo_trainer(ctx, config, str(Path(workdir) / "checkpoints"))
        spent = []
        original = XPOTrainer._sample

        def timed_sample(self, *a, **k):
            started = time.perf_counter()
            result = original(self, *a, **k)
            spent.append(time.perf_counter() - started)
            return result

        XPOTrainer._sample = timed_sample
        started = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - started
    figures = {"model": args.model, "steps": args.steps, "train_seconds": round(total, 2),
               "generation_seconds": round(sum(spent), 2), "generation_share": round(sum(spent) / total, 3)}
    print(json.dumps(figures))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
