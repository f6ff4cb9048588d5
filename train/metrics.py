"""Evaluation metrics: Kaggle weighted log loss, ROC AUC, bootstrap intervals, operating points.

Written with numpy only (no scikit-learn at run time) so that every number in a report
comes from one small, tested place. METHOD.md "Metrics" defines the weighted log loss:
for each class the mean binary log loss over all slices, weights 2 for ``any`` and 1 for
each subtype, the weighted sum divided by 7 (the sum of the weights); probabilities are
clipped to ``[1e-15, 1 - 1e-15]`` as Kaggle's scorer does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from models.labels import CLASS_WEIGHTS, NUM_CLASSES

#: Kaggle's clip for the RSNA 2019 scorer.
EPS = 1e-15


def _as_2d(y: ArrayLike, name: str) -> NDArray[np.float64]:
    arr = np.asarray(y, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be (N, C), got shape {arr.shape}")
    return arr


def per_class_log_loss(y_true: ArrayLike, y_prob: ArrayLike) -> NDArray[np.float64]:
    """Mean binary log loss per column of ``(N, C)`` arrays (clipped at :data:`EPS`)."""
    t = _as_2d(y_true, "y_true")
    p = np.clip(_as_2d(y_prob, "y_prob"), EPS, 1.0 - EPS)
    if t.shape != p.shape:
        raise ValueError(f"y_true {t.shape} and y_prob {p.shape} differ in shape")
    if t.shape[0] == 0:
        raise ValueError("log loss of an empty set is undefined")
    losses: NDArray[np.float64] = -(t * np.log(p) + (1.0 - t) * np.log1p(-p)).mean(axis=0)
    return losses


def weighted_log_loss(
    y_true: ArrayLike, y_prob: ArrayLike, weights: Sequence[float] = CLASS_WEIGHTS
) -> float:
    """Kaggle RSNA 2019 weighted multi-label log loss of ``(N, 6)`` arrays, canonical order.

    ``sum_c w_c * mean_i BCE(y_ic, p_ic) / sum_c w_c`` with weights (2, 1, 1, 1, 1, 1).
    """
    losses = per_class_log_loss(y_true, y_prob)
    w = np.asarray(weights, dtype=np.float64)
    if losses.shape[0] != w.shape[0]:
        raise ValueError(f"expected {w.shape[0]} classes, got {losses.shape[0]}")
    return float((losses * w).sum() / w.sum())


def _ranks(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """1-based ranks with ties given their average rank (what Mann-Whitney U needs)."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    # boundaries of runs of equal values
    starts = np.r_[0, np.flatnonzero(np.diff(xs)) + 1]
    ends = np.r_[starts[1:], len(xs)]
    avg = (starts + ends + 1) / 2.0  # mean of 1-based ranks start+1 .. end
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auc(y_true: ArrayLike, score: ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney U / n_pos n_neg, ties counted half).

    Returns ``nan`` when only one class is present: there is no ROC curve then, and a
    report must say "n/a" rather than invent 0.5.
    """
    t = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    if t.shape != s.shape:
        raise ValueError(f"y_true {t.shape} and score {s.shape} differ in shape")
    n_pos = int(t.sum())
    n_neg = t.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = _ranks(s)
    u = r[t].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(
    y_true: ArrayLike, score: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """``(fpr, tpr, thresholds)`` at each distinct score, highest threshold first.

    A case is called positive when ``score >= threshold``; the first point is (0, 0) at
    threshold ``+inf``, the last (1, 1).
    """
    t = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    order = np.argsort(-s, kind="mergesort")
    s, t = s[order], t[order]
    distinct = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(t)[distinct].astype(np.float64)
    fps = (distinct + 1 - tps).astype(np.float64)
    n_pos, n_neg = max(int(t.sum()), 1), max(int((~t).sum()), 1)
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / n_neg]
    thr = np.r_[np.inf, s[distinct]]
    return fpr, tpr, thr


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile-bootstrap confidence interval."""

    estimate: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.estimate:.4f} ({self.low:.4f}-{self.high:.4f})"


def _percentile_bootstrap(
    statistic: Callable[[NDArray[np.intp] | slice], float],
    n: int,
    n_boot: int,
    level: float,
    seed: int,
) -> Interval:
    """``statistic`` of all ``n`` cases, with a percentile interval over resamples of them.

    ``statistic`` gets the indices of the cases to use (``slice(None)`` = all of them).
    Resamples where it is not finite (``nan``: a class left empty, for AUC) are dropped,
    as is usual for AUC on small sets; with too few valid resamples the interval is
    ``nan``.
    """
    estimate = statistic(slice(None))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        v = statistic(rng.integers(0, n, n))
        if np.isfinite(v):
            values.append(v)
    if len(values) < max(10, n_boot // 10):
        return Interval(estimate, float("nan"), float("nan"))
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(np.asarray(values), [alpha, 1.0 - alpha])
    return Interval(estimate, float(lo), float(hi))


def bootstrap_ci(
    y_true: ArrayLike,
    score: ArrayLike,
    metric: Callable[[NDArray[np.float64], NDArray[np.float64]], float] = auc,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of ``metric`` over cases resampled with replacement.

    Resamples that leave one class empty (metric ``nan``) are dropped, as is usual for
    AUC on small sets; with too few valid resamples the interval is ``nan``.
    """
    t = np.asarray(y_true, dtype=np.float64).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    return _percentile_bootstrap(lambda idx: metric(t[idx], s[idx]), t.size, n_boot, level, seed)


def paired_bootstrap_diff(
    y_true: ArrayLike,
    score_a: ArrayLike,
    score_b: ArrayLike,
    metric: Callable[[NDArray[np.float64], NDArray[np.float64]], float] = auc,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile interval of ``metric(a) - metric(b)`` on the same resampled cases.

    For ablations (CNN-LSTM against 2D on one test set): resampling the cases once for
    both models keeps their correlation, so the interval of the difference is much
    narrower than two separate intervals would suggest. An interval that contains 0
    means the data cannot tell the two apart at this ``level``. Scores of shape
    ``(k, n)`` (k training runs of each model scored on the same n cases) give the mean
    over the k paired differences, resampling the cases once for all runs.
    """
    t = np.asarray(y_true, dtype=np.float64).ravel()
    a = np.atleast_2d(np.asarray(score_a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(score_b, dtype=np.float64))
    if a.shape != b.shape or a.shape[1] != t.size:
        raise ValueError(f"sizes differ: {t.size} labels, scores {a.shape} and {b.shape}")

    def diff(idx: NDArray[np.intp] | slice) -> float:
        ti = t[idx]
        runs = zip(a, b, strict=True)
        return float(np.mean([metric(ti, ra[idx]) - metric(ti, rb[idx]) for ra, rb in runs]))

    return _percentile_bootstrap(diff, t.size, n_boot, level, seed)


def sensitivity_specificity(
    y_true: ArrayLike, score: ArrayLike, threshold: float
) -> tuple[float, float]:
    """Sensitivity and specificity when ``score >= threshold`` calls a case positive."""
    t = np.asarray(y_true).astype(bool).ravel()
    pred = np.asarray(score, dtype=np.float64).ravel() >= threshold
    n_pos, n_neg = int(t.sum()), int((~t).sum())
    sens = float((pred & t).sum() / n_pos) if n_pos else float("nan")
    spec = float((~pred & ~t).sum() / n_neg) if n_neg else float("nan")
    return sens, spec


def threshold_for_sensitivity(y_true: ArrayLike, score: ArrayLike, target: float) -> float:
    """The highest threshold whose sensitivity is at least ``target``.

    The highest such threshold gives the best specificity for that sensitivity. With no
    positive cases the threshold is 0.5 (nothing to calibrate against).
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target}")
    t = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    pos = np.sort(s[t])[::-1]
    if pos.size == 0:
        return 0.5
    k = int(np.ceil(target * pos.size - 1e-9))  # positives that must score >= threshold
    return float(pos[max(k, 1) - 1])


def study_scores(slice_probs: Sequence[NDArray[np.floating]]) -> NDArray[np.float64]:
    """Study score per class = max over its slices (METHOD.md "Model"); ``(N, 6)``."""
    if not slice_probs:
        return np.zeros((0, NUM_CLASSES), dtype=np.float64)
    return np.stack([np.asarray(p, dtype=np.float64).max(axis=0) for p in slice_probs])
