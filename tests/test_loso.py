"""Leave-one-source-out selection (#13): a held-out source never trains, the held-out clinic is never
loaded, and the rule picks the best mean fold AUC (ties to the earlier-listed variant)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import set_flags
from hybrid.studies import experiment
from hybrid.studies.loso import loso_study, select, sources_of
from hybrid.studies.runs import run_dir


@pytest.fixture(scope="module")
def clinic_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("loso")
    rng = np.random.default_rng(0)
    n = 320
    labels = np.arange(n) % 2
    images = rng.integers(0, 60, (n, 16, 16), dtype=np.uint8)
    images[labels == 1, 4:12, 4:12] += 120
    centers = (np.arange(n) // 2) % 4  # three sources of one clinic, and another clinic (id 3)
    np.savez(root / "clinics.npz", images=images, labels=labels, center_ids=centers,
             center_names=np.array(["s1", "s2", "s3", "other_clinic"]))
    return root / "clinics.npz"


def _study(path):
    base = dict(dataset=str(path), train_centers="s1,s2,s3", test_centers="other_clinic", input_size=16,
                width_mult=0.1, stem_stride=2, embed_dim=16, epochs=1, batch_size=32, n_bootstrap=0,
                eval_max_samples=16, quantum=False, figures=False)
    return experiment.Study("toy", base, {"erm": dict(algorithm="erm", shift=False), "dann": {}}, (0,))


def test_folds_hold_each_source_out_and_never_load_the_other_clinic(clinic_file, tmp_path):
    study = _study(clinic_file)
    folds = loso_study(study)
    assert sorted(folds.variants) == sorted(f"{v}@{s}" for v in ("erm", "dann") for s in ("s1", "s2", "s3"))
    out = tmp_path / "folds"
    summary = experiment.run_study(folds, out, workers=1, threads=1, progress=False)
    assert not summary["failed"] and len(summary["finished"]) == 6
    for variant in folds.variants:
        held = variant.split("@")[1]
        data = json.loads((run_dir(out, variant, 0) / "report.json").read_text())["data"]
        trained = {c for split in ("train", "val", "test") for c in data["splits"][split].get("centers", {})}
        assert held not in trained and "other_clinic" not in trained and trained == {"s1", "s2", "s3"} - {held}
        assert list(data["test_domains"]) == [held]
    selection = select(study, out)
    means = {v: selection["scores"][v]["mean"] for v in ("erm", "dann")}
    best = max(means.values())
    expected = next(v for v in ("erm", "dann") if means[v] >= best - 0.005)
    assert selection["selected"] == expected and selection["sources"] == ["s1", "s2", "s3"]


def test_the_rule_breaks_ties_towards_the_earlier_variant(tmp_path):
    study = experiment.Study("toy", dict(dataset="x.npz", train_centers="a,b"), {"simple": {}, "fancy": {}}, (0,))
    for variant, aucs in (("simple", (0.70, 0.72)), ("fancy", (0.71, 0.74))):
        for source, auc in zip(("a", "b"), aucs):
            path = run_dir(tmp_path, f"{variant}@{source}", 0)
            path.mkdir(parents=True)
            (path / "report.json").write_text(json.dumps({"domains": {f"real:{source}": {"auc": auc}}}))
    assert select(study, tmp_path)["selected"] == "fancy"  # 0.725 vs 0.71: beyond the tie margin
    (run_dir(tmp_path, "fancy@b", 0) / "report.json").write_text(json.dumps({"domains": {"real:b": {"auc": 0.72}}}))
    assert select(study, tmp_path)["selected"] == "simple"  # 0.715 vs 0.71: a tie goes to the earlier one


def test_loso_needs_a_multi_center_preset_with_sources():
    with pytest.raises(ValueError, match="multi-center preset"):
        sources_of(experiment.build_study("quick"))
    assert sources_of(experiment.build_study("ham10000")) == ["vidir_molemax", "vidir_modern", "vienna_dias"]


def test_cli_lists_the_fold_runs_before_the_study_and_refuses_single_source_presets(tmp_path, capsys):
    assert experiment.main(["--preset", "ham10000", "--validation", "loso", "--dry-run", "--seeds", "1",
                            "--variants", "erm,full", "--out", str(tmp_path / "ham")]) == 0
    lines = capsys.readouterr().out.splitlines()
    folds = [line for line in lines if "/loso/" in line]
    assert len(folds) == 6 and any("erm@vidir_modern" in line for line in folds)
    assert lines.index(folds[-1]) < len(lines) - 2  # then the study itself (erm, full)
    assert experiment.main(["--preset", "quick", "--validation", "loso", "--dry-run", "--out", str(tmp_path / "q")]) == 2
    assert "multi-center preset" in capsys.readouterr().err


def test_a_fold_without_an_auc_leaves_its_variant_out_instead_of_stopping_the_choice(tmp_path):
    """A nan fold AUC (one class in the held-out source, or a network that diverged) made the mean nan: first in the
    list it stopped the choice with a bare StopIteration, later it was dropped without a word."""
    study = experiment.Study("toy", dict(dataset="x.npz", train_centers="a,b"), {"erm": {}, "dann": {}}, (0,))
    for variant, aucs in (("erm", (float("nan"), 0.70)), ("dann", (0.60, 0.65))):
        for source, auc in zip(("a", "b"), aucs):
            path = run_dir(tmp_path, f"{variant}@{source}", 0)
            path.mkdir(parents=True)
            (path / "report.json").write_text(json.dumps({"domains": {f"real:{source}": {"auc": auc}}}))
    selection = select(study, tmp_path)
    assert selection["selected"] == "dann" and not selection["scores"]["erm"]["complete"]
    assert selection["gaps"] == ["erm@a/seed0 scored no AUC on its held-out source (one class among the images "
                                 "scored; more images, e.g. a larger eval_max_samples, give it both)"]
    (run_dir(tmp_path, "dann@b", 0) / "report.json").unlink()  # the selection line then says which run is missing
    assert select(study, tmp_path)["gaps"][1] == "dann@b/seed0 has not finished"


def test_the_tie_rule_ignores_scores_that_are_not_numbers():
    from hybrid.studies.results import earliest_within_tie

    assert earliest_within_tie({"erm": float("nan"), "dann": 0.7, "coral": 0.698}) == "dann"
    assert earliest_within_tie({"erm": float("nan")}) is None


@pytest.fixture(scope="module")
def ham_like_file(tmp_path_factory):
    """A tiny file in the HAM10000 preset's layout: three Vienna sources and rosendahl."""
    path = tmp_path_factory.mktemp("ham_like") / "ham_like.npz"
    rng = np.random.default_rng(0)
    n = 320
    labels = np.arange(n) % 2
    images = rng.integers(0, 60, (n, 16, 16), dtype=np.uint8)
    images[labels == 1, 4:12, 4:12] += 120
    np.savez(path, images=images, labels=labels, malignant=labels, source_ids=(np.arange(n) // 2) % 4,
             source_names=np.array(["vidir_molemax", "vidir_modern", "vienna_dias", "rosendahl"]))
    return path


def _ham_like_study(path, out) -> list[str]:
    tiny = dict(dataset=path, size=28, input_size=16, width_mult=0.1, embed_dim=16, epochs=1, batch_size=32,
                n_bootstrap=0, eval_max_samples=16, figures="false")
    return ["--preset", "ham10000", "--validation", "loso", "--variants", "erm", "--seeds", "1", "--threads", "1",
            "--out", str(out), "--quiet", *set_flags(tiny)]


def test_the_cli_counts_the_folds_selects_trains_the_study_and_shows_both_in_its_status(ham_like_file, tmp_path,
                                                                                        capsys):
    """A finished LOSO study used to stop with an IndexError right after its selection line."""
    out = tmp_path / "study"
    assert experiment.main(_ham_like_study(ham_like_file, out)) == 0
    printed = capsys.readouterr().out
    assert "leave-one-source-out folds: 3 trained, 0 already finished, 0 failed" in printed
    assert "leave-one-source-out selection: erm (scores in" in printed and "1 trained, 0 already finished" in printed
    assert experiment.print_status(out) == 0
    status = capsys.readouterr().out.splitlines()
    assert status[0] == f"leave-one-source-out fold runs ({out / 'loso'}):"
    assert [line.split()[:2] for line in status[1:4]] == [[f"erm@{s}/seed0", "finished"]
                                                          for s in ("vidir_molemax", "vidir_modern", "vienna_dias")]
    assert status[4:8] == ["3 finished, 0 running, 0 failed, 0 pending", "selection: erm", "", "the study's runs:"]
    assert status[8].split()[:2] == ["erm/seed0", "finished"] and status[9].startswith("1 finished")
    # the study's report says how its variant was chosen: the fold scores and the choice, before the results
    from hybrid.studies import report

    assert report.main([str(out), "--no-models"]) == 0
    text = (out / "report.md").read_text()
    section = text[text.index("## Leave-one-source-out selection"):]
    assert section.index("| variant | vidir_molemax | vidir_modern | vienna_dias | mean |") > 0
    assert "| erm (selected) |" in section and "- erm: mean AUC over seeds (with the run's TTA): real:rosendahl" in section
    selection = json.loads((out / "selection.json").read_text())
    assert f"{selection['scores']['erm']['mean']:.3f} |" in section
    # reported together with another folder's runs, the section is left out, and the report says so
    import shutil

    other = tmp_path / "other"
    shutil.copytree(out / "erm" / "seed0", other / "erm_again" / "seed0")
    assert report.main([str(out), "--include", str(other), "--no-models", "--out", str(tmp_path / "both")]) == 0
    both = json.loads((tmp_path / "both" / "report.json").read_text())
    assert any(note.startswith(f"leave-one-source-out selection of {out}") for note in both["skipped"])
    assert "## Leave-one-source-out selection" not in (tmp_path / "both" / "report.md").read_text()


def test_failed_fold_runs_fail_the_command_and_are_named(tmp_path, capsys):
    wrong_names = tmp_path / "wrong.npz"  # its sources are not named: the preset's center names are unknown
    n = 64
    np.savez(wrong_names, images=np.zeros((n, 16, 16), np.uint8), labels=np.arange(n) % 2,
             malignant=np.arange(n) % 2, source_ids=np.arange(n) % 4)
    out = tmp_path / "study"
    assert experiment.main(_ham_like_study(wrong_names, out)) == 1
    captured = capsys.readouterr()
    assert "leave-one-source-out folds: 0 trained, 0 already finished, 3 failed" in captured.out
    assert "leave-one-source-out selection: none: erm@vidir_molemax/seed0 has not finished (and 2 more)" in captured.out
    assert "0 trained, 0 already finished, 1 failed\n" in captured.out  # no "next: hybrid.report" with nothing to report
    assert "failed runs: loso/erm@vidir_molemax/seed0, loso/erm@vidir_modern/seed0, loso/erm@vienna_dias/seed0, " \
           "erm/seed0" in captured.err and str(out / "loso") in captured.err
