"""Subgroup analysis of a held-out center: pairwise AUCs, consistency with evaluation, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from hybrid.studies import subgroups
from hybrid.data import DataError

from conftest import DX


def test_pairwise_auc_matches_scikit_learn_with_ties():
    rng = np.random.default_rng(0)
    groups = rng.choice(DX, 400)
    scores = np.round(rng.random(400), 1)  # coarse scores: many ties
    rows = subgroups.pairwise_auc(scores, groups, ["mel", "bcc"], ["nv", "bkl"])
    assert [(r["positive"], r["negative"]) for r in rows] == [("mel", "nv"), ("mel", "bkl"), ("bcc", "nv"), ("bcc", "bkl")]
    for r in rows:
        m = np.isin(groups, [r["positive"], r["negative"]])
        expected = roc_auc_score(groups[m] == r["positive"], scores[m])
        assert r["auc"] == pytest.approx(expected, abs=1e-12)
        assert r["n_positive"] == (groups == r["positive"]).sum()


def test_small_subgroups_get_no_auc_and_tables_count_flags():
    groups = np.array(["mel"] * 10 + ["nv"] * 3)
    scores = np.r_[np.full(10, 0.9), np.full(3, 0.1)]
    assert subgroups.pairwise_auc(scores, groups, ["mel"], ["nv"])[0]["auc"] is None
    table = {r["group"]: r for r in subgroups.group_table(scores, (groups == "mel").astype(int), groups, 0.5)}
    assert table["mel"]["flagged_positive"] == 1.0 and table["nv"]["flagged_positive"] == 0.0
    assert table["mel"]["target"] == [1] and table["nv"]["n"] == 3


def test_a_group_field_that_does_not_refine_the_target_is_refused():
    groups = np.array(["a", "a", "b", "b"])
    with pytest.raises(DataError, match=r"subgroups a, b hold both positive and negative"):
        subgroups.analyse_center(np.array([0.1, 0.9, 0.2, 0.8]), np.array([0, 1, 0, 1]), groups, 0.5)


@pytest.mark.slow
def test_a_group_field_that_does_not_refine_the_target_is_refused_before_any_image_is_scored(
        multicenter_run, capsys, monkeypatch):
    import hybrid.inference

    def no_scoring(*args, **kwargs):
        raise AssertionError("images were scored before the group field was checked")

    import hybrid.train

    monkeypatch.setattr(hybrid.inference, "predict_probs", no_scoring)
    monkeypatch.setattr(hybrid.train, "predict_probs", no_scoring)  # the threshold of another TTA scores images
    for tta in ([], ["--tta", "none"]):
        assert subgroups.main(["--run", str(multicenter_run), "--group-field", "center_ids", *tta]) == 2
        err = capsys.readouterr().err
        assert "subgroups 2 of 'center_ids' in c hold both positive and negative cases" in err and "np.str_" not in err


@pytest.mark.slow
def test_without_tta_the_threshold_is_the_one_training_chose_for_its_no_tta_results(multicenter_run, tmp_path):
    import shutil

    run = shutil.copytree(multicenter_run, tmp_path / "run")
    assert subgroups.main(["--run", str(run), "--tta", "none", "--threads", "1"]) == 0
    result = json.loads((run / "subgroups_c.json").read_text())
    no_tta = json.loads((run / "report.json").read_text())["domains_no_tta"]["real:c"]
    for key in ("auc", "sensitivity", "specificity"):
        assert result[key] == pytest.approx(no_tta[key], abs=1e-9)


def test_cli_writes_reports_consistent_with_the_run_evaluation(multicenter_run, capsys):
    assert subgroups.main(["--run", str(multicenter_run), "--threads", "1"]) == 0
    assert "c: AUC" in capsys.readouterr().out
    result = json.loads((multicenter_run / "subgroups_c.json").read_text())
    report = json.loads((multicenter_run / "report.json").read_text())
    # the same images, the same TTA batches: the overall AUC is the evaluation's
    assert result["auc"] == pytest.approx(report["domains"]["real:c"]["auc"], abs=1e-9)
    # and the run's threshold (chosen on shifted source validation), so the same sensitivity and specificity
    assert report["config"]["shift"] and result["threshold"] == report["threshold"]
    for key in ("sensitivity", "specificity"):
        assert result[key] == pytest.approx(report["domains"]["real:c"][key], abs=1e-9)
    assert {g["group"] for g in result["groups"]} == set(DX)
    assert sum(g["n"] for g in result["groups"]) == result["n"] == 80
    assert {(p["positive"], p["negative"]) for p in result["pairs"]} == {
        (p, q) for p in ("bcc", "mel") for q in ("bkl", "nv")}
    md = (multicenter_run / "subgroups_c.md").read_text()
    assert "| positive \\ negative | bkl | nv |" in md
    assert (multicenter_run / "subgroups_c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, match", [
    (["--centers", "a"], "used for training"),
    (["--group-field", "nope"], "has no array 'nope'"),
    (["--centers", "zz"], "Unknown center"),
])
@pytest.mark.slow
def test_cli_errors_are_one_sentence(multicenter_run, capsys, argv, match):
    assert subgroups.main(["--run", str(multicenter_run), *argv]) == 2
    assert match in capsys.readouterr().err


def _result(auc_pair, n=10, run="r"):
    return {"n": n, "run": run, "threshold": 0.5, "auc": auc_pair or 0.5, "sensitivity": 1.0, "specificity": 0.0,
            "groups": [{"group": "mel", "n": 4, "target": [1], "mean_score": 0.8, "flagged_positive": 1.0},
                       {"group": "nv", "n": 6, "target": [0], "mean_score": 0.4, "flagged_positive": 0.0}],
            "pairs": [{"positive": "mel", "negative": "nv", "n_positive": 4, "n_negative": 6, "auc": auc_pair}]}


def test_runs_combine_into_means_with_the_per_run_values_and_a_count_below_chance():
    combined = subgroups.combine_runs([_result(0.4, run="s0"), _result(0.7, run="s1"), _result(None, run="s2")])
    (pair,) = combined["pairs"]
    assert pair["auc"] == pytest.approx(0.55)  # the runs that could score the pair
    assert pair["per_run"] == [0.4, 0.7, None] and pair["runs_below_chance"] == 1
    assert combined["runs"] == ["s0", "s1", "s2"]
    assert combined["groups"][0]["mean_score"] == pytest.approx(0.8)
    md = subgroups.subgroup_markdown("mean of 3 runs", "c", combined, "labels", "adabn")
    assert "by each of 3 runs" in md and "- mel vs nv: 1 of 2 (0.400, 0.700, -)" in md
    with pytest.raises(DataError, match="same images"):
        subgroups.combine_runs([_result(0.4), _result(0.4, n=11)])


@pytest.mark.slow
def test_cli_combines_several_runs_into_out(multicenter_run, tmp_path, capsys):
    argv = ["--run", str(multicenter_run), "--run", str(multicenter_run), "--threads", "1"]
    assert subgroups.main(argv) == 2
    assert "need --out" in capsys.readouterr().err
    assert subgroups.main([*argv, "--out", str(tmp_path / "combined")]) == 0
    assert "2 runs: c: AUC" in capsys.readouterr().out
    single = json.loads((multicenter_run / "subgroups_c.json").read_text())
    combined = json.loads((tmp_path / "combined" / "subgroups_c.json").read_text())
    assert combined["auc"] == pytest.approx(single["auc"])  # the same run twice: the means are its figures
    assert [p["per_run"] for p in combined["pairs"]] == [[p["auc"]] * 2 for p in single["pairs"]]
    assert (tmp_path / "combined" / "subgroups_c.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_runs_holding_out_other_centers_are_refused_before_any_run_is_scored(multicenter_run, tiny_run, tmp_path,
                                                                            capsys, monkeypatch):
    import hybrid.inference

    real = subgroups.prepare_subgroups

    def other_center_for_the_copy(run, *args, **kwargs):
        prepared = real(multicenter_run, *args, **kwargs)
        if run == multicenter_run:
            return prepared
        return prepared._replace(run_dir=run, per_center={"b": prepared.per_center["c"]})

    def no_scoring(*args, **kwargs):
        raise AssertionError("a run was scored before every run was checked")

    monkeypatch.setattr(hybrid.inference, "predict_probs", no_scoring)
    with monkeypatch.context() as patch:
        patch.setattr(subgroups, "prepare_subgroups", other_center_for_the_copy)
        argv = ["--run", str(multicenter_run), "--run", str(tmp_path / "other"), "--out", str(tmp_path / "o"),
                "--threads", "1"]
        assert subgroups.main(argv) == 2
        assert "holds out other centers than" in capsys.readouterr().err
    argv = ["--run", str(multicenter_run), "--run", str(tiny_run), "--out", str(tmp_path / "o")]
    assert subgroups.main(argv) == 2  # a run without real centers, second: found before the first is scored
    assert "which has no real centers" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
