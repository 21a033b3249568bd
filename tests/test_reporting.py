"""Tables and report.md show the computed numbers; every figure is a real PNG."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hybrid.metrics import domain_metrics, summarize_domains
from hybrid.reporting import (
    format_table,
    plot_domain_auc,
    plot_roc_curves,
    plot_training_curves,
    write_markdown_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DOMAINS = {"clean": 2.0, "center_a": 1.2, "center_b": 0.8, "center_c": 0.4}  # name -> signal


def fake_domain(n: int, signal: float, rng) -> tuple[np.ndarray, np.ndarray]:
    y = rng.integers(0, 2, n)
    p1 = 1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(size=n))))
    return y, np.c_[1 - p1, p1]


@pytest.fixture(scope="module")
def roc_data():
    rng = np.random.default_rng(0)
    return {name: fake_domain(200, s, rng) for name, s in DOMAINS.items()}


@pytest.fixture(scope="module")
def per_domain(roc_data):
    return {name: domain_metrics(y, p, threshold=0.5, n_bootstrap=200, seed=1)
            for name, (y, p) in roc_data.items()}


def unseen_of(per_domain):
    return [d for d in per_domain if d != "clean"]


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 5_000


def table_row(table: str, first_cell: str) -> list[str]:
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in\n{table}")


def test_table_rows_and_summary_match_metrics(per_domain):
    table = format_table(per_domain)
    for name, m in per_domain.items():
        row = table_row(table, name)
        assert row[1] == str(m["n"])
        assert row[2] == f"{m['auc']:.3f} [{m['auc_ci_low']:.3f}, {m['auc_ci_high']:.3f}]"
        assert row[3] == f"{m['sensitivity']:.3f}"
    summary = summarize_domains({d: per_domain[d] for d in unseen_of(per_domain)})
    mean = table_row(table, "**mean**")
    assert mean[2] == f"{summary['auc']['mean']:.3f}"
    assert mean[5] == f"{summary['balanced_accuracy']['mean']:.3f}"
    assert table_row(table, "**std**")[2] == f"{summary['auc']['std']:.3f}"
    worst = table_row(table, "**worst**")
    assert worst[2] == f"{summary['auc']['worst']:.3f} ({summary['auc']['worst_domain']})"
    # the clean (in-distribution) domain must not enter the unseen summary
    all_mean = np.mean([m["auc"] for m in per_domain.values()])
    assert f"{all_mean:.3f}" != mean[2]
    assert table_row(table, "domain")[2] == "AUC [95% CI]"
    # without bootstrap intervals (--n-bootstrap 0) the header promises none
    bare = {d: {k: v for k, v in m.items() if not k.startswith("auc_ci")} for d, m in per_domain.items()}
    assert table_row(format_table(bare), "domain")[2] == "AUC"


def test_table_shows_nan_as_na(per_domain):
    rng = np.random.default_rng(3)
    y = np.zeros(50, dtype=int)  # a single class: AUC, CI and sensitivity are undefined
    odd = domain_metrics(y, fake_domain(50, 1.0, rng)[1], n_bootstrap=50)
    assert math.isnan(odd["auc"]) and math.isnan(odd["sensitivity"])
    table = format_table({**per_domain, "one_class": odd})
    row = table_row(table, "one_class")
    assert row[2] == "n/a" and row[3] == "n/a"
    assert row[4] == f"{odd['specificity']:.3f}"
    assert "nan" not in table.lower()


def test_roc_plot_is_png(roc_data, tmp_path):
    out = plot_roc_curves(roc_data, tmp_path / "figs" / "roc.png")
    assert out == tmp_path / "figs" / "roc.png"
    assert_png(out)


def test_roc_plot_many_domains_and_single_class(tmp_path):
    rng = np.random.default_rng(5)
    data = {f"center_{i:02d}": fake_domain(80, 0.3 + 0.1 * i, rng) for i in range(12)}
    data["empty_pos"] = (np.zeros(20, dtype=int), fake_domain(20, 1.0, rng)[1])
    assert_png(plot_roc_curves(data, tmp_path / "roc12.png"))


def test_domain_auc_plot_is_png(per_domain, tmp_path):
    assert_png(plot_domain_auc(per_domain, tmp_path / "auc.png", threshold_line=0.93))


@pytest.mark.parametrize(
    "history",
    [
        [{"epoch": e, "train_loss": 1 / e, "cls_loss": 0.8 / e, "domain_loss": 0.69,
          "domain_acc": 0.5 + 0.02 * e, "val_auc": 0.8 + 0.01 * e, "lambda": e / 10,
          "seconds": 3.0} for e in range(1, 11)],
        [{"epoch": e, "train_loss": 1 / e} for e in range(1, 6)],  # ERM: no DANN keys, no AUC
        [{"val_auc": 0.9}, {"train_loss": 0.3, "val_auc": None}],  # gaps and no epoch key
        [],
    ],
    ids=["full", "loss_only", "sparse", "empty"],
)
def test_training_curves_tolerate_missing_keys(history, tmp_path):
    out = plot_training_curves(history, tmp_path / "train.png")
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1_000


def test_markdown_report(per_domain, roc_data, tmp_path):
    plot_roc_curves(roc_data, tmp_path / "roc_curves.png")
    plot_domain_auc(per_domain, tmp_path / "domain_auc.png")
    unseen = unseen_of(per_domain)
    summary = summarize_domains({d: per_domain[d] for d in unseen})
    command = "python -m hybrid.train --dataset pneumoniamnist --epochs 3"
    report = {
        "run": {"name": "test_run", "dataset": "pneumoniamnist", "backend": "statevector",
                "created": "2024-01-01T00:00:00", "command": command, "seconds": 12.5,
                "peak_memory_mb": 321.0, "best_epoch": 2},
        "config": {"lr": 1e-3, "n_qubits": 4},
        "threshold": 0.4321, "positive_class": 1, "tta": "bn",
        "domains": per_domain, "unseen": unseen, "summary": summary,
        "source_val": per_domain["clean"],
        "figures": {"roc": "roc_curves.png", "domain_auc": "domain_auc.png",
                    "centers": "centers.png", "training": "training_curves.png"},
    }
    out = write_markdown_report(report, tmp_path / "report.md")
    text = out.read_text()
    assert text.startswith("# test_run")
    for name in per_domain:
        assert name in text
    assert "0.432" in text
    assert command in text
    assert "](roc_curves.png)" in text and "](domain_auc.png)" in text
    assert "centers.png" not in text and "training_curves.png" not in text
    assert f"{summary['auc']['mean']:.3f}" in text
    assert summary["auc"]["worst_domain"] in text.split("## Per-domain")[0]  # in the summary
    assert '"n_qubits": 4' in text
    # its source validation is under the run's TTA, unlike the epoch log's "val AUC": the line says so
    assert "Source validation with test-time adaptation bn: AUC" in text


def test_captions_count_one_center_and_one_seed_in_the_singular():
    from hybrid.reporting import counted
    from hybrid.studies.sweep_pool import format_losses

    assert (counted(1, "center"), counted(0, "center"), counted(3, "seed")) == ("1 center", "0 centers", "3 seeds")
    pooled = {"sweeps": 1, "samples_per_domain": 64, "domains": ["tgt_blur"], "first": ["runs/a/seed0"],
              "exact_auc_first": [0.9], "rows": {"aer @ 1024": {"mean_lost_first": 0.01, "lost_first": [0.01]}}}
    text = format_losses(pooled)
    assert "over 1 seed\n" in text and "x 1 center." in text and "1 centers" not in text


def test_the_mean_rows_say_how_many_centers_they_cover_when_a_center_has_one_class():
    one_class = domain_metrics(np.zeros(12, int), np.tile([0.7, 0.3], (12, 1)), threshold=0.5, n_bootstrap=0)
    assert one_class["specificity"] == 1.0 and math.isnan(one_class["auc"])
    both = domain_metrics(np.array([0, 1, 0, 1]), np.array([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.6, 0.4]]),
                          threshold=0.5, n_bootstrap=0)
    table = format_table({"hospA": both, "hospB": one_class})
    mean_row = next(line for line in table.splitlines() if line.startswith("| **mean**"))
    cells = [c.strip() for c in mean_row.strip("|").split("|")]
    assert cells[1] == "2 unseen" and cells[2].endswith("(1 of 2)")  # AUC: hospA's alone
    assert "(1 of 2)" not in cells[4]  # specificity is defined at both
