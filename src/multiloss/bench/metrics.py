"""Numbers the benchmark reports: delta_m%, mean and standard deviation."""

import math

import numpy as np

__all__ = ["delta_m", "mean_std"]


def delta_m(metrics, baseline, higher_is_better):
    """delta_m% of a multi-task model against single-task baselines.

    The standard definition (Maninis et al. 2019; Vandenhende et al. 2021):
    the mean over tasks of `(-1)^{h_k} (M_m,k - M_b,k) / M_b,k * 100`, with
    `h_k = 1` when a higher value of task k's metric is better. Lower is
    better; 0 means as good as the single-task models on average.

    Args:
        metrics: dict task -> the multi-task model's metric.
        baseline: dict task -> the single-task model's metric (nonzero).
        higher_is_better: a bool for every task, or a dict task -> bool.
    """
    tasks = list(baseline)
    missing = [t for t in tasks if t not in metrics]
    if missing:
        raise ValueError(f"delta_m: no metric for task(s) {missing}.")
    total = 0.0
    for task in tasks:
        higher = higher_is_better[task] if isinstance(higher_is_better, dict) else higher_is_better
        m, b = float(metrics[task]), float(baseline[task])
        if b == 0.0:
            raise ValueError(f"delta_m: the baseline metric of task {task!r} is 0.")
        sign = -1.0 if higher else 1.0
        total += sign * (m - b) / abs(b) * 100.0
    return total / len(tasks)


def mean_std(values):
    """`{"mean", "std", "n"}` of a list of numbers: the mean, the sample
    standard deviation (ddof=1; 0 for one value) and the count. A
    non-finite value makes both NaN (a diverged run must not vanish from an
    average)."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    array = np.asarray(values, "float64")
    if not np.all(np.isfinite(array)):
        return {"mean": math.nan, "std": math.nan, "n": n}
    if np.all(array == array[0]):
        # Identical runs (a deterministic method): exactly 0, not rounding noise.
        return {"mean": float(array[0]), "std": 0.0, "n": n}
    return {"mean": float(np.mean(array)), "std": float(np.std(array, ddof=1)), "n": n}
