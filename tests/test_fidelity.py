"""framework/report/fidelity.py: the report's premises and fidelity sections, on hand-made sweeps."""
import json
from types import SimpleNamespace

from framework.report import Run, aggregate, fidelity
from framework.report.sweep import label_runs, scores_from_rows
from framework.results import JobResult


def test_wrong_equation_finds_an_arithmetic_fact_stated_wrongly():
    assert fidelity.wrong_equation("3 + 4 = 8\n#### 8")
    assert not fidelity.wrong_equation("3 + 4 = 7\n7 - 2 = 5\n#### 5")
    assert fidelity.wrong_equation("3 + 4 = 7\n7 * 2 = 15")
    assert not fidelity.wrong_equation("#### 12")  # no equation: a plan error, not a fact error


def test_a_verdict_needs_the_whole_interval_on_one_side():
    assert fidelity._verdict(0.01, 0.05, +1) == "held"
    assert fidelity._verdict(-0.05, -0.01, +1) == "not held"
    assert fidelity._verdict(-0.01, 0.05, +1) == "not resolved"
    assert fidelity._verdict(-0.05, -0.01, -1) == "held"


def _job(tmp_path, name, algorithm, decoder, seed, rows, **decoder_config):
    job = tmp_path / name
    job.mkdir()
    (job / "generations.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    scores = scores_from_rows(rows)
    result = JobResult(algorithm=algorithm, decoder=decoder, decoder_label=decoder, dataset="arith", model="tiny",
                       seed=seed, decoder_config=decoder_config,
                       metrics={"accuracy": sum(scores.values()) / len(scores), "num_problems": len(scores)})
    return Run(result, job_dir=job)


def _row(problem, correct, candidate=0, chosen=True, answer="1", logprob=-1.0, generation="#### 1"):
    return {"problem": problem, "candidate": candidate, "chosen": chosen, "correct": correct, "extracted": answer,
            "logprob": logprob, "num_tokens": 3, "finished": True, "generation": generation}


def test_premises_read_sample_accuracy_and_pass_at_n_from_the_sft_best_of_n_candidates(tmp_path):
    # 4 problems; greedy right on 0 and 1 (0.5). Candidates (2 per problem): problem 0 both right, 1 one
    # right, 2 one right, 3 none: one sample 0.5 (ratio 1.0), pass@2 0.75 (+25 points)
    greedy = _job(tmp_path, "g", "sft", "greedy", 0, [_row(0, True), _row(1, True), _row(2, False, generation="2 + 2 = 5"),
                                                       _row(3, False)])
    candidates = [(0, True), (0, True), (1, True), (1, False), (2, False), (2, True), (3, False), (3, False)]
    bon = _job(tmp_path, "b", "sft", "bon", 0, [_row(p, c, candidate=i % 2, chosen=i % 2 == 0)
                                                for i, (p, c) in enumerate(candidates)], temperature=1.0)
    cells = aggregate([greedy, bon], compare=False)
    text = "\n".join(fidelity.premises_lines(cells))
    assert "| SFT greedy accuracy | 0.5 (seeds: 0.5) | in [0.40, 0.75] | yes |" in text
    assert "| SFT greedy errors that state an arithmetic fact wrongly | 0.5 of 2 |" in text
    assert "| SFT one sample at T = 1.0 / greedy (4 problems) | 1 (seeds: 1) | >= 0.7 | yes |" in text
    assert "| SFT pass@2 - greedy, points | 25 (seeds: 25) | >= 15 | yes |" in text


def test_majority_and_logprob_picks_are_recomputed_from_the_candidates(tmp_path):
    # one problem, 3 candidates: the highest log-prob says 2 (wrong), two others say 1 (right)
    rows = [_row(0, False, 0, True, "2", -0.1), _row(0, True, 1, False, "1", -1.0), _row(0, True, 2, False, "1", -2.0)]
    cell = SimpleNamespace(runs=[_job(tmp_path, "b", "sft", "bon", 0, rows)])
    assert fidelity._selector_scores(cell, "logprob") == {0: {0: 0.0}}
    assert fidelity._selector_scores(cell, "majority") == {0: {0: 1.0}}


def _labelled_job(tmp_path, name, algorithm, decoder, label, seed, correct, **decoder_config):
    run = _job(tmp_path, name, algorithm, decoder, seed, [_row(p, c) for p, c in enumerate(correct)],
               **decoder_config)
    run.result.decoder_label = label
    return run


def test_soc_is_paired_with_sft_under_the_same_width_and_length_penalty(tmp_path):
    """soc_beam_widths sweeps length_penalty 0 and 1 at each width: each SOC cell is compared with the SFT cell of
    the same width AND ranking (before: with whichever SFT cell of that width came first, both rows alike)."""
    n = 40
    jobs = [
        # summed log-prob: SOC right on every problem, SFT on none -> +100 points, held
        _labelled_job(tmp_path, "a", "sft", "beam", "beam(num_beams=4, length_penalty=0.0)", 0, [False] * n,
                      num_beams=4, length_penalty=0.0),
        _labelled_job(tmp_path, "b", "soc", "beam", "beam(num_beams=4, length_penalty=0.0)", 0, [True] * n,
                      num_beams=4, length_penalty=0.0),
        # mean log-prob: the reverse -> -100 points, not held
        _labelled_job(tmp_path, "c", "sft", "beam", "beam(num_beams=4, length_penalty=1.0)", 0, [True] * n,
                      num_beams=4, length_penalty=1.0),
        _labelled_job(tmp_path, "d", "soc", "beam", "beam(num_beams=4, length_penalty=1.0)", 0, [False] * n,
                      num_beams=4, length_penalty=1.0),
    ]
    cells = aggregate(jobs, compare=False)
    from framework.report.aggregate import paired_comparison
    from framework.report.statistics import paired_scores_comparison

    lines = fidelity.fidelity_lines(cells, lambda a, b: paired_comparison(a, b, 200),
                                    lambda a, b: paired_scores_comparison(a, b, 200))
    rows = {line.split(" | ")[1]: line for line in lines[2:]}
    assert "+100.0" in rows["SOC >= SFT, beam width 4, summed log-prob"]
    assert rows["SOC >= SFT, beam width 4, summed log-prob"].endswith("| held |")
    assert "-100.0" in rows["SOC >= SFT, beam width 4, mean log-prob"]
    assert rows["SOC >= SFT, beam width 4, mean log-prob"].endswith("| not held |")


def test_grpo_premise_row_reads_the_share_of_groups_whose_rewards_differ_per_seed(tmp_path):
    values = {0: {"groups_rewards_differ_share": 0.6, "groups_rewards_differ_share_first_tenth": 0.8,
                  "groups_rewards_differ_share_last_tenth": 0.4, "groups_all_right_share": 0.3,
                  "groups_all_wrong_share": 0.1},
              1: {"groups_rewards_differ_share": 0.4, "groups_rewards_differ_share_first_tenth": 0.6,
                  "groups_rewards_differ_share_last_tenth": 0.2, "groups_all_right_share": 0.5,
                  "groups_all_wrong_share": 0.1}}
    runs = []
    for seed, premises in values.items():
        run = _job(tmp_path, f"g{seed}", "grpo", "greedy", seed, [_row(0, True), _row(1, False)])
        run.result.premises = premises
        runs.append(run)
    text = "\n".join(fidelity.premises_lines(aggregate(runs, compare=False)))
    # seed 1 is below 0.5: the premise does not hold for every seed
    assert "| grpo: groups whose rewards differ (the others give no gradient) | 0.5 (seeds: 0.6, 0.4) | >= 0.5 | no |" \
        in text
    assert "| 0.7 (seeds: 0.8, 0.6) / 0.3 (seeds: 0.4, 0.2); 0.4 (seeds: 0.3, 0.5) / 0.1 (seeds: 0.1, 0.1) |" in text


def test_each_prompt_pool_of_a_sharpening_method_has_its_own_premise_rows(tmp_path):
    """bon_sft on the held-out pool and on the test prompts (the paper's protocol) are two rows: each gets its own
    premises (before: a row labelled `bon_sft(prompt_pool=...)` was matched against `bon_sft` and got none)."""
    runs = []
    for pool, right in (("heldout", 0.6), ("test", 0.4)):
        run = _job(tmp_path, f"b{pool}", "bon_sft", "greedy", 0, [_row(0, True), _row(1, False)])
        run.result.algorithm_config = {"prompt_pool": pool}
        run.result.premises = {"greedy_accuracy": 0.5, "prompts": 256, "samples_per_prompt": 16,
                               "best_of_n_logprob": 0.55, "targets_right_share": right}
        runs.append(run)
    label_runs(runs)
    text = "\n".join(fidelity.premises_lines(aggregate(runs, compare=False)))
    assert "| bon_sft(prompt_pool=heldout): share of its SFT targets that are right | 0.6 (seeds: 0.6) |" in text
    assert "| bon_sft(prompt_pool=test): share of its SFT targets that are right | 0.4 (seeds: 0.4) |" in text
