"""The report's statistics: an accuracy interval over seeds and problems, the paired bootstrap of two
methods' per-problem scores with its p-value, Holm's correction, and the difference a comparison can detect."""
from __future__ import annotations

import math
from dataclasses import dataclass

from framework.evaluation import Z_95, mean_interval, wilson_interval

SIGNIFICANCE_LEVEL = 0.05  # family-wise, after Holm's correction over every comparison in one report
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
Z_POWER_80 = 0.8416  # the standard normal's 80% quantile


def seed_problem_interval(matrix, z: float = Z_95) -> tuple[float, float, float]:
    """Mean accuracy of a seeds x problems matrix of per-problem scores, with a 95% interval that counts
    both sources of variation: which problems were drawn and which seeds were trained.

    The matrix is read as the crossed random-effects model y[s, i] = mu + u_s + v_i + e_si (seed effect,
    problem difficulty, interaction). The grand mean's variance is s2_u / S + s2_v / P + s2_e / (S P);
    the three components come from the two-way ANOVA mean squares (method of moments, each truncated
    at 0): s2_e = MS_error, s2_u = (MS_seeds - MS_error) / P, s2_v = (MS_problems - MS_error) / S.
    Without truncation this is (MS_seeds + MS_problems - MS_error) / (S P). The interval is the normal
    one, clipped to [0, 1]. Why not just an interval over problems of seed-averaged scores: it ignores
    that a whole seed can be better or worse (u_s is shared by every problem); with 3 seeds the seed
    term rests on 2 degrees of freedom, so read the interval as approximate.

    With one seed (or one problem) it is the per-job interval of results.json (`evaluation.mean_interval`:
    Wilson for 0/1 scores); when every entry is the same (all right or all wrong) the variance estimate
    is 0 and the Wilson interval over problems is used rather than a zero-width one.
    Hand-written: the closed form is a few lines of numpy, where a library would mean fitting a mixed
    model (statsmodels, not a dependency) for one variance.
    """
    import numpy as np

    matrix = np.asarray(matrix, dtype=float)
    seeds, problems = matrix.shape
    if seeds == 1 or problems == 1:
        return mean_interval([float(v) for v in matrix.mean(axis=0)], z)
    mean = float(matrix.mean())
    by_seed, by_problem = matrix.mean(axis=1), matrix.mean(axis=0)
    ms_seeds = problems * float(((by_seed - mean) ** 2).sum()) / (seeds - 1)
    ms_problems = seeds * float(((by_problem - mean) ** 2).sum()) / (problems - 1)
    residual = matrix - by_seed[:, None] - by_problem[None, :] + mean
    ms_error = float((residual ** 2).sum()) / ((seeds - 1) * (problems - 1))
    variance = (max(0.0, (ms_seeds - ms_error) / problems) / seeds
                + max(0.0, (ms_problems - ms_error) / seeds) / problems + ms_error / (seeds * problems))
    if variance <= 1e-15 and mean in (0.0, 1.0):
        low, high = wilson_interval(mean * problems, problems, z)
        return (mean, low, high)
    half = z * math.sqrt(max(variance, 0.0))
    return (mean, max(0.0, mean - half), min(1.0, mean + half))


@dataclass
class Comparison:
    """A method against the baseline with the same decoder: accuracy difference in [-1, 1]."""
    difference: float
    low: float
    high: float
    p_value: float
    seeds: list[int]
    num_problems: int
    p_holm: float | None = None

    @property
    def significant(self) -> bool:
        return self.p_holm is not None and self.p_holm < SIGNIFICANCE_LEVEL


def paired_bootstrap(method: list[float], baseline: list[float], resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float, float]:
    """(mean difference, 95% percentile interval low, high, two-sided p) of method - baseline, paired by
    problem: problems are resampled with replacement, the same indices for both methods.

    The p-value tests "no difference" by the shifted bootstrap (Efron & Tibshirani 1993, 16.4): the
    resampled differences, centred at the observed one, stand in for the null distribution, and
    p = (1 + #{|d* - d| >= |d|}) / (resamples + 1), so p = 1 for identical methods and p = 1 / (B + 1)
    at the least when every resample is further from 0 than the null allows. Deterministic for a seed.
    Seeds are averaged per problem before this: the test is over problems, given the trained seeds.
    Hand-written on numpy: scipy (whose `stats.bootstrap` gives intervals but no p-value) is not a
    dependency, and the paired resampling is four lines.
    """
    import numpy as np

    difference = np.asarray(method, dtype=float) - np.asarray(baseline, dtype=float)
    observed = float(difference.mean())
    rng = np.random.default_rng(seed)
    chunks, remaining = [], resamples
    while remaining > 0:  # chunked: B x P indices at once would need GBs for GSM8K-sized test sets
        size = min(remaining, max(1, 2_000_000 // max(len(difference), 1)))
        chunks.append(difference[rng.integers(0, len(difference), size=(size, len(difference)))].mean(axis=1))
        remaining -= size
    means = np.concatenate(chunks)
    extreme = int((np.abs(means - observed) >= abs(observed) - 1e-12).sum())
    low, high = np.percentile(means, [2.5, 97.5])
    return observed, float(low), float(high), (1 + extreme) / (resamples + 1)


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given): reject where adjusted < alpha.
    (statsmodels' multipletests does this too, but is not a dependency.)"""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def paired_scores_comparison(ours: dict[int, dict[int, float]] | None, theirs: dict[int, dict[int, float]] | None,
                             resamples: int = BOOTSTRAP_RESAMPLES) -> Comparison | None:
    """Two seed -> problem -> score maps on the seeds and problems both have, seeds averaged per problem."""
    if not ours or not theirs:
        return None
    seeds = sorted(set(ours) & set(theirs))
    if not seeds:
        return None
    problems = sorted(set.intersection(*(set(ours[s]) & set(theirs[s]) for s in seeds)))
    if not problems:
        return None
    method = [sum(ours[s][i] for s in seeds) / len(seeds) for i in problems]
    base = [sum(theirs[s][i] for s in seeds) / len(seeds) for i in problems]
    difference, low, high, p_value = paired_bootstrap(method, base, resamples)
    return Comparison(difference, low, high, p_value, seeds, len(problems))


def minimum_detectable_difference(comparison: Comparison) -> float:
    """The difference a paired comparison with this one's standard error detects with 80% power at a
    two-sided 5% level (unadjusted): (z_0.975 + z_0.8) x SE, the SE read off its 95% bootstrap interval."""
    return (Z_95 + Z_POWER_80) * (comparison.high - comparison.low) / (2 * Z_95)
