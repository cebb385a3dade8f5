"""The report's check of every job: accuracy, accuracy_flexible, the problem count and pass@k recomputed
from its generations.jsonl alone, against what its results.json says."""
from __future__ import annotations

from framework.evaluation import pass_at_k, pass_k_values
from framework.report.sweep import Run, scores_from_rows

NO_GENERATIONS = "no generations.jsonl to recompute from"


def recompute_from_generations(rows: list[dict]) -> dict:
    """accuracy, accuracy_flexible, num_problems and pass@k (k = 1, 2, 4, ...) recomputed from the scored
    generations alone, the way `evaluation.score` defines them."""
    scores = scores_from_rows(rows)
    flexible: dict[int, list[int]] = {}
    candidates: dict[int, list[bool]] = {}
    for row in rows:
        candidates.setdefault(int(row["problem"]), []).append(bool(row["correct"]))
        if row["chosen"] and "correct_flexible" in row:
            flexible.setdefault(int(row["problem"]), []).append(int(bool(row["correct_flexible"])))
    values = {"accuracy": sum(scores.values()) / max(len(scores), 1), "num_problems": len(scores)}
    if flexible:
        values["accuracy_flexible"] = sum(sum(v) / len(v) for v in flexible.values()) / len(flexible)
    sizes = {len(verdicts) for verdicts in candidates.values()}
    if len(sizes) == 1 and (num_samples := sizes.pop()) > 1:
        for k in pass_k_values(num_samples):
            values[f"pass@{k}"] = (sum(pass_at_k(num_samples, sum(v), k) for v in candidates.values())
                                   / len(candidates))
    return values


def check_against_generations(run: Run, tolerance: float = 1e-9) -> list[str]:
    """Disagreements between results.json and a recomputation from generations.jsonl (empty: they agree).
    A job without generations.jsonl reports that instead."""
    if run.generations_file is None:
        return [NO_GENERATIONS]
    problems = []
    for key, value in recompute_from_generations(run.generations()).items():
        stored = run.result.metrics.get(key)
        if stored is None or abs(float(stored) - value) > tolerance:
            problems.append(f"{key}: results.json has {stored}, generations.jsonl gives {value:.6g}")
    return problems


def run_checks(runs: list[Run]) -> list[str]:
    """Recompute every job from its generations and say whether results.json agrees."""
    lines, agreeing, unchecked = [], 0, []
    for run in runs:
        problems = check_against_generations(run)
        if problems == [NO_GENERATIONS]:
            unchecked.append(run.name)
        elif problems:
            lines.append(f"WARNING `{run.name}`: results.json disagrees with generations.jsonl: " + "; ".join(problems))
        else:
            agreeing += 1
    checked = len(runs) - len(unchecked)
    summary = (f"accuracy, pass@k and problem counts recomputed from generations.jsonl agree with results.json "
               f"for {agreeing}/{checked} jobs")
    lines.insert(0, summary + (f"; {len(unchecked)} job(s) have no generations.jsonl" if unchecked else "") + ".")
    return lines
