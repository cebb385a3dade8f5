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


def _crossed_mean_squares(matrix) -> tuple[float, float, float, float, float]:
    """(grand mean, MS_seeds, MS_problems, MS_error, variance of the grand mean) of a seeds x problems matrix under
    the crossed random-effects model y[s, i] = mu + u_s + v_i + e_si, each variance component estimated by the
    method of moments and truncated at 0 (at least 2 seeds and 2 problems)."""
    seeds, problems = matrix.shape
    mean = float(matrix.mean())
    by_seed, by_problem = matrix.mean(axis=1), matrix.mean(axis=0)
    ms_seeds = problems * float(((by_seed - mean) ** 2).sum()) / (seeds - 1)
    ms_problems = seeds * float(((by_problem - mean) ** 2).sum()) / (problems - 1)
    residual = matrix - by_seed[:, None] - by_problem[None, :] + mean
    ms_error = float((residual ** 2).sum()) / ((seeds - 1) * (problems - 1))
    variance = (max(0.0, (ms_seeds - ms_error) / problems) / seeds
                + max(0.0, (ms_problems - ms_error) / seeds) / problems + ms_error / (seeds * problems))
    return mean, ms_seeds, ms_problems, ms_error, variance


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
    mean, ms_seeds, ms_problems, ms_error, variance = _crossed_mean_squares(matrix)
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
    standard_error: float | None = None  # of the difference; None: read off the interval as a normal one's

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
    Seeds are averaged per problem before this: the test is over problems, given the trained seeds; with
    several seeds the report uses `seed_problem_difference` instead. Hand-written on numpy: scipy's
    `stats.bootstrap` gives intervals but no p-value, and the paired resampling is four lines.
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
    """Two seed -> problem -> score maps on the seeds and problems both have. One seed: the paired bootstrap over
    problems. Several: `seed_problem_difference`, whose interval also counts how much the difference moves from
    seed to seed (a method that wins on one trained seed and loses on another is not resolved)."""
    if not ours or not theirs:
        return None
    seeds = sorted(set(ours) & set(theirs))
    if not seeds:
        return None
    problems = sorted(set.intersection(*(set(ours[s]) & set(theirs[s]) for s in seeds)))
    if not problems:
        return None
    if len(seeds) > 1 and len(problems) > 1:
        difference, low, high, p_value, standard_error = seed_problem_difference(
            [[ours[s][i] - theirs[s][i] for i in problems] for s in seeds])
        return Comparison(difference, low, high, p_value, seeds, len(problems), standard_error=standard_error)
    method = [sum(ours[s][i] for s in seeds) / len(seeds) for i in problems]
    base = [sum(theirs[s][i] for s in seeds) / len(seeds) for i in problems]
    difference, low, high, p_value = paired_bootstrap(method, base, resamples)
    return Comparison(difference, low, high, p_value, seeds, len(problems))


def seed_problem_difference(differences) -> tuple[float, float, float, float, float]:
    """(mean, 95% low, high, two-sided p, standard error) of a seeds x problems matrix of paired differences (method - reference,
    same seed and problem), as `seed_problem_interval` reads accuracy: the crossed random-effects model
    d[s, i] = delta + u_s + v_i + e_si, so that the interval counts which problems were drawn AND which seeds were
    trained (u_s: the part of the difference a whole seed shares). With 3 seeds the seed component rests on 2
    degrees of freedom: the interval uses Student's t with Satterthwaite's degrees of freedom for the variance
    (MS_seeds + MS_problems - MS_error) / (S P), not the normal, so few seeds widen it rather than pass for
    certainty. p: the same t test of delta = 0. (statsmodels' mixed models would fit this by REML, a dependency
    and an iterative fit for what the balanced design gives in closed form.)"""
    import numpy as np
    from scipy import stats

    matrix = np.asarray(differences, dtype=float)
    seeds, problems = matrix.shape
    mean, ms_seeds, ms_problems, ms_error, variance = _crossed_mean_squares(matrix)
    if variance <= 0:  # identical on every seed and problem
        return mean, mean, mean, 1.0 if mean == 0 else 0.0, 0.0
    # Satterthwaite: the degrees of freedom of a sum of mean squares, at least the seeds' S - 1
    combined = ms_seeds + ms_problems - ms_error
    spread = ms_seeds ** 2 / (seeds - 1) + ms_problems ** 2 / (problems - 1) \
        + ms_error ** 2 / ((seeds - 1) * (problems - 1))
    freedom = max(seeds - 1.0, combined ** 2 / spread) if combined > 0 and spread > 0 else seeds - 1.0
    standard_error = math.sqrt(variance)
    half = float(stats.t.ppf(0.975, freedom)) * standard_error
    p_value = float(2 * stats.t.sf(abs(mean) / standard_error, freedom))
    return mean, mean - half, mean + half, p_value, standard_error


def minimum_detectable_difference(comparison: Comparison) -> float:
    """The difference a paired comparison with this one's standard error detects with 80% power at a
    two-sided 5% level (unadjusted): (z_0.975 + z_0.8) x SE, the SE the comparison computed (several seeds) or
    read off its 95% bootstrap interval (one seed). Normal quantiles: with few seeds the t test needs more."""
    if comparison.standard_error is not None:
        return (Z_95 + Z_POWER_80) * comparison.standard_error
    return (Z_95 + Z_POWER_80) * (comparison.high - comparison.low) / (2 * Z_95)
