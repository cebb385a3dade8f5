"""The update of one optimizer step does not depend on how its rows are split: one batch of 32, four
accumulated batches of 8 (in process), or two processes of 16 (torchrun, slow). Through the real trainers
(`compute_loss` as the Trainer calls it), for every loss this project writes or configures."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gradient_steps import METHODS, one_step_update

REPO = Path(__file__).resolve().parent.parent


def assert_same_update(first: dict, second: dict, relative: float = 1e-4) -> None:
    assert first.keys() == second.keys()
    scale = max(update.abs().max().item() for update in first.values())
    assert scale > 1e-6, "the step changed nothing"
    worst = max((first[name] - second[name]).abs().max().item() for name in first)
    assert worst <= relative * scale, f"updates differ by {worst:.3g} (largest change {scale:.3g})"


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_accumulating_four_batches_of_eight_updates_like_one_batch_of_32(method, tmp_path):
    whole = one_step_update(method, 32, 1, tmp_path)
    accumulated = one_step_update(method, 8, 4, tmp_path)
    assert_same_update(whole, accumulated)


def test_the_soc_value_term_is_not_scaled_by_accumulation(tmp_path):
    """The check above would also pass if both SOC terms grew together; against SFT, the SOC update
    differs by the value term alone, which must be the same at every split."""
    soc = {split: one_step_update("soc_token_mean", *split, tmp_path) for split in ((32, 1), (8, 4))}
    sft = {split: one_step_update("sft", *split, tmp_path) for split in ((32, 1), (8, 4))}
    value_term = {split: {name: soc[split][name] - sft[split][name] for name in soc[split]} for split in soc}
    assert_same_update(value_term[(32, 1)], value_term[(8, 4)], relative=1e-3)


@pytest.mark.slow  # two torchrun launches of two CPU processes: about a minute on 2 cores
@pytest.mark.parametrize("method", ["soc_token_mean", "soc_sequence_mean"])
def test_two_processes_of_16_update_like_one_process_of_32(method, tmp_path):
    outputs = {}
    for processes, batch in ((1, 32), (2, 16)):
        output = tmp_path / f"{processes}" / "update.pt"
        output.parent.mkdir()
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                   str(processes), str(REPO / "tests" / "gradient_steps.py"), method, str(batch), "1", str(output)]
        result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                                env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1",
                                     "HF_HUB_DISABLE_TELEMETRY": "1", "OMP_NUM_THREADS": "1",
                                     "PYTHONPATH": str(REPO)})
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        outputs[processes] = torch.load(output)
    assert_same_update(outputs[1], outputs[2])
