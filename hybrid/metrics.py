"""Per-domain classification metrics, a Youden threshold, and a cross-domain summary.

Everything returns plain Python numbers so results can be appended to ``results.jsonl``
as they are. Undefined quantities (AUC of a domain holding a single class, sensitivity of
a domain without positives) are ``nan`` rather than exceptions: one odd hospital must not
abort the evaluation of all the others.

The AUC is computed here with a rank (Mann-Whitney) formula rather than by calling
scikit-learn, because the same code then gives the bootstrap CI for all resamples at
once; ``tests/test_metrics.py`` checks it against ``sklearn.metrics.roc_auc_score``. The ROC points
are computed here too, so importing this module (every command does) does not import scikit-learn:
a command that reads no MedMNIST file (the medmnist package imports it) starts about a second sooner.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

SUMMARY_KEYS = ("auc", "sensitivity", "specificity", "balanced_accuracy", "accuracy")

# Upper bound on resamples x samples held in memory at once by the bootstrap.
_BOOTSTRAP_CHUNK_CELLS = 2_000_000


def _labels(y_true) -> np.ndarray:
    """Labels as a flat int array; MedMNIST stores them as (N, 1)."""
    return np.asarray(y_true).reshape(-1).astype(np.int64)


def _probs(probs, n: int) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != n:
        raise ValueError(
            f"probs must be an (N, C) array of class probabilities with N={n} rows matching "
            f"y_true; got shape {probs.shape}"
        )
    return probs


def choose_threshold(y_true, scores, positive_class: int = 1) -> float:
    """Threshold on the positive-class probability maximising Youden's J.

    Meant for SOURCE validation data: the threshold is then fixed for every target
    domain, as it would be for a deployed model. A sample is called positive when
    ``score >= threshold``; candidates are the observed scores. J is compared in exact
    integer arithmetic (``tp * n_neg - fp * n_pos``), and ties go to the highest
    threshold, so the choice is deterministic. With a single class present J is
    undefined and 0.5 is returned.
    """
    y = _labels(y_true) == positive_class
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return 0.5
    thresholds, tp, fp = _counts_above(y, scores)
    j = tp * n_neg - fp * n_pos  # Youden's J times n_pos * n_neg
    return float(thresholds[np.argmax(j)])


def _counts_above(positive: np.ndarray, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each distinct score, highest first, with the positives and negatives scoring at least it."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-s, kind="mergesort")
    s, positive = s[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each distinct score
    return s[last], np.cumsum(positive)[last], np.cumsum(~positive)[last]


def _weighted_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUC for each row of sample ``weights`` (B, N); ``nan`` where a class has no weight.

    Resampling with replacement is the same as weighting each sample by how often it was
    drawn, so one sort of the scores serves every bootstrap resample. Ties count 1/2.
    """
    order = np.argsort(scores, kind="mergesort")
    s, pos = scores[order], positive[order]
    w = weights[:, order].astype(np.float64)
    starts = np.flatnonzero(np.r_[True, np.diff(s) != 0])  # groups of tied scores
    pos_w = np.add.reduceat(w * pos, starts, axis=1)
    neg_w = np.add.reduceat(w * ~pos, starts, axis=1)
    neg_below = np.cumsum(neg_w, axis=1) - neg_w
    wins = (pos_w * (neg_below + 0.5 * neg_w)).sum(axis=1)
    total = pos_w.sum(axis=1) * neg_w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, wins / total, np.nan)


def binary_auc(scores, positive) -> float:
    """AUC of ``scores`` for the boolean labels ``positive`` (ties count 1/2); ``nan`` if one class is empty."""
    scores = np.asarray(scores, dtype=np.float64)
    return float(_weighted_auc(scores, np.asarray(positive, dtype=bool), np.ones((1, scores.size)))[0])


def _auc(y: np.ndarray, probs: np.ndarray, weights: np.ndarray, positive_class: int) -> np.ndarray:
    """Binary AUC of ``positive_class``, or one-vs-rest macro AUC, for each weight row.

    The macro average runs over the classes present (with both positives and negatives)
    in the unweighted data; a resample missing one of them gives ``nan`` and is skipped.
    """
    if probs.shape[1] == 2:
        return _weighted_auc(probs[:, positive_class], y == positive_class, weights)
    present = [k for k in range(probs.shape[1]) if 0 < np.sum(y == k) < y.size]
    if not present:
        return np.full(weights.shape[0], np.nan)
    per_class = [_weighted_auc(probs[:, k], y == k, weights) for k in present]
    return np.mean(per_class, axis=0)  # nan if any class is undefined in that resample


def _bootstrap_auc_ci(y, probs, positive_class, n_bootstrap, seed) -> tuple[float, float]:
    """95% percentile CI of the AUC from ``n_bootstrap`` seeded resamples."""
    n = y.size
    if n_bootstrap <= 0 or n == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CHUNK_CELLS // n)
    aucs = []
    for start in range(0, n_bootstrap, chunk):
        b = min(chunk, n_bootstrap - start)
        idx = rng.integers(0, n, size=(b, n))
        flat = (idx + np.arange(b)[:, None] * n).ravel()
        counts = np.bincount(flat, minlength=b * n).reshape(b, n)
        aucs.append(_auc(y, probs, counts, positive_class))
    aucs = np.concatenate(aucs)
    aucs = aucs[~np.isnan(aucs)]  # resamples that drew a single class
    if aucs.size == 0:
        return math.nan, math.nan
    low, high = np.percentile(aucs, [2.5, 97.5])
    return float(low), float(high)


def _safe_ratio(num, den) -> float:
    return float(num / den) if den > 0 else math.nan


def _nanmean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def domain_metrics(
    y_true,
    probs,
    threshold: float = 0.5,
    positive_class: int = 1,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict:
    """Metrics of one domain from labels (N,) and class probabilities (N, C).

    Binary (C == 2): AUC of ``probs[:, positive_class]`` (``positive_class`` may be 0, as
    for BreastMNIST's malignant label), and sensitivity, specificity, accuracy and
    balanced accuracy of ``probs[:, positive_class] >= threshold``.
    Multi-class: one-vs-rest macro AUC and argmax predictions (``threshold`` and
    ``positive_class`` unused); sensitivity is the macro recall, specificity the macro
    per-class specificity (each class against the rest).

    ``auc_ci_low``/``auc_ci_high`` are a seeded 95% percentile bootstrap CI. A domain with
    a single class gets ``nan`` for the AUC and its CI (and for any rate without a
    denominator) instead of an exception. Balanced accuracy averages the recall of the
    classes present in ``y_true``, as scikit-learn does.
    """
    y = _labels(y_true)
    probs = _probs(probs, y.size)
    n_classes = probs.shape[1]
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}) to match probs with {n_classes} columns")
    if not np.isfinite(probs).all():  # a diverged network: sorting NaN scores would invent an AUC and rates
        return _undefined_metrics(y, n_classes, threshold, positive_class)
    auc = float(_auc(y, probs, np.ones((1, y.size)), positive_class)[0]) if y.size else math.nan
    low, high = _bootstrap_auc_ci(y, probs, positive_class, n_bootstrap, seed)
    out = {"auc": auc, "auc_ci_low": low, "auc_ci_high": high}

    if n_classes == 2:
        if positive_class not in (0, 1):
            raise ValueError(f"positive_class must be 0 or 1 for binary probs, got {positive_class}")
        positive = y == positive_class
        called = probs[:, positive_class] >= threshold
        sens = _safe_ratio(np.sum(called & positive), np.sum(positive))
        spec = _safe_ratio(np.sum(~called & ~positive), np.sum(~positive))
        out.update(
            sensitivity=sens,
            specificity=spec,
            accuracy=_safe_ratio(np.sum(called == positive), y.size),
            balanced_accuracy=_nanmean([sens, spec]),
            threshold=float(threshold),
            n=int(y.size),
            n_pos=int(positive.sum()),
        )
        return out

    pred = probs.argmax(axis=1)
    recalls, specs = [], []
    for k in range(n_classes):
        is_k, said_k = y == k, pred == k
        recalls.append(_safe_ratio(np.sum(said_k & is_k), np.sum(is_k)))
        specs.append(_safe_ratio(np.sum(~said_k & ~is_k), np.sum(~is_k)))
    macro_recall = _nanmean(recalls)
    out.update(
        sensitivity=macro_recall,
        specificity=_nanmean(specs),
        accuracy=_safe_ratio(np.sum(pred == y), y.size),
        balanced_accuracy=macro_recall,  # mean recall over the classes present
        n=int(y.size),
        # one-vs-rest AUC of each class (None where the class or its complement is absent)
        auc_per_class=[float(_weighted_auc(probs[:, k], y == k, np.ones((1, y.size)))[0])
                       if 0 < np.sum(y == k) < y.size else None for k in range(n_classes)],
    )
    return out


def _undefined_metrics(y: np.ndarray, n_classes: int, threshold: float, positive_class: int) -> dict:
    """domain_metrics' keys, every score nan: the probabilities were not all finite."""
    out = {key: math.nan for key in ("auc", "auc_ci_low", "auc_ci_high", "sensitivity", "specificity", "accuracy",
                                     "balanced_accuracy")} | {"n": int(y.size)}
    if n_classes == 2:
        return out | {"threshold": float(threshold), "n_pos": int(np.sum(y == positive_class))}
    return out | {"auc_per_class": [None] * n_classes}


def summarize_domains(per_domain: Mapping[str, Mapping], keys: Sequence[str] = SUMMARY_KEYS) -> dict:
    """Mean, population std (ddof=0), worst value and worst domain of each metric.

    The domains are the whole population of interest rather than a sample, hence
    ddof=0. ``nan`` values (and missing keys) are ignored; a metric that is ``nan``
    everywhere gets ``nan`` statistics and ``worst_domain=None``. Higher is better for
    every default key, so the worst is the minimum.
    """
    summary = {}
    for key in keys:
        values = {
            name: float(m[key])
            for name, m in per_domain.items()
            if key in m and m[key] is not None and not math.isnan(float(m[key]))
        }
        if not values:
            summary[key] = {"mean": math.nan, "std": math.nan, "worst": math.nan,
                            "worst_domain": None, "n_domains": 0}
            continue
        arr = np.array(list(values.values()))
        worst_domain = min(values, key=values.get)  # first domain wins a tie
        summary[key] = {
            "mean": float(arr.mean()),
            "std": float(arr.std(ddof=0)),
            "worst": values[worst_domain],
            "worst_domain": worst_domain,
            "n_domains": len(values),
        }
    return summary


def summarize(per_domain: Mapping[str, Mapping], unseen: Sequence[str]) -> dict:
    """`summarize_domains` over the unseen domains only (the clean test split is in-domain)."""
    return summarize_domains({k: v for k, v in per_domain.items() if k in unseen})


def threshold_from_probs(y_val, probs: np.ndarray, positive_class: int) -> float:
    """Youden threshold on the positive-class probability; 0.5 (unused) for multi-class argmax."""
    if probs.shape[1] != 2:
        return 0.5
    return choose_threshold(np.asarray(y_val), probs[:, positive_class], positive_class)


def roc_points(y_true, probs, positive_class: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates of ``positive_class`` against the rest, for ROC plots."""
    y = _labels(y_true)
    probs = _probs(probs, y.size)
    _, tp, fp = _counts_above(y == positive_class, probs[:, positive_class])
    with np.errstate(invalid="ignore", divide="ignore"):  # one class only: nan rates, as scikit-learn gives
        return np.r_[0, fp] / fp[-1], np.r_[0, tp] / tp[-1]


def roc_area(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Trapezoidal area under ROC points; with `roc_points` it equals the AUC, ties counted 1/2."""
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
