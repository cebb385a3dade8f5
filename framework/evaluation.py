"""Score a decoder's outputs on the test split: accuracy with a 95% interval, pass@k, lengths, log-probs.

Accuracy averages, over problems, the correctness of the candidates the decoder chose (one for
greedy/beam; every sample for `sample`, i.e. the expected accuracy of a single sample). What only one
decoder measures (best-of-N's curve) comes from that decoder's `metrics` (framework/decoding.py).
"""
from __future__ import annotations

import math

from framework.decoding import Correctness, Decoded, Decoder, Decoding

Z_95 = 1.959963984540054


def wilson_interval(successes: float, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (better than the normal one near 0 and 1)."""
    if trials == 0:
        return (0.0, 0.0)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends: no 1e-17 above an observed 0
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return (low, high)


def mean_interval(scores: list[float], z: float = Z_95) -> tuple[float, float, float]:
    """Mean of per-problem scores in [0, 1] with a 95% interval: Wilson when every score is 0 or 1,
    else the normal approximation over problems (per-problem sample means)."""
    count = len(scores)
    if count == 0:
        return (0.0, 0.0, 0.0)
    mean = sum(scores) / count
    if all(score in (0.0, 1.0) for score in scores):
        low, high = wilson_interval(sum(scores), count, z)
        return (mean, low, high)
    variance = sum((score - mean) ** 2 for score in scores) / max(count - 1, 1)
    half = z * math.sqrt(variance / count)
    return (mean, max(0.0, mean - half), min(1.0, mean + half))


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. (2021): 1 - C(n-c, k) / C(n, k), computed as a stable product."""
    if k > num_samples:
        raise ValueError(f"pass@k needs k <= n (got k={k}, n={num_samples})")
    if num_samples - num_correct < k:
        return 1.0
    product = 1.0
    for i in range(num_samples - num_correct + 1, num_samples + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def pass_k_values(num_samples: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    values = [k for k in (2 ** i for i in range(0, 12)) if k <= num_samples]
    return values if num_samples in values else values + [num_samples]


def chosen_accuracy(decoded: list[Decoded], correct: list[list[bool]]) -> float:
    """`score`'s accuracy: the mean over problems of the share of chosen candidates that are correct."""
    return mean_interval(_chosen_shares(decoded, correct))[0]


def _chosen_shares(decoded: list[Decoded], correct: list[list[bool]]) -> list[float]:
    shares = []
    for result, problem_correct in zip(decoded, correct):
        chosen = set(result.chosen)
        shares.append(sum(problem_correct[i] for i in chosen) / len(chosen))
    return shares


def score(problems, decoding: Decoding, checker, decoder: Decoder | None = None) -> tuple[dict, list[dict]]:
    """Metrics and one record per candidate of `decoding.outputs`. `problems` has question/prompt/gold_answer
    columns. With the `decoder` that decoded them, its own `metrics` join, computed from the checker's
    verdicts on the outputs and on `decoding.reference`."""
    per_problem_flexible, records = [], []
    chosen_lengths, chosen_logprobs, truncated = [], [], 0
    decoded = decoding.outputs
    samples_per_problem = {len(d.candidates) for d in decoded}
    correct_counts, correct_by_problem = [], []
    for index, (problem, result) in enumerate(zip(problems, decoded)):
        verdicts = [checker.check(candidate.text, problem["gold_answer"]) for candidate in result.candidates]
        chosen = set(result.chosen)
        per_problem_flexible.append(sum(verdicts[i].correct_flexible for i in chosen) / len(chosen))
        correct_counts.append(sum(v.correct for v in verdicts))
        correct_by_problem.append([v.correct for v in verdicts])
        for i in chosen:
            chosen_lengths.append(result.candidates[i].num_tokens)
            chosen_logprobs.append(result.candidates[i].logprob)
            truncated += not result.candidates[i].finished
        for i, (candidate, verdict) in enumerate(zip(result.candidates, verdicts)):
            records.append({
                "problem": index, "candidate": i, "chosen": i in chosen, "question": problem["question"],
                "generation": candidate.text, "extracted": verdict.extracted, "gold": problem["gold_answer"],
                "correct": verdict.correct, "correct_flexible": verdict.correct_flexible,
                "logprob": candidate.logprob, "num_tokens": candidate.num_tokens, "finished": candidate.finished,
            })
    accuracy, low, high = mean_interval(_chosen_shares(decoded, correct_by_problem))
    metrics = {
        "accuracy": accuracy, "accuracy_ci_low": low, "accuracy_ci_high": high,
        "accuracy_flexible": sum(per_problem_flexible) / max(len(per_problem_flexible), 1),
        "num_problems": len(correct_by_problem),
        "mean_tokens": sum(chosen_lengths) / max(len(chosen_lengths), 1),
        "mean_logprob": sum(chosen_logprobs) / max(len(chosen_logprobs), 1),
        "truncated_rate": truncated / max(len(chosen_lengths), 1),
    }
    if len(samples_per_problem) == 1 and (num_samples := samples_per_problem.pop()) > 1:
        for k in pass_k_values(num_samples):
            metrics[f"pass@{k}"] = sum(pass_at_k(num_samples, c, k) for c in correct_counts) / len(correct_counts)
    if decoder is not None:
        reference = None if decoding.reference is None else [
            [checker.check(candidate.text, problem["gold_answer"]).correct for candidate in result.candidates]
            for problem, result in zip(problems, decoding.reference)]
        metrics.update(decoder.metrics(decoding, Correctness(correct_by_problem, reference)))
    return metrics, records


def auroc(scores: list[float], labels: list[bool]) -> float | None:
    """Probability that a random correct output scores above a random wrong one (ties count half);
    None when only one class is present. Mann-Whitney U over ranks, O(n log n)."""
    positives = sum(labels)
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    start = 0
    while start < len(order):  # average ranks over ties
        end = start
        while end + 1 < len(order) and scores[order[end + 1]] == scores[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    rank_sum = sum(rank for rank, label in zip(ranks, labels) if label)
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def optimism_diagnostics(records: list[dict], gold_logprobs: list[float]) -> dict:
    """Over-optimism (SOC paper): is a wrong output scored above the gold demonstration?

    over_optimism_rate: share of chosen outputs that are wrong yet have a higher sequence log-prob
    than the gold demonstration of their problem; logprob_auroc: how well the sequence log-prob
    separates right from wrong chosen outputs (0.5 = not at all).
    """
    chosen = [record for record in records if record["chosen"]]
    for record in records:
        record["gold_logprob"] = gold_logprobs[record["problem"]]
    over = [not r["correct"] and r["logprob"] > gold_logprobs[r["problem"]] for r in chosen]
    return {
        "gold_logprob_mean": sum(gold_logprobs) / max(len(gold_logprobs), 1),
        "over_optimism_rate": sum(over) / max(len(over), 1),
        "over_optimism_rate_among_wrong": sum(over) / max(sum(not r["correct"] for r in chosen), 1),
        "logprob_auroc": auroc([r["logprob"] for r in chosen], [r["correct"] for r in chosen]),
    }
