"""The comparison report: tables from job directories, missing jobs listed, the by-width view."""
import json

import pytest

from framework.report import collect, main, markdown, width_table


def _job(root, name, algorithm, width, seed, correct, over_optimism=0.0):
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    metrics = {"accuracy": sum(correct) / len(correct), "accuracy_ci_low": 0.0, "accuracy_ci_high": 1.0,
               "accuracy_flexible": 0.0, "mean_tokens": 10.0, "decode_seconds": 1.0, "num_problems": len(correct),
               "over_optimism_rate": over_optimism}
    (job / "results.json").write_text(json.dumps({
        "algorithm": algorithm, "decoder": "beam", "decoder_label": f"beam(num_beams={width})",
        "decoder_config": {"name": "beam", "num_beams": width}, "dataset": "arith", "model": "tiny", "seed": seed,
        "metrics": metrics, "train_seconds": 0.0}))
    with (job / "generations.jsonl").open("w") as handle:
        for problem, ok in enumerate(correct):
            handle.write(json.dumps({"problem": problem, "chosen": True, "correct": bool(ok)}) + "\n")


def test_width_table_pools_seeds_per_problem_and_reports_regret(tmp_path):
    _job(tmp_path, "a", "sft", 1, 0, [1, 1, 0, 0])
    _job(tmp_path, "b", "sft", 1, 1, [1, 0, 0, 0])
    _job(tmp_path, "c", "sft", 4, 0, [1, 0, 0, 0], over_optimism=0.5)
    _job(tmp_path, "d", "sft", 4, 1, [1, 0, 0, 0], over_optimism=0.25)
    (tmp_path / "e" / ".hydra").mkdir(parents=True)  # a job that died before writing results
    results, missing = collect(tmp_path)
    assert missing == ["e"] and "Jobs without results" in markdown(results, missing)
    table = width_table(results)
    # width 1: per-problem means over seeds (1, .5, 0, 0) -> 37.5%; width 4: (1, 0, 0, 0) -> 25.0%
    assert "| sft | 37.5 [" in table and "| 25.0 [" in table
    assert "-12.5 / 37.5" in table  # regret in points / mean over-optimism of the two seeds


def test_report_command_writes_tables(tmp_path, capsys):
    _job(tmp_path, "a", "soc", 2, 0, [1, 0])
    assert main([str(tmp_path), "--by-width"]) == 0
    assert (tmp_path / "comparison.md").is_file() and (tmp_path / "accuracy_by_width.md").is_file()
    assert "| soc |" in capsys.readouterr().out


def test_report_command_rejects_a_missing_directory(tmp_path):
    assert main([str(tmp_path / "nope")]) == 2


def _bon_job(root, name, selector, curve, greedy, passes):
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    metrics = {"accuracy": curve["4"], "accuracy_ci_low": 0.0, "accuracy_ci_high": 1.0, "accuracy_flexible": 0.0,
               "mean_tokens": 10.0, "decode_seconds": 1.0, "num_problems": 10, "bon_accuracy_by_n": curve,
               "greedy_accuracy": greedy, "lift_over_greedy": 100 * (curve["4"] - greedy) / greedy,
               "lift_over_greedy_by_n": {n: 100 * (a - greedy) / greedy for n, a in curve.items()},
               **{f"pass@{n}": p for n, p in passes.items()}}
    (job / "results.json").write_text(json.dumps({
        "algorithm": "sft", "decoder": "bon", "decoder_label": f"bon({selector})",
        "decoder_config": {"name": "bon", "selector": selector, "samples_per_prompt": 4}, "dataset": "arith",
        "model": "tiny", "seed": 0, "metrics": metrics, "train_seconds": 0.0}))


def test_bon_table_lists_accuracy_lift_and_coverage_by_n(tmp_path, capsys):
    _bon_job(tmp_path, "a", "logprob", {"1": 0.4, "2": 0.45, "4": 0.5}, 0.5, {"1": 0.4, "2": 0.6, "4": 0.7})
    _bon_job(tmp_path, "b", "majority", {"1": 0.4, "2": 0.4, "4": 0.6}, 0.5, {"1": 0.4, "2": 0.6, "4": 0.7})
    assert main([str(tmp_path), "--by-n"]) == 0
    table = (tmp_path / "bon_by_n.md").read_text()
    # lift = 100 * (acc - greedy) / greedy: (0.4 - 0.5) / 0.5 = -20%, (0.6 - 0.5) / 0.5 = +20%
    assert "| sft | logprob | 0 | 50.0 | 40.0 (-20.0) | 45.0 (-10.0) | 50.0 (+0.0) |" in table
    assert "| sft | majority | 0 | 50.0 | 40.0 (-20.0) | 40.0 (-20.0) | 60.0 (+20.0) |" in table
    assert "| sft | logprob | 0 | 50.0 | 40.0 | 60.0 | 70.0 |" in table  # coverage rows
    assert "+20.0" in (tmp_path / "comparison.md").read_text()  # the lift column of the main table
