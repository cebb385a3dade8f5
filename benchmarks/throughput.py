"""Framework overhead against plain TRL / transformers, each ratio over the same work on both sides:

  (a) SFT training: `algorithm=sft` through the framework (stage store, resumable checkpoints, completion-only
      loss) against a plain TRL SFTTrainer script: the same model, rows, seed, batch, accumulation, schedule and
      steps, both timed from building the trainer to the saved model;
  (b) SOC against SFT, both through the framework on the same steps and batches;
  (c) greedy evaluation: the greedy decoder on the framework's engine against one batched `model.generate` call on
      the same prompts, both from the prompts' text to the generated token ids.

A ratio is printed only when both sides did the same work: the same training tokens (TRL's own count) and
optimizer steps, or the same generated token ids; otherwise the script prints the mismatch and no ratio.

    python benchmarks/throughput.py [--sft-steps 100] [--test-size 500] [--json out.json]

The base model is the embedded tiny model (built once into a temporary cache). Ratios above 1 mean the framework
is faster than the plain script. Timings are medians over --repeats alternating runs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _logged(trainer, key: str) -> float:
    values = [entry[key] for entry in trainer.state.log_history if key in entry]
    return float(values[-1]) if values else float("nan")


def _ratio_line(name: str, ours: float, theirs: float, same: bool, what: str) -> tuple[str, float | None]:
    if not same:
        return f"  {name}: no ratio, the two sides did not do the same work ({what})", None
    return f"  {name}: ratio {theirs / ours:.3f} (framework time {ours:.2f} s, plain {theirs:.2f} s; {what})", theirs / ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sft-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--test-size", type=int, default=500)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed runs per side (median kept)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    import torch
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    from framework import registry
    from framework.algorithms import AlgorithmContext
    from framework.algorithms import sft as sft_module
    from framework.algorithms import soc as soc_module
    from framework.algorithms import sft_stage
    from framework.algorithms.sft_stage import SFTAlgorithmConfig
    from framework.algorithms.soc import SOCConfig
    from framework.data.loaders import ArithDatasetConfig
    from framework.decoding import GreedyConfig
    from framework.generation import TransformersEngine
    from framework.models import TinyModelConfig, resolve_runtime
    from framework.stages import StageStore

    registry.load_plugins()
    work = Path(tempfile.mkdtemp(prefix="framework-bench-"))
    runtime = resolve_runtime("auto", "auto")
    stages = StageStore(work / "cache", reuse=False)
    data = registry.datasets.get("arith")(ArithDatasetConfig(test_size=args.test_size))
    base = registry.models.get("tiny")(TinyModelConfig(), stages, runtime)
    # the training keys both sides use (the embedded SFT's schedule, accumulation 1)
    keys = dict(learning_rate=1e-3, lr_scheduler_type="cosine", warmup_ratio=0.03, weight_decay=0.0,
                max_grad_norm=1.0, max_steps=args.sft_steps, per_device_train_batch_size=args.batch_size,
                gradient_accumulation_steps=1, max_length=512, logging_steps=args.sft_steps)
    figures: dict = {"device": runtime.device, "torch_threads": torch.get_num_threads(), "sft_steps": args.sft_steps,
                     "batch_size": args.batch_size, "repeats": args.repeats}

    # (a) training -------------------------------------------------------------------------------
    def plain_trl() -> tuple[float, float, int]:
        """A plain TRL script: SFTTrainer on the same rows, seed, batch, schedule and steps; timed from building
        the trainer to the saved model, as the framework's stage is."""
        set_seed(0)
        started = time.perf_counter()
        trainer = SFTTrainer(
            model=base.load_model(runtime), processing_class=base.load_tokenizer(),
            train_dataset=Dataset.from_dict({"prompt": data.train["prompt"], "completion": data.train["completion"]}),
            args=SFTConfig(output_dir=str(work / "plain"), learning_rate=keys["learning_rate"],
                           lr_scheduler_type=keys["lr_scheduler_type"], warmup_steps=keys["warmup_ratio"],
                           weight_decay=keys["weight_decay"], max_grad_norm=keys["max_grad_norm"],
                           max_steps=keys["max_steps"], per_device_train_batch_size=keys["per_device_train_batch_size"],
                           gradient_accumulation_steps=1, max_length=keys["max_length"],
                           logging_steps=keys["logging_steps"], save_strategy="no", report_to="none",
                           gradient_checkpointing=False, bf16=runtime.precision == "bf16",
                           use_cpu=runtime.device == "cpu", seed=0, data_seed=0, completion_only_loss=True,
                           dataloader_num_workers=0))
        trainer.train()
        trainer.save_model(str(work / "plain-model"))
        return time.perf_counter() - started, _logged(trainer, "num_tokens"), trainer.state.global_step

    def framework_training(method, module, config_class, **overrides) -> tuple[float, float, int]:
        """`method.run` (a fresh stage: reuse is off), timed the same way; the trainer captured for its counts."""
        captured: dict = {}
        original = module.make_sft_trainer

        def capture(*a, **k):
            captured["trainer"] = original(*a, **k)
            return captured["trainer"]

        module.make_sft_trainer = capture
        try:
            config = config_class(**{**keys, **overrides})
            context = AlgorithmContext(config=config, base=base, data=data, stages=stages, runtime=runtime,
                                       seed=0, report_to="none", output_dir=work)
            set_seed(0)
            started = time.perf_counter()
            method.run(context)
            trainer = captured["trainer"]
            return time.perf_counter() - started, _logged(trainer, "num_tokens"), trainer.state.global_step
        finally:
            module.make_sft_trainer = original

    plain_trl()  # untimed warm-up: the first trainer in a process pays one-off costs (lazy imports, allocator)
    framework_runs, plain_runs, no_checkpoint_runs = [], [], []
    for _ in range(args.repeats):
        framework_runs.append(framework_training(sft_module, sft_stage, SFTAlgorithmConfig))
        plain_runs.append(plain_trl())
        # what resumability costs: the framework without intermediate checkpoints
        no_checkpoint_runs.append(framework_training(sft_module, sft_stage, SFTAlgorithmConfig,
                                                     save_steps=10 * args.sft_steps))
    median = lambda runs: statistics.median(run[0] for run in runs)  # noqa: E731
    ours, theirs, unsaved = median(framework_runs), median(plain_runs), median(no_checkpoint_runs)
    work_done = {(run[1], run[2]) for run in framework_runs + plain_runs}
    same = len(work_done) == 1
    tokens, steps = next(iter(work_done))
    line, ratio = _ratio_line("SFT, framework vs plain TRL", ours, theirs, same,
                              f"{tokens:,.0f} tokens in {steps} steps each" if same else f"(tokens, steps): {work_done}")
    figures["sft"] = {"framework_seconds": ours, "plain_trl_seconds": theirs, "framework_no_checkpoints_seconds": unsaved,
                      "tokens": tokens, "steps": steps, "same_work": same, "ratio": ratio,
                      "framework_tokens_per_s": tokens / ours, "plain_trl_tokens_per_s": tokens / theirs,
                      "checkpoint_cost_share": 1 - unsaved / ours}
    print(f"\nSFT training on {runtime.device}, {args.sft_steps} steps x batch {args.batch_size} "
          f"(median of {args.repeats}):")
    print(f"  framework            {tokens / ours:8,.0f} tokens/s ({ours:.1f} s); without intermediate checkpoints "
          f"{tokens / unsaved:8,.0f} tokens/s ({unsaved:.1f} s)")
    print(f"  plain TRL            {tokens / theirs:8,.0f} tokens/s ({theirs:.1f} s)")
    print(line)

    # (b) SOC vs SFT: the same rows, seed, steps; only the loss differs -------------------------------
    soc_runs, sft_runs = [], []
    for _ in range(args.repeats):
        soc_runs.append(framework_training(soc_module, soc_module, SOCConfig))
        sft_runs.append(framework_training(sft_module, sft_stage, SFTAlgorithmConfig))
    soc_seconds, sft_seconds = median(soc_runs), median(sft_runs)
    work_done = {(run[1], run[2]) for run in soc_runs + sft_runs}
    line, ratio = _ratio_line("SOC vs SFT (SFT's time / SOC's)", soc_seconds, sft_seconds, len(work_done) == 1,
                              f"(tokens, steps): {sorted(work_done)}")
    figures["soc"] = {"soc_seconds": soc_seconds, "sft_seconds": sft_seconds, "same_work": len(work_done) == 1,
                      "ratio": ratio}
    print(line)

    # (c) generation -----------------------------------------------------------------------------
    model, tokenizer = base.load_model(runtime).eval(), base.load_tokenizer()
    prompts = list(data.test["prompt"])
    decoder = registry.decoders.get("greedy")(GreedyConfig(max_new_tokens=args.max_new_tokens))
    engine = TransformersEngine(model, tokenizer)

    def framework_decode() -> list[list[int]]:
        return [result.candidates[0].token_ids for result in decoder.decode(engine, prompts, progress=False).outputs]

    def plain_generate() -> list[list[int]]:
        with torch.no_grad():
            encoded = tokenizer(prompts, return_tensors="pt", padding=True, return_token_type_ids=False)
            output = model.generate(**encoded.to(model.device), max_new_tokens=args.max_new_tokens, do_sample=False,
                                    pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        new, eos = output[:, encoded["input_ids"].shape[1]:].tolist(), tokenizer.eos_token_id
        return [row[: row.index(eos) + 1] if eos in row else row for row in new]

    framework_decode(), plain_generate()  # warm-up, both sides
    ours_times, plain_times = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        ours_ids = framework_decode()
        ours_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        plain_ids = plain_generate()
        plain_times.append(time.perf_counter() - started)
    ours, theirs = statistics.median(ours_times), statistics.median(plain_times)
    generated = sum(len(ids) for ids in ours_ids)
    same = ours_ids == plain_ids
    differing = sum(a != b for a, b in zip(ours_ids, plain_ids))
    line, ratio = _ratio_line(f"greedy on {len(prompts)} prompts, framework vs one generate call", ours, theirs, same,
                              f"the same {generated:,} tokens" if same else f"{differing} outputs differ")
    figures["generation"] = {"framework_seconds": ours, "plain_generate_seconds": theirs, "prompts": len(prompts),
                             "tokens": generated, "same_tokens": same, "differing_outputs": differing,
                             "ratio": ratio, "framework_tokens_per_s": generated / ours}
    print(f"Greedy generation, {len(prompts)} prompts, up to {args.max_new_tokens} new tokens "
          f"(median of {args.repeats}):")
    print(line)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
