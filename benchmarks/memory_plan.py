"""The paper presets' memory plans on one GPU (docs/memory-plan.md): `python -m framework ... --plan` for each
preset's jobs, with the models' architectures from benchmarks/model_shapes.py (their published config.json, no
weights: the plan then estimates token counts from characters, which errs long) and the benchmark data in
../shared/data. Prints each command and its plan.

    python benchmarks/memory_plan.py [--gpu h100_80gb] [--data ../shared/data]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.model_shapes import write  # noqa: E402

# (title, shape, data folder, overrides): each paper preset's jobs, then its one-GPU variant where it needs one
JOBS = [
    ("soc_paper: SOC, beam 8 (its widest)", "qwen2.5-1.5b", "math",
     ["experiment=soc_paper", "algorithm=soc", "decoder.num_beams=8"]),
    ("soc_paper on one GPU", "qwen2.5-1.5b", "math",
     ["experiment=soc_paper", "algorithm=soc", "decoder.num_beams=8", "evaluation.sequences_per_forward=16"]),
    ("sharpening_paper: BoN-SFT, best-of-50", "phi-3.5-mini", "math", ["experiment=sharpening_paper"]),
    ("self_explore_paper: Self-Explore", "deepseek-math-7b", "gsm8k", ["experiment=self_explore_paper"]),
    ("self_explore_paper: outcome DPO", "deepseek-math-7b", "gsm8k",
     ["experiment=self_explore_paper", "algorithm=outcome_dpo"]),
    ("self_explore_paper on 2 GPUs (ZeRO-3)", "deepseek-math-7b", "gsm8k",
     ["experiment=self_explore_paper", "plan.gpus=2", "plan.sharding=zero3"]),
    ("self_explore_paper on one GPU (LoRA)", "deepseek-math-7b", "gsm8k",
     ["experiment=self_explore_paper", "model.lora.enabled=true"]),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", default="h100_80gb")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(REPO)}
    with tempfile.TemporaryDirectory() as scratch:
        for title, shape, data, overrides in JOBS:
            model = write(shape, Path(scratch) / shape)
            command = [*overrides, f"model.name_or_path={model}", f"dataset.path={Path(args.data) / data}",
                       f"plan.gpu={args.gpu}"]
            result = subprocess.run([sys.executable, "-m", "framework", *command, "--plan"], env=env, cwd=REPO,
                                    capture_output=True, text=True)
            shown = " ".join(f"model.name_or_path=<{shape}>" if c.startswith("model.name_or_path=") else
                             f"dataset.path=../shared/data/{data}" if c.startswith("dataset.path=") else c
                             for c in command)
            print(f"### {title}\n\n`python -m framework {shown} --plan`\n\n```\n"
                  f"{(result.stdout or result.stderr).strip()}\n```\n", flush=True)


if __name__ == "__main__":
    main()
