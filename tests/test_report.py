"""The comparison report: tables from job directories, missing jobs listed, statistics checked by hand,
recomputation from generations, plots, and reading a W&B group."""
import csv
import io
import json
import math
import sys
from pathlib import Path

import pytest

from framework.evaluation import mean_interval, pass_at_k, wilson_interval
from framework.report import (
    ReportError, Run, aggregate, check_against_generations, collect, collect_wandb, holm, job_table_markdown,
    missing_job_lines, paired_bootstrap, recompute_from_generations, seed_problem_interval, width_table,
    write_report,
)
from framework.report.__main__ import main
from framework.results import JobResult


def _job(root, name, algorithm, width, seed, correct, over_optimism=0.0, length_penalty=None, algorithm_config=None):
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    metrics = {"accuracy": sum(correct) / len(correct), "accuracy_ci_low": 0.0, "accuracy_ci_high": 1.0,
               "accuracy_flexible": 0.0, "mean_tokens": 10.0, "decode_seconds": 1.0, "num_problems": len(correct),
               "over_optimism_rate": over_optimism}
    decoder = {"name": "beam", "num_beams": width, **({} if length_penalty is None else {"length_penalty": length_penalty})}
    label = f"beam(num_beams={width}" + ("" if length_penalty is None else f", length_penalty={length_penalty}") + ")"
    (job / "results.json").write_text(json.dumps({
        "algorithm": algorithm, "decoder": "beam", "decoder_label": label, "decoder_config": decoder,
        "dataset": "arith", "model": "tiny", "seed": seed, "metrics": metrics, "train_seconds": 0.0,
        **({} if algorithm_config is None else {"algorithm_config": algorithm_config})}))
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
    assert missing == ["e"] and "Jobs without results" in job_table_markdown(results, missing)
    table = width_table(results)
    # width 1: per-problem means over seeds (1, .5, 0, 0) -> 37.5%; width 4: (1, 0, 0, 0) -> 25.0%
    assert "| sft | mean log-prob | 37.5 [" in table and "| 25.0 [" in table
    assert "-12.5 / 37.5" in table  # regret in points / mean over-optimism of the two seeds


def test_width_table_keeps_the_two_beam_rankings_apart(tmp_path):
    for seed, (mean_ok, sum_ok) in enumerate([([1, 1, 0, 0], [0, 0, 0, 0]), ([1, 0, 0, 0], [0, 0, 0, 1])]):
        _job(tmp_path, f"mean{seed}", "sft", 4, seed, mean_ok, length_penalty=1.0)
        _job(tmp_path, f"sum{seed}", "sft", 4, seed, sum_ok, length_penalty=0.0)
    table = width_table(collect(tmp_path)[0])
    assert "| sft | mean log-prob | 37.5 [" in table and "| sft | sum log-prob | 12.5 [" in table
    assert "summed) log-probability: the `sum log-prob` rows" in table


def test_jobs_of_one_method_with_different_keys_are_not_pooled(tmp_path):
    """An alpha sweep of XPO: each alpha is its own row, named by the key that varies."""
    config = lambda alpha: {"name": "xpo", "beta": 0.1, "alpha": [alpha], "sft": {"learning_rate": 5e-4}}  # noqa: E731
    _job(tmp_path, "a", "xpo", 1, 0, [1, 1, 0, 0], algorithm_config=config(1e-5))
    _job(tmp_path, "b", "xpo", 1, 0, [0, 0, 0, 0], algorithm_config=config(0.1))
    _job(tmp_path, "c", "xpo", 1, 1, [1, 0, 0, 0], algorithm_config=config(0.1))
    results, _ = collect(tmp_path)
    assert sorted({r.method_label for r in results}) == ["xpo(alpha=[0.1])", "xpo(alpha=[1e-05])"]
    assert {r.result.algorithm for r in results} == {"xpo"}
    cells = {c.algorithm: c for c in aggregate(results, compare=False)}
    assert cells["xpo(alpha=[0.1])"].accuracy == pytest.approx(0.125) and len(cells["xpo(alpha=[0.1])"].runs) == 2
    assert cells["xpo(alpha=[1e-05])"].accuracy == pytest.approx(0.5)


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


# ---------------------------------------------------------------------------- the aggregated report


def _sweep_job(root, name, algorithm, decoder, seed, chosen_correct, samples=None, compute=None, extra=None,
               overrides=None):
    """A job as the launcher leaves it: generations.jsonl plus a results.json computed from it.

    `chosen_correct[i]` is problem i's chosen output (1 right, 0 wrong); `samples[i]` (best-of-N) the
    correctness of all N candidates, the chosen one being the first correct one when chosen_correct[i]."""
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(
        "\n".join(f"- {o}" for o in (overrides or [f"algorithm={algorithm}", f"decoder={decoder}", f"seed={seed}"])))
    rows = []
    for problem, ok in enumerate(chosen_correct):
        candidates = samples[problem] if samples else [ok]
        pick = candidates.index(ok) if ok in candidates else 0
        for index, correct in enumerate(candidates):
            rows.append({"problem": problem, "candidate": index, "chosen": index == pick, "question": f"q{problem}",
                         "correct": bool(correct), "correct_flexible": bool(correct), "num_tokens": 10})
    with (job / "generations.jsonl").open("w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    metrics = recompute_from_generations(rows)
    low, high = mean_interval([float(v) for v in chosen_correct])[1:]
    metrics.update({"accuracy_ci_low": low, "accuracy_ci_high": high, "mean_tokens": 10.0, "decode_seconds": 2.0,
                    "generated_tokens": 10 * len(rows), **(extra or {})})
    config = {"name": decoder, **({"num_beams": int(decoder.split("_")[1])} if decoder.startswith("beam") else {})}
    if decoder.startswith("beam"):
        decoder = "beam"
    label = decoder if decoder != "beam" else f"beam(num_beams={config['num_beams']})"
    record = {"algorithm": algorithm, "decoder": decoder, "decoder_label": label, "decoder_config": config,
              "dataset": "arith", "model": "tiny", "seed": seed, "metrics": metrics, "train_seconds": 3.0,
              "wall_seconds": 9.0}
    if compute is not None:
        record["compute"] = compute
    (job / "results.json").write_text(json.dumps(record))
    return job


def test_seed_problem_interval_matches_the_hand_computed_anova():
    # seeds x problems [[1,1,0,0],[1,0,0,0]]: mean 3/8; seed means (.5, .25), problem means (1, .5, 0, 0)
    # MS_seeds = 4 * (.125^2 + .125^2) / 1 = .125; MS_problems = 2 * (.625^2 + .125^2 + .375^2 + .375^2) / 3
    # = .458333; MS_error = SS_resid / 3 = (6 * .125^2 + 2 * .375^2) / 3 = .125
    # variance = max(0, (.125 - .125) / 4) / 2 + (.458333 - .125) / 2 / 4 + .125 / 8 = .0572917
    mean, low, high = seed_problem_interval([[1, 1, 0, 0], [1, 0, 0, 0]])
    assert mean == pytest.approx(0.375)
    assert low == 0.0 and high == pytest.approx(0.375 + 1.959963984540054 * math.sqrt(0.0572917), abs=1e-6)


def test_seed_problem_interval_counts_a_seed_effect_and_falls_back_for_one_seed():
    # seed 0 solves every problem, seed 1 none: the problem-only interval of seed-averaged scores
    # (all 0.5) would have width 0; the seed term gives variance MS_seeds / (S P) = 2 / 8 = .25
    mean, low, high = seed_problem_interval([[1, 1, 1, 1], [0, 0, 0, 0]])
    assert (mean, low, high) == (0.5, 0.0, 1.0)
    assert seed_problem_interval([[1, 1, 0, 0]]) == (0.5, *wilson_interval(2, 4))  # one seed: results.json's
    assert seed_problem_interval([[0, 0, 0], [0, 0, 0]]) == (0.0, *wilson_interval(0, 3))  # not zero-width


def test_paired_bootstrap_known_answers():
    assert paired_bootstrap([1, 0, 1, 0], [1, 0, 1, 0], resamples=500) == (0.0, 0.0, 0.0, 1.0)
    difference, low, high, p = paired_bootstrap([1] * 10, [0] * 10, resamples=500)  # right where the other misses
    assert (difference, low, high, p) == (1.0, 1.0, 1.0, 1 / 501)
    # 30 of 100 problems gained: normal approximation 0.3 +- 1.96 * sqrt(.3 * .7 / 100) = [.210, .390]
    difference, low, high, p = paired_bootstrap([1] * 30 + [0] * 70, [0] * 100, resamples=4000)
    assert difference == pytest.approx(0.3) and low == pytest.approx(0.210, abs=0.02)
    assert high == pytest.approx(0.390, abs=0.02) and p == 1 / 4001
    assert paired_bootstrap([1, 0, 1, 1], [0, 1, 1, 0], resamples=300) == \
        paired_bootstrap([1, 0, 1, 1], [0, 1, 1, 0], resamples=300)  # seeded: deterministic


def test_holm_adjusts_step_down():
    # sorted .01 (x3 = .03), .03 (x2 = .06), .04 (x1 = .04, but never below the previous .06)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def _small_sweep(root):
    """sft and dpo x greedy and beam(4), seeds 0 and 1, 10 problems; dpo beam seed 1 was killed."""
    sft = {0: [1, 1, 1, 0, 0, 0, 0, 0, 0, 0], 1: [1, 1, 0, 0, 0, 0, 0, 0, 0, 0]}
    dpo = {0: [1, 1, 1, 1, 1, 1, 1, 1, 0, 0], 1: [1, 1, 1, 1, 1, 1, 1, 0, 0, 0]}
    number = 0
    for algorithm, table in (("sft", sft), ("dpo", dpo)):
        for decoder in ("greedy", "beam_4"):
            for seed, correct in table.items():
                if (algorithm, decoder, seed) == ("dpo", "beam_4", 1):
                    job = root / f"{number}_dpo_beam_seed1"
                    (job / ".hydra").mkdir(parents=True)
                    (job / ".hydra" / "overrides.yaml").write_text("- algorithm=dpo\n- decoder=beam\n- seed=1\n")
                    (job / "results.json").write_text('{"algorithm": "dp')  # killed while writing
                else:
                    flipped = correct if decoder == "greedy" else [1 - correct[0]] + correct[1:]
                    _sweep_job(root, f"{number}_{algorithm}_{decoder}_seed{seed}", algorithm, decoder, seed,
                               flipped, compute={"train_tokens": 1000 * (1 + (algorithm == "dpo")),
                                                 "train_seconds": 5.0, "sampling_generated_tokens": 0})
                number += 1


def test_aggregate_means_lift_and_comparison_by_hand(tmp_path):
    _small_sweep(tmp_path)
    results, missing = collect(tmp_path)
    assert missing == ["7_dpo_beam_seed1"]
    cells = {(c.algorithm, c.decoder_label): c for c in aggregate(results, resamples=2000)}
    sft, dpo = cells["sft", "greedy"], cells["dpo", "greedy"]
    assert (sft.accuracy, dpo.accuracy) == (pytest.approx(0.25), pytest.approx(0.75))  # (3+2)/20, (8+7)/20
    assert sft.seeds == [0, 1] and cells["dpo", "beam(num_beams=4)"].seeds == [0]
    # dpo beam seed 0 lost problem 0: 7/10; its greedy on the matched seed 0: 8/10 -> lift -12.5%
    assert cells["dpo", "beam(num_beams=4)"].lift == pytest.approx(100 * (0.7 - 0.8) / 0.8)
    assert sft.lift is None and sft.comparison is None
    # dpo greedy vs sft greedy, seeds averaged per problem: differences (0,0,.5,1,1,1,1,.5,0,0) -> mean .5
    assert dpo.comparison.difference == pytest.approx(0.5) and dpo.comparison.seeds == [0, 1]
    # two comparisons: Holm multiplies the smaller p by 2, the larger by 1 (never below the smaller's)
    assert dpo.comparison.significant and dpo.comparison.p_value <= dpo.comparison.p_holm <= 2 * dpo.comparison.p_value
    assert cells["dpo", "beam(num_beams=4)"].comparison.seeds == [0]  # matched to sft beam's seed 0 only
    assert dpo.compute["train_tokens"] == 2000 and sft.compute["eval_generated_tokens"] == 100


def test_report_files_list_the_killed_job_and_match_the_generations(tmp_path, capsys):
    _small_sweep(tmp_path)
    assert main([str(tmp_path), "--resamples", "500"]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "1 job(s) without results" in text and "`7_dpo_beam_seed1` (algorithm=dpo decoder=beam seed=1)" in text
    assert "| dpo | greedy | 2 | 75.0 [" in text and "+50.0 [" in text and " *" in text
    assert "agree with results.json for 7/7 jobs" in text
    rows = list(csv.DictReader(io.StringIO((tmp_path / "report.csv").read_text())))
    assert [(r["method"], r["decoder"], r["seeds"]) for r in rows] == [
        ("sft", "greedy", "0 1"), ("sft", "beam(num_beams=4)", "0 1"),
        ("dpo", "greedy", "0 1"), ("dpo", "beam(num_beams=4)", "0")]
    assert float(rows[2]["accuracy"]) == pytest.approx(0.75) and rows[2]["significant"] == "True"


def test_recomputation_flags_a_results_file_that_disagrees(tmp_path):
    job = _sweep_job(tmp_path, "a", "sft", "greedy", 0, [1, 0, 0, 0])
    run = Run(JobResult.read(job / "results.json"), job_dir=job)
    assert check_against_generations(run) == []
    run.result.metrics["accuracy"] = 0.5
    assert check_against_generations(run) == ["accuracy: results.json has 0.5, generations.jsonl gives 0.25"]
    run.result.write(job / "results.json")
    results, _ = collect(tmp_path)
    assert "WARNING `a`: results.json disagrees" in write_report(results, tmp_path, "t", [], plots=False)


def test_recompute_gives_pass_at_k_from_all_candidates():
    rows = [{"problem": p, "chosen": c == 0, "correct": ok} for p, oks in enumerate([[1, 0], [0, 0]])
            for c, ok in enumerate(oks)]
    values = recompute_from_generations(rows)
    assert values["accuracy"] == 0.5 and values["pass@2"] == 0.5
    assert values["pass@1"] == pytest.approx((pass_at_k(2, 1, 1) + pass_at_k(2, 0, 1)) / 2)  # (.5 + 0) / 2


@pytest.mark.parametrize("sweeper", ["hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                                     "hydra_plugins.framework_sweeper.CheckedSweeper"])  # the framework's default
def test_never_started_jobs_come_from_multirun_yaml(tmp_path, sweeper):
    from omegaconf import OmegaConf

    OmegaConf.save({"hydra": {"sweeper": {"_target_": sweeper,
                                          "max_batch_size": None, "params": {"algorithm": "sft,dpo"}},
                              "overrides": {"task": ["sweeps=compare", "seed=0,1"]}}}, tmp_path / "multirun.yaml")
    _sweep_job(tmp_path, "0_sft", "sft", "greedy", 0, [1, 0],
               overrides=["algorithm=sft", "sweeps=compare", "seed=0"])
    (tmp_path / "1_sft" / ".hydra").mkdir(parents=True)
    (tmp_path / "1_sft" / ".hydra" / "overrides.yaml").write_text("- algorithm=sft\n- sweeps=compare\n- seed=1\n")
    _, missing = collect(tmp_path)
    assert missing_job_lines(tmp_path, missing) == [  # sweeps=compare is common to every job: not repeated
        "`1_sft` (algorithm=sft seed=1): started, left no results.json",
        "(algorithm=dpo seed=0): never started",
        "(algorithm=dpo seed=1): never started"]


def test_plots_are_drawn_or_skipped_with_a_reason(tmp_path):
    pytest.importorskip("matplotlib")
    _small_sweep(tmp_path)
    main([str(tmp_path), "--resamples", "100"])
    assert (tmp_path / "accuracy_by_method.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "accuracy_vs_beam_width.png").is_file()  # greedy = width 1, beam 4
    assert (tmp_path / "accuracy_vs_compute.png").is_file() and not (tmp_path / "accuracy_vs_n.png").exists()
    assert "accuracy_vs_n.png: not drawn (needs decoder=bon runs" in (tmp_path / "report.md").read_text()


def test_without_matplotlib_the_tables_are_still_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    _sweep_job(tmp_path, "a", "sft", "greedy", 0, [1, 0])
    assert main([str(tmp_path), "--resamples", "10"]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "not drawn (needs matplotlib: pip install -e '.[report]')" in text and (tmp_path / "report.csv").is_file()


def test_bon_curve_plot_from_results(tmp_path):
    pytest.importorskip("matplotlib")
    for seed in (0, 1):
        _sweep_job(tmp_path, f"b{seed}", "sft", "bon", seed, [1, 0], samples=[[0, 1], [0, 0]],
                   extra={"bon_accuracy_by_n": {"1": 0.25, "2": 0.5}, "greedy_accuracy": 0.5})
    results, missing = collect(tmp_path)
    write_report(results, tmp_path, "t", missing, resamples=10)
    assert (tmp_path / "accuracy_vs_n.png").read_bytes()[:4] == b"\x89PNG"
    assert aggregate(results)[0].pass_n == (2, 0.5)


# ---------------------------------------------------------------------------- W&B group
class _FakeFile:
    def __init__(self, content):
        self.content = content

    def download(self, root, replace=False):
        path = Path(root) / "media/table/gen.table.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.content))
        return path.open()


class _FakeRun:
    def __init__(self, name, seed, correct, state="finished"):
        self.name, self.id, self.state, self.url = name, name, state, f"https://wandb.ai/e/p/runs/{name}"
        self.config = {"algorithm": {"name": "sft"}, "decoder": {"name": "greedy", "max_new_tokens": 96},
                       "dataset": {"name": "arith"}, "model": {"name": "tiny"}, "seed": seed}
        self.summary_metrics = {"eval/accuracy": sum(correct) / len(correct), "eval/num_problems": len(correct),
                        "eval/accuracy_ci_low": 0.0, "eval/accuracy_ci_high": 1.0, "eval/generated_tokens": 40,
                        "eval/decode_seconds": 1.0, "compute/train_tokens": 500, "_runtime": 7.0,
                        "eval/generations": {"_type": "table-file", "path": "media/table/gen.table.json"}}
        self.table = {"columns": ["problem", "chosen", "correct"],
                      "data": [[i, True, bool(ok)] for i, ok in enumerate(correct)]}

    def file(self, path):
        return _FakeFile(self.table)


class _FakeApi:
    def __init__(self, runs):
        self._runs = runs

    def runs(self, path, filters):
        assert path == "e/p" and filters == {"group": "g"}
        return self._runs


def test_wandb_group_runs_become_records(tmp_path):
    api = _FakeApi([_FakeRun("r0", 0, [1, 0, 0, 0]), _FakeRun("r1", 1, [1, 1, 0, 0]),
                    _FakeRun("r2", 2, [0], state="crashed")])
    results, missing = collect_wandb("g", "p", "e", api=api)
    assert missing == ["`r2` (W&B state crashed)"]
    assert results[0].result.decoder_label == "greedy" and results[0].problem_scores == {0: 1, 1: 0, 2: 0, 3: 0}
    (cell,) = aggregate(results)
    assert cell.accuracy == pytest.approx(0.375) and cell.compute["train_tokens"] == 500
    assert cell.interval == "seeds x problems"


def test_wandb_group_offline_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert main(["--wandb-group", "some-sweep"]) == 2
    assert "pass the sweep directory instead" in capsys.readouterr().err


def test_wandb_agent_runs_are_recomposed_from_their_sweep_parameters(tmp_path):
    """A W&B agent merges its parameters over the config: `decoder: "bon"`, `decoder.selector: ...` flat."""
    run = _FakeRun("r0", 0, [1, 0])
    run.config = {"algorithm": "sft", "decoder": "bon", "decoder.selector": "majority", "sweeps": "bon_vs_n",
                  "logger.mode": "online", "seed": 0, "dataset": {"name": "arith"}, "model": {"name": "tiny"}}
    (record,) = collect_wandb("g", "p", "e", api=_FakeApi([run]))[0]
    # bon_vs_n sets samples_per_prompt: 32, which the agent's config no longer shows
    assert record.result.decoder_label == "bon(samples_per_prompt=32, temperature=1.0, selector=majority)"
    assert (record.method_label, record.result.decoder_config["samples_per_prompt"]) == ("sft", 32)


def test_beam_width_one_is_the_greedy_reference_when_there_is_no_greedy_row(tmp_path):
    _sweep_job(tmp_path, "a", "sft", "beam_1", 0, [1, 1, 0, 0])
    _sweep_job(tmp_path, "b", "sft", "beam_4", 0, [1, 1, 1, 0])
    width_one, width_four = aggregate(collect(tmp_path)[0], compare=False)
    assert width_one.lift is None and width_four.lift == pytest.approx(50.0)  # 100 * (.75 - .5) / .5


def test_decoder_labels_show_the_keys_that_choose_outputs_and_nothing_else():
    """A label always shows its decoder's LABEL_KEYS, any other key only when off its default, and never the
    keys that change no chosen output (batching, the greedy reference, the curve's draws)."""
    from framework.bon import BoNConfig
    from framework.decoding import BeamConfig, GreedyConfig

    assert GreedyConfig().label() == "greedy"
    assert BeamConfig(num_beams=4, max_new_tokens=3).label() == "beam(num_beams=4)"
    assert BeamConfig(num_beams=4, length_penalty=0.0, max_problems=5).label() == \
        "beam(max_problems=5, num_beams=4, length_penalty=0.0)"  # in field order
    assert BoNConfig(selector="majority", curve_draws=7, greedy_reference=False).label() == \
        "bon(samples_per_prompt=50, temperature=1.0, selector=majority)"


def test_a_results_file_that_is_no_jobs_record_is_a_one_line_error(tmp_path, capsys):
    _sweep_job(tmp_path, "a", "sft", "greedy", 0, [1, 0])
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "results.json").write_text(json.dumps({"accuracy": 0.5}))
    with pytest.raises(ReportError, match=r"b/results.json: not a job's results: no algorithm, decoder"):
        collect(tmp_path)
    assert main([str(tmp_path)]) == 2
    assert "b/results.json: not a job's results" in capsys.readouterr().err


def _budget(**overrides):
    budget = {"kind": "outcome_dpo", "steps": 120, "global_batch": 16, "examples": 1920, "epochs": 3.0,
              "warmup_steps": 12, "learning_rate": 1e-4, "first_loss": 0.6931, "last_loss": 0.52,
              "loss_kind": "dpo_sigmoid"}
    return {**budget, **overrides}


def test_the_undertrained_flag_fires_on_a_run_that_did_not_move_and_stays_silent_on_one_that_did():
    from framework.report.aggregate import undertrained_reasons

    assert undertrained_reasons(_budget()) == []  # 120 steps, warmup 12, loss 0.693 -> 0.52
    assert undertrained_reasons(_budget(last_loss=0.6901)) == ["DPO loss 0.6901 within 1% of ln 2"]
    assert undertrained_reasons(_budget(steps=2, warmup_steps=1))[0] == "2 optimizer steps (< 50)"
    assert undertrained_reasons(_budget(steps=60, warmup_steps=60)) == ["warmup of 60 steps is the whole run"]
    # an SFT-type loss near ln 2 is no sign of anything: only a DPO-style sigmoid loss starts there
    assert undertrained_reasons(_budget(loss_kind="SFTTrainer", last_loss=0.6931)) == []
    assert undertrained_reasons(None) == []  # algorithm=none trains nothing of its own


def test_the_report_shows_each_methods_budget_and_flags_an_undertrained_row(tmp_path):
    from framework.report import write_report

    for name, last, steps in (("moved", 0.41, 300), ("stuck", 0.6929, 2)):
        job = tmp_path / name
        job.mkdir()
        rows = [{"problem": p, "candidate": 0, "chosen": True, "correct": p % 2 == 0} for p in range(10)]
        (job / "generations.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        JobResult(algorithm=name, decoder="greedy", decoder_label="greedy", dataset="arith", model="tiny", seed=0,
                  metrics={"accuracy": 0.5, "num_problems": 10, "accuracy_ci_low": 0.2, "accuracy_ci_high": 0.8},
                  training=[_budget(kind="sft", loss_kind="SFTTrainer"),
                            _budget(kind=name, steps=steps, examples=16 * steps, warmup_steps=1,
                                    last_loss=last)]).write(
            job / "results.json")
    from framework.report.sweep import collect

    runs, missing = collect(tmp_path)
    text = write_report(runs, tmp_path, "t", missing, resamples=10, plots=False)
    moved = next(line for line in text.splitlines() if line.startswith("| moved |"))
    stuck = next(line for line in text.splitlines() if line.startswith("| stuck |"))
    assert "| 300 | 4,800 | 3 | 0.693 → 0.41 | no |" in moved
    assert "**yes**: 2 optimizer steps (< 50) (seed 0); DPO loss 0.6929 within 1% of ln 2 (seed 0)" in stuck


@pytest.mark.parametrize("arguments, message", [
    (["--baseline", "sfft"], "error: --baseline sfft: no such method in {sweep}; available: dpo, sft"),
    (["--wandb-group", "g"], "error: give a sweep directory or --wandb-group, not both"),
    (["--project", "p"], "error: --project p: only read with --wandb-group"),
    (["--entity", "e"], "error: --entity e: only read with --wandb-group"),
    (["--out", "{sweep}/a/results.json"], "error: --out {sweep}/a/results.json: a file, not a directory"),
    (["--resamples", "0"], "error: --resamples must be >= 1 (got 0)"),
    (["--resamples", "many"], "error: argument --resamples: invalid int value: 'many'"),
    (["--by-widht"], "error: unrecognized arguments: --by-widht"),
])
def test_report_arguments_are_checked_before_anything_is_written(tmp_path, capsys, arguments, message):
    _sweep_job(tmp_path, "a", "sft", "greedy", 0, [1, 0])
    _sweep_job(tmp_path, "b", "dpo", "greedy", 0, [1, 1])
    arguments = [a.replace("{sweep}", str(tmp_path)) for a in arguments]
    try:
        code = main([str(tmp_path), *arguments])
    except SystemExit as error:  # argparse's own refusals exit
        code = error.code
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "" and not (tmp_path / "report.md").exists()
    assert captured.err.startswith(message.replace("{sweep}", str(tmp_path))), captured.err
    assert captured.err.count("\n") == 1  # one line


def test_an_explicit_baseline_present_in_the_sweep_is_compared_with(tmp_path):
    _sweep_job(tmp_path, "a", "sft", "greedy", 0, [1, 0])
    _sweep_job(tmp_path, "b", "dpo", "greedy", 0, [1, 1])
    assert main([str(tmp_path), "--baseline", "dpo", "--no-plots", "--resamples", "10"]) == 0
    assert "Δ vs dpo" in (tmp_path / "report.md").read_text()


def test_a_difference_that_only_one_seed_shows_is_not_resolved():
    """Seed 0 beats the reference on both problems, seed 1 on neither: averaged per problem the difference is +0.5
    on every problem (a bootstrap over problems alone would call it certain); counted with the seed component it
    rests on 1 degree of freedom. By hand: MS_seeds = 2 x (0.25 + 0.25) / 1 = 1, MS_problems = MS_error = 0,
    variance = (1 / 2) / 2 = 0.25, SE 0.5, Satterthwaite df = 1, t_0.975(1) = 12.706: [-5.853, +6.853], p = 0.5."""
    from framework.report.statistics import paired_scores_comparison, seed_problem_difference

    mean, low, high, p, standard_error = seed_problem_difference([[1.0, 1.0], [0.0, 0.0]])
    assert (mean, standard_error) == (0.5, 0.5)
    assert low == pytest.approx(0.5 - 12.7062 * 0.5, abs=1e-3) and high == pytest.approx(0.5 + 12.7062 * 0.5, abs=1e-3)
    assert p == pytest.approx(0.5)
    comparison = paired_scores_comparison({0: {0: 1.0, 1: 1.0}, 1: {0: 0.0, 1: 0.0}},
                                          {0: {0: 0.0, 1: 0.0}, 1: {0: 0.0, 1: 0.0}}, resamples=200)
    assert comparison.low < 0 < comparison.high  # not resolved
    # symmetric seeds and problems: d = [[1, 0], [0, -1]] -> mean 0, variance 0.5, df 2, t_0.975(2) = 4.303
    mean, low, high, p, standard_error = seed_problem_difference([[1.0, 0.0], [0.0, -1.0]])
    assert mean == 0 and p == pytest.approx(1.0) and high == pytest.approx(4.3027 * 0.5 ** 0.5, abs=1e-3)


def test_a_decoder_on_the_whole_test_split_reads_max_problems_all_beside_a_capped_one():
    from framework.report.aggregate import short_decoder_labels

    shorts = short_decoder_labels([("greedy", "greedy", {"name": "greedy", "max_problems": None}),
                                   ("greedy", "greedy(max_problems=256)", {"name": "greedy", "max_problems": 256})])
    assert shorts == {"greedy": "greedy(max_problems=all)", "greedy(max_problems=256)": "greedy(max_problems=256)"}
