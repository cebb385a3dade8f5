"""The report's views agree with each other: greedy is width 1 of the width table, every lift reads the same
greedy reference, the per-job table and report.md give a job the same train s, lift and eval tokens, decoders
have short labels with the full ones in footnotes and the CSV, and a method keeps its colour in every plot."""
import csv
import io
import json

import pytest

from framework.report import aggregate, bon_curve_table, collect, width_table, write_job_table, write_report
from framework.report.sweep import readable_values
from test_report import _sweep_job

BON_LABEL = "bon(max_problems=2, samples_per_prompt=2, temperature=1.0, selector=logprob)"


def _relabel(job, label: str, config: dict, **metrics) -> None:
    """Give a job written by `_sweep_job` another decoder label and config (and extra metrics)."""
    record = json.loads((job / "results.json").read_text())
    record.update(decoder_label=label, decoder_config=config)
    record["metrics"].update(metrics)
    (job / "results.json").write_text(json.dumps(record))


def _row(markdown: str, start: str) -> list[str]:
    line = next(line for line in markdown.splitlines() if line.startswith(start))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_width_table_counts_greedy_as_width_one_and_regret_is_against_it(tmp_path):
    _sweep_job(tmp_path, "g", "sft", "greedy", 0, [1, 1, 0, 0], extra={"over_optimism_rate": 0.5})
    _sweep_job(tmp_path, "b", "sft", "beam_4", 0, [1, 1, 1, 0], extra={"over_optimism_rate": 0.25})
    table = width_table(collect(tmp_path)[0])
    assert "| width 1 (greedy) | width 4 |" in table
    assert "| sft | mean log-prob | 50.0 [" in table  # the greedy job, as width 1
    assert "| sft | mean log-prob | +0.0 / 50.0 | +25.0 / 25.0 |" in table  # width 4 (75%) minus greedy (50%)


def _greedy_and_bon(root, seed=0):
    """sft greedy on 4 problems (right on the first two); sft best-of-2 on the first 2, one right."""
    _sweep_job(root, f"g{seed}", "sft", "greedy", seed, [1, 1, 0, 0])
    bon = _sweep_job(root, f"n{seed}", "sft", "bon", seed, [1, 0], samples=[[0, 1], [0, 0]])
    _relabel(bon, BON_LABEL, {"name": "bon", "max_problems": 2, "samples_per_prompt": 2, "temperature": 1.0,
                              "selector": "logprob"}, bon_accuracy_by_n={"1": 0.25, "2": 0.5})


def test_every_lift_reads_the_greedy_job_of_the_same_method_and_seed_on_the_best_of_n_problems(tmp_path):
    """The best-of-N job has no greedy pass of its own: --by-n, comparison.md and report.md all take the greedy
    job's accuracy on the 2 problems best-of-N scored (100%), not on its 4 (50%): lift -50%."""
    _greedy_and_bon(tmp_path)
    runs, missing = collect(tmp_path)
    table = bon_curve_table(runs)
    assert "| sft | logprob | 0 | 100.0 | 25.0 (-75.0) | 50.0 (-50.0) |" in table
    assert _row(write_job_table(runs, missing, tmp_path), "| sft | bon |")[7] == "-50.0"
    bon_cell = next(c for c in aggregate(runs, compare=False) if c.decoder == "bon")
    assert bon_cell.lift == pytest.approx(-50.0) and bon_cell.greedy_reference == pytest.approx(1.0)


def test_the_job_table_and_the_report_agree_on_train_seconds_lift_and_beam_eval_tokens(tmp_path):
    """train s is every stage the model rests on (40 s), not the job's own 3 s; beam search's eval tokens
    count its 4 beams (4 x 10 tokens x 4 problems)."""
    compute = {"train_tokens": 100, "train_seconds": 40.0, "sampling_generated_tokens": 0}
    _sweep_job(tmp_path, "g", "sft", "greedy", 0, [1, 1, 0, 0], compute=compute)
    _sweep_job(tmp_path, "b", "sft", "beam_4", 0, [1, 1, 1, 0], compute=compute)
    runs, missing = collect(tmp_path)
    jobs = write_job_table(runs, missing, tmp_path)
    report = write_report(runs, tmp_path, "t", missing, resamples=10, plots=False)
    job, cell = _row(jobs, "| sft | beam |"), _row(report, "| sft | beam |")
    assert (job[7], job[9], job[10]) == ("+50.0", "160", "40")  # lift, eval tokens, train s
    assert (cell[4], cell[17], cell[18]) == ("+50.0", "160", "40")  # after the 5 budget columns
    assert _row(jobs, "| sft | greedy |")[9] == "40"  # greedy: its one output per problem


def test_tables_and_legends_use_short_decoder_labels_and_keep_the_full_ones(tmp_path):
    _greedy_and_bon(tmp_path)
    runs, missing = collect(tmp_path)
    report = write_report(runs, tmp_path, "t", missing, resamples=10, plots=False)
    assert "| sft | bon | 1 |" in report and f"`bon` is `{BON_LABEL}`" in report
    assert f"`bon` is `{BON_LABEL}`" in write_job_table(runs, missing, tmp_path)
    rows = list(csv.DictReader(io.StringIO((tmp_path / "report.csv").read_text())))
    assert {row["decoder"] for row in rows} == {"greedy", BON_LABEL}  # the CSV keeps the full label
    assert {row["decoder"] for row in csv.DictReader(io.StringIO((tmp_path / "comparison.csv").read_text()))} == \
        {"greedy", BON_LABEL}


def test_decoders_of_one_name_keep_the_keys_that_tell_them_apart(tmp_path):
    for seed, selector in enumerate(("logprob", "majority")):
        job = _sweep_job(tmp_path, f"n{selector}", "sft", "bon", 0, [1, 0], samples=[[0, 1], [0, 0]])
        _relabel(job, BON_LABEL.replace("logprob", selector), {"name": "bon", "max_problems": 2, "temperature": 1.0,
                                                               "samples_per_prompt": 2, "selector": selector})
    shorts = sorted(c.decoder_short for c in aggregate(collect(tmp_path)[0], compare=False))
    assert shorts == ["bon(selector=logprob)", "bon(selector=majority)"]


def test_float_keys_in_labels_are_short_yet_keep_different_values_apart():
    assert readable_values([0.00031622776601683794, 0.001]) == ["0.000316", "0.001"]
    assert readable_values([0.1, 0.1001, 0.1]) == ["0.1", "0.1001", "0.1"]
    assert readable_values([(0.010000000000000002,), (0.1,)]) == ["[0.01]", "[0.1]"]


def test_a_method_keeps_its_colour_in_every_report_and_its_control_shares_it():
    pytest.importorskip("matplotlib")
    from framework.report.plots import method_colors

    headline = ["none", "sft", "soc", "rft", "bon_sft", "bon_sft control", "dpo", "dpo control", "outcome_dpo",
                "outcome_dpo control", "xpo", "xpo control", "self_explore", "self_explore control"]
    colors = method_colors(headline)
    methods = [label for label in headline if not label.endswith(" control")]
    assert len({colors[m] for m in methods}) == len(methods)  # 9 methods, 9 colours
    assert all(colors[f"{m} control"] == colors[m] for m in methods if f"{m} control" in colors)
    assert method_colors(["xpo", "sft"])["sft"] == colors["sft"]  # fixed, whatever else the sweep has
    extra = method_colors([*headline, "my_plugin", "xpo(alpha=0.1)"])
    assert extra["my_plugin"] != extra["xpo(alpha=0.1)"]
    assert {extra["my_plugin"], extra["xpo(alpha=0.1)"]}.isdisjoint({colors[m] for m in methods})


def test_the_headline_plots_are_drawn_from_a_sweep_with_controls_and_best_of_n(tmp_path):
    pytest.importorskip("matplotlib")
    for seed in (0, 1):
        _greedy_and_bon(tmp_path, seed)
        _sweep_job(tmp_path, f"b{seed}", "sft", "beam_4", seed, [1, 1, 1, 0])
        control = _sweep_job(tmp_path, f"c{seed}", "sft", "greedy", seed, [1, 0, 0, 0])
        record = json.loads((control / "results.json").read_text())
        (control / "results.json").write_text(json.dumps({**record, "control_of": "sft"}))
        _sweep_job(tmp_path, f"none{seed}", "none", "greedy", seed, [1, 0, 0, 0],
                   compute={"train_tokens": 0, "train_seconds": 0.0})
    runs, missing = collect(tmp_path)
    text = write_report(runs, tmp_path, "t", missing, resamples=10)
    assert "not drawn" not in text
    for name in ("accuracy_by_method", "accuracy_vs_beam_width", "accuracy_vs_n", "accuracy_vs_compute"):
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
