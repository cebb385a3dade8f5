"""Every algorithm x decoder runs end to end on a tiny model; results and generations are written."""
import json
from pathlib import Path

import pytest

from conftest import FAST, FAST_TRAINING
from framework import registry
from framework.__main__ import run

DECODERS = {"greedy": [], "sample": ["decoder.samples_per_prompt=2"], "beam": ["decoder.num_beams=2"],
            "bon": ["decoder.samples_per_prompt=3", "decoder.curve_draws=5"]}


def _overrides(algorithm):
    return [f"algorithm={algorithm}", *FAST, *(FAST_TRAINING if algorithm != "none" else [])]


def test_every_builtin_algorithm_is_tested():
    assert {"none", "sft", "soc"} <= set(registry.algorithms.names())


@pytest.mark.parametrize("decoder", sorted(DECODERS))
@pytest.mark.parametrize("algorithm", registry.algorithms.names())
def test_algorithm_x_decoder_runs(compose_cfg, shared_cache, tmp_path, algorithm, decoder):
    cfg = compose_cfg([*_overrides(algorithm), f"decoder={decoder}", *DECODERS[decoder]], shared_cache)
    results = run(cfg, tmp_path)
    metrics = results["metrics"]
    assert metrics["num_problems"] == 6 and 0.0 <= metrics["accuracy"] <= 1.0
    assert metrics["accuracy_ci_low"] <= metrics["accuracy"] <= metrics["accuracy_ci_high"]
    assert json.loads((tmp_path / "results.json").read_text())["metrics"] == metrics
    records = [json.loads(line) for line in (tmp_path / "generations.jsonl").open()]
    per_prompt = 1 if decoder == "beam" else results["decoder_config"].get("samples_per_prompt", 1)
    assert len(records) == 6 * per_prompt
    assert {"generation", "extracted", "gold", "correct", "logprob", "num_tokens"} <= set(records[0])
    assert (tmp_path / "config.yaml").is_file()
    if decoder == "sample":
        assert "pass@2" in metrics
    if decoder == "bon":
        assert metrics["bon_accuracy_by_n"]["3"] == metrics["accuracy"] and "pass@3" in metrics
        assert "greedy_accuracy" in metrics and "lift_over_greedy" in metrics


def test_identical_runs_give_identical_metrics(compose_cfg, tmp_path):
    overrides = [*_overrides("sft"), "decoder=sample", "decoder.samples_per_prompt=2", "stages.reuse=false"]
    first = run(compose_cfg(overrides, tmp_path / "cache"), tmp_path / "a")["metrics"]
    second = run(compose_cfg(overrides, tmp_path / "cache"), tmp_path / "b")["metrics"]
    for key in ("accuracy", "mean_logprob", "mean_tokens"):
        assert first[key] == second[key]


def test_trained_stage_is_reused_across_decoders(compose_cfg, tmp_path):
    cache = tmp_path / "cache"
    greedy = run(compose_cfg([*_overrides("sft"), "decoder=greedy"], cache), tmp_path / "a")
    beam = run(compose_cfg([*_overrides("sft"), "decoder=beam", "decoder.num_beams=2"], cache), tmp_path / "b")
    assert greedy["policy"] == beam["policy"]
    assert len(list((cache / "sft").glob("*/stage.json"))) == 1


def test_wandb_offline_run_is_written(compose_cfg, shared_cache, tmp_path):
    overrides = [*_overrides("none"), "logger=wandb", "logger.mode=offline"]
    run(compose_cfg(overrides, shared_cache), tmp_path)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_external_plugin_registers_through_an_entry_point(compose_cfg, shared_cache, tmp_path, monkeypatch):
    """An installed package advertising `framework.plugins` adds `algorithm=<name>` with no YAML."""
    import sys
    from importlib.metadata import EntryPoint

    import framework.registry as registry_module

    sys.path.insert(0, str(Path(__file__).parent / "plugins"))
    entry = EntryPoint(name="toy", value="toy_algorithm", group=registry_module.ENTRY_POINT_GROUP)
    monkeypatch.setattr(registry_module, "entry_points", lambda group: [entry] if group == entry.group else [])
    monkeypatch.setattr(registry_module, "_LOADED", False)
    registry_module.load_plugins()
    assert "toy" in registry.algorithms.names()
    results = run(compose_cfg([*_overrides("none"), "algorithm=toy", "algorithm.marker=42"], shared_cache), tmp_path)
    assert results["algorithm"] == "toy" and (tmp_path / "toy_marker.txt").read_text() == "42"
