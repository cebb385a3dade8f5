"""benchmarks/gpu_smoke.py, the GPU smoke check, runs here at tiny shapes on CPU, so that it cannot rot: every
phase (each training method a few steps through the framework's code, each generating stage, the diagnostics'
scoring pass) ends ok and writes one JSON line with the memory plan's estimate and its tokens/s."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_the_gpu_smoke_check_runs_every_phase_at_tiny_shapes_on_cpu(tmp_path):
    sys.path.insert(0, str(REPO))
    from benchmarks.gpu_smoke import PHASES

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "benchmarks/gpu_smoke.py", "--tiny", "--steps", "2",
                             "--workdir", str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=900)
    records = [json.loads(line) for line in result.stdout.splitlines()]  # stdout is JSON lines only
    assert [record["phase"] for record in records] == list(PHASES)
    failed = {record["phase"]: record.get("error") or record.get("import_failures") for record in records
              if not record["ok"]}
    assert not failed and result.returncode == 0, (failed, result.stderr[-3000:])
    for record in records[1:]:
        assert record["estimate_gib"] is not None and record["tokens_per_second"] > 0, record
        assert record["device"] == "cpu" and record["peak_gib"] is None  # measured on a GPU only
    assert list(tmp_path.iterdir()) == []  # its models and stages went with its scratch directory
