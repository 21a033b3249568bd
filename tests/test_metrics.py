"""Metrics agree with scikit-learn, the Youden threshold with a brute-force search, and the
bootstrap CI behaves like one."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from hybrid.metrics import choose_threshold, domain_metrics, roc_area, roc_points, summarize_domains


def binary_data(n: int, seed: int = 0, signal: float = 1.0):
    """Labels and (N, 2) probabilities where class 1 scores higher on average, with ties."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    logit = signal * (2 * y - 1) + rng.normal(size=n)
    p1 = np.round(1 / (1 + np.exp(-logit)), 2)  # rounding creates tied scores
    return y, np.c_[1 - p1, p1]


def multiclass_data(n: int, n_classes: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), y] += 1.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, probs


@pytest.mark.parametrize("positive_class", [1, 0])
@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_binary_metrics_match_sklearn(positive_class, threshold):
    y, probs = binary_data(300, seed=positive_class)
    m = domain_metrics(y, probs, threshold=threshold, positive_class=positive_class, n_bootstrap=50)

    positive = (y == positive_class).astype(int)
    score = probs[:, positive_class]
    called = (score >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(positive, called, labels=[0, 1]).ravel()
    assert m["auc"] == pytest.approx(roc_auc_score(positive, score), abs=1e-12)
    assert m["sensitivity"] == pytest.approx(recall_score(positive, called))
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["accuracy"] == pytest.approx(accuracy_score(positive, called))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(positive, called))
    assert m["n"] == 300 and m["n_pos"] == int(positive.sum())
    json.dumps(m)  # results are appended to results.jsonl as they are
    assert all(type(v) in (float, int) for v in m.values())


def test_positive_class_zero_uses_column_zero():
    """BreastMNIST: malignant is label 0, so its probability is probs[:, 0]."""
    y = np.array([0, 0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4]])
    m = domain_metrics(y, probs, positive_class=0, n_bootstrap=0)
    assert m["n_pos"] == 3
    assert m["sensitivity"] == pytest.approx(2 / 3)  # malignant 0.9, 0.8 called; 0.4 missed
    assert m["specificity"] == pytest.approx(2 / 3)  # benign 0.3, 0.2 cleared; 0.6 called
    assert m["auc"] == pytest.approx(roc_auc_score(y == 0, probs[:, 0]))


def test_multiclass_metrics_match_sklearn():
    y, probs = multiclass_data(400)
    m = domain_metrics(y, probs, n_bootstrap=50)

    pred = probs.argmax(1)
    cm = confusion_matrix(y, pred, labels=range(4))
    fp = cm.sum(0) - np.diag(cm)
    tn = cm.sum() - cm.sum(0) - cm.sum(1) + np.diag(cm)
    assert m["auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"), abs=1e-12)
    assert m["sensitivity"] == pytest.approx(recall_score(y, pred, average="macro"))
    assert m["specificity"] == pytest.approx(np.mean(tn / (tn + fp)))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))


def test_labels_of_shape_n_by_1_are_accepted():
    """MedMNIST stores labels as (N, 1)."""
    y, probs = binary_data(50)
    assert domain_metrics(y[:, None], probs, n_bootstrap=0) == domain_metrics(y, probs, n_bootstrap=0)


def brute_force_youden(y, scores):
    """Highest threshold t (among observed scores) maximising TPR - FPR of scores >= t."""
    best_t, best_j = None, -np.inf
    for t in sorted(set(scores), reverse=True):
        called = scores >= t
        j = called[y == 1].mean() - called[y == 0].mean()
        if j > best_j + 1e-12:
            best_t, best_j = t, j
    return best_t, best_j


@pytest.mark.parametrize("seed", range(5))
def test_youden_threshold_matches_brute_force(seed):
    y, probs = binary_data(200, seed=seed, signal=0.7)
    t = choose_threshold(y, probs[:, 1])
    expected_t, expected_j = brute_force_youden(y, probs[:, 1])
    assert t == expected_t
    m = domain_metrics(y, probs, threshold=t, n_bootstrap=0)
    assert m["sensitivity"] + m["specificity"] - 1 == pytest.approx(expected_j)


def test_youden_threshold_positive_class_zero_and_edge_cases():
    y = np.array([0, 0, 1, 1])
    # positive class 0: its scores are high for label 0; threshold is the lowest positive score
    assert choose_threshold(y, np.array([0.9, 0.7, 0.4, 0.2]), positive_class=0) == 0.7
    assert choose_threshold(y, np.array([0.1, 0.3, 0.6, 0.8])) == 0.6
    assert choose_threshold(np.ones(5), np.linspace(0, 1, 5)) == 0.5  # one class: fallback
    ties = np.array([0.5, 0.5, 0.5, 0.5])
    assert choose_threshold(y, ties) == choose_threshold(y, ties) == 0.5


def test_bootstrap_ci_contains_estimate_and_is_seeded():
    y, probs = binary_data(300)
    m = domain_metrics(y, probs, n_bootstrap=500, seed=3)
    assert m["auc_ci_low"] < m["auc"] < m["auc_ci_high"]
    again = domain_metrics(y, probs, n_bootstrap=500, seed=3)
    assert (again["auc_ci_low"], again["auc_ci_high"]) == (m["auc_ci_low"], m["auc_ci_high"])
    other = domain_metrics(y, probs, n_bootstrap=500, seed=4)
    assert (other["auc_ci_low"], other["auc_ci_high"]) != (m["auc_ci_low"], m["auc_ci_high"])


def test_bootstrap_ci_narrows_with_more_samples():
    y, probs = binary_data(2000, seed=1, signal=0.5)
    small = domain_metrics(y[:100], probs[:100], n_bootstrap=500)
    large = domain_metrics(y, probs, n_bootstrap=500)
    width = lambda m: m["auc_ci_high"] - m["auc_ci_low"]  # noqa: E731
    assert width(large) < width(small) / 2


def test_multiclass_bootstrap_ci_contains_estimate():
    y, probs = multiclass_data(300, n_classes=3)
    m = domain_metrics(y, probs, n_bootstrap=300)
    assert m["auc_ci_low"] < m["auc"] < m["auc_ci_high"]


def test_single_class_domain_gives_nan_auc_not_an_error():
    _, probs = binary_data(40)
    m = domain_metrics(np.zeros(40, dtype=int), probs, n_bootstrap=100)
    assert math.isnan(m["auc"]) and math.isnan(m["auc_ci_low"]) and math.isnan(m["auc_ci_high"])
    assert math.isnan(m["sensitivity"])  # no positives
    assert m["n_pos"] == 0
    assert m["specificity"] == m["balanced_accuracy"] == pytest.approx(np.mean(probs[:, 1] < 0.5))


def test_mismatched_probs_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        domain_metrics(np.array([0, 1, 1]), np.array([0.2, 0.7, 0.9]))


def test_summarize_domains():
    per_domain = {
        "a": {"auc": 0.9, "accuracy": 0.8},
        "b": {"auc": 0.7, "accuracy": 0.6},
        "c": {"auc": 0.8, "accuracy": float("nan")},
        "d": {"auc": float("nan"), "accuracy": 0.7},
    }
    s = summarize_domains(per_domain, keys=("auc", "accuracy", "specificity"))
    assert s["auc"]["mean"] == pytest.approx(0.8)
    assert s["auc"]["std"] == pytest.approx(np.std([0.9, 0.7, 0.8]))  # ddof=0
    assert s["auc"]["std"] == pytest.approx(np.sqrt(0.02 / 3))
    assert s["auc"]["worst"] == 0.7 and s["auc"]["worst_domain"] == "b"
    assert s["accuracy"]["mean"] == pytest.approx(0.7)
    assert s["accuracy"]["worst"] == 0.6 and s["accuracy"]["worst_domain"] == "b"
    assert s["accuracy"]["n_domains"] == 3
    assert math.isnan(s["specificity"]["mean"]) and s["specificity"]["worst_domain"] is None
    json.dumps(s)


def test_summarize_domains_default_keys_on_real_metrics():
    per_domain = {f"site{i}": domain_metrics(*binary_data(100, seed=i), n_bootstrap=0) for i in range(3)}
    s = summarize_domains(per_domain)
    assert set(s) == {"auc", "sensitivity", "specificity", "balanced_accuracy", "accuracy"}
    aucs = {k: v["auc"] for k, v in per_domain.items()}
    assert s["auc"]["worst_domain"] == min(aucs, key=aucs.get)


def test_roc_points_are_scikit_learns_and_their_area_is_the_auc():
    y, probs = binary_data(100)  # with tied scores
    y3, probs3 = multiclass_data(100, n_classes=3)
    for labels, scores, positive in ((y, probs, 1), (y3, probs3, 2)):
        fpr, tpr = roc_points(labels, scores, positive_class=positive)
        ref_fpr, ref_tpr, _ = roc_curve(labels == positive, scores[:, positive], drop_intermediate=False)
        np.testing.assert_allclose(fpr, ref_fpr)
        np.testing.assert_allclose(tpr, ref_tpr)
        assert roc_area(fpr, tpr) == pytest.approx(roc_auc_score(labels == positive, scores[:, positive]), abs=1e-12)
    fpr, tpr = roc_points(np.ones(5), probs[:5])  # one class: no curve, no exception
    assert np.isnan(fpr[1:]).all() and tpr[-1] == 1


def test_importing_the_metrics_does_not_import_scikit_learn():
    """`python -m hybrid.train --help` took 3.9 s with it, 2.7 s without; only the report's probes need it."""
    import subprocess
    import sys

    code = "import sys, hybrid.metrics, hybrid.reporting; print(any(m.startswith('sklearn') for m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr[-500:]


def test_multiclass_metrics_give_each_class_its_one_vs_rest_auc():
    import numpy as np

    from hybrid.metrics import domain_metrics

    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8],
                      [0.3, 0.3, 0.4]])
    m = domain_metrics(y, probs, n_bootstrap=0)
    assert len(m["auc_per_class"]) == 3 and m["auc_per_class"][2] == 1.0
    assert m["auc"] == __import__("pytest").approx(sum(m["auc_per_class"]) / 3)  # macro AUC is their mean
    assert domain_metrics(np.array([0, 0, 1]), probs[:3], n_bootstrap=0)["auc_per_class"][2] is None
