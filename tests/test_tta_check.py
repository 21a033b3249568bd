"""hybrid.tta_check: per-batch vs whole-domain BatchNorm statistics, and the class-mix control."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hybrid.studies import tta_check
from hybrid.data import DataError


@pytest.mark.parametrize("n_pos,n_neg,prevalence", [(50, 100, 0.2), (5, 100, 0.2), (30, 30, 0.5)])
def test_prevalence_matched_subset_has_the_asked_positive_rate(n_pos, n_neg, prevalence):
    labels = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    idx = tta_check.prevalence_matched(labels, 1, prevalence, np.random.default_rng(0))
    assert len(np.unique(idx)) == len(idx)
    assert labels[idx].mean() == pytest.approx(prevalence, abs=0.01)
    # as large as the domain allows: one side is kept whole
    assert (labels[idx] == 1).sum() == n_pos or (labels[idx] == 0).sum() == n_neg


def test_prevalence_matching_needs_both_classes():
    with pytest.raises(DataError, match="cannot resample"):
        tta_check.prevalence_matched(np.zeros(10, int), 1, 0.1, np.random.default_rng(0))


@pytest.mark.slow
def test_cli_measures_every_way_of_adapting_on_the_chosen_domains(multicenter_run, tmp_path, capsys):
    out = tmp_path / "check"
    argv = ["--run", str(multicenter_run), "--domains", "clean,real:c", "--batch-sizes", "8,32",
            "--threads", "1", "--out", str(out)]
    assert tta_check.main(argv) == 0
    result = json.loads((out / "tta_check_clean+real:c.json").read_text())
    assert list(result["domains"]) == ["clean", "real:c"]
    report = json.loads((multicenter_run / "report.json").read_text())
    for name, row in result["domains"].items():
        assert set(row) >= {"none", "bn_batch8", "bn_batch32", "bn_whole_domain", "adabn", "adabn_prevalence_matched"}
        assert all(0.0 <= row[k] <= 1.0 for k in row if k.startswith(("none", "bn", "adabn")))
        # no adaptation is the run's own evaluation without TTA
        assert row["none"] == pytest.approx(report["domains_no_tta"][name]["auc"], abs=1e-9)
    assert 0 < result["source_positive_rate"] < 1
    md = (out / "tta_check_clean+real:c.md").read_text()
    printed = capsys.readouterr().out
    assert "| real:c |" in md and "bn_whole_domain" in md and md in printed
    assert f"written: {out / 'tta_check_clean+real:c.md'}" in printed
    # a quick look: each domain's first images only, the table says so, and it replaces no other check
    assert tta_check.main(argv + ["--max-samples", "16", "--domains", "real:c"]) == 0
    quick = json.loads((out / "tta_check_real:c_max16.json").read_text())
    assert quick["max_samples"] == 16 and quick["domains"]["real:c"]["n"] == 16
    assert "(the first 16 images of each)" in (out / "tta_check_real:c_max16.md").read_text()
    assert (out / "tta_check_clean+real:c.md").read_text() == md


@pytest.mark.parametrize("argv,match", [
    (["--domains", "nosuch"], "has no domain 'nosuch'"),
    (["--batch-sizes", "1"], "--batch-sizes takes"),
    (["--batch-sizes", "4,64"], "at least 8 (per-batch bn adapts no smaller batch"),
])
@pytest.mark.slow
def test_cli_errors_are_one_sentence(multicenter_run, capsys, argv, match):
    assert tta_check.main(["--run", str(multicenter_run)] + argv) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1


def test_the_table_marks_batches_as_large_as_the_domain_and_names_a_multiclass_share():
    from hybrid.studies.tta_check import to_markdown

    row = {"n": 100, "positive_rate": 0.3, "none": 0.7, "bn_batch64": 0.71, "bn_batch256": 0.72,
           "bn_whole_domain": 0.72, "adabn": 0.74}
    result = {"run": "r", "source_positive_rate": None, "batch_sizes": [64, 256], "max_samples": 100,
              "n_classes": 5, "positive_class": 1, "domains": {"clean": row}}
    table = to_markdown(result)
    assert "| domain | n | share of class 1 |" in table and "AUC per domain (the first 100 images of each) (macro" in table
    assert "| clean | 100 | 0.300 | 0.700 | 0.710 | 0.720* | 0.720 | 0.740 |" in table
    assert "\\* the batch size is at least the domain's n" in table
    binary = to_markdown(result | {"n_classes": 2, "batch_sizes": [64], "domains": {"clean": row}})
    assert "| positive rate |" in binary and "*" not in binary
