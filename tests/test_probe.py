"""Linear probes: what a run's head leaves unused of its embedding, on the design-validation centers only."""

from __future__ import annotations

import json
import shutil

import pytest

from hybrid.shifts import make_validation_centers
from hybrid.studies import probe


def test_probes_read_only_validation_centers_and_the_head_matches_the_runs_own_adabn_evaluation(tiny_run, data_root,
                                                                                                  tmp_path, monkeypatch):
    from hybrid.runtime import torch_settings
    from hybrid.studies.design import validation_eval

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    out = tmp_path / "probe"
    threads = []
    monkeypatch.setattr(probe, "torch_settings", lambda n: threads.append(n) or torch_settings(n))
    assert probe.main(["--runs", f"tiny={run}", "--out", str(out), "--data-root", str(data_root),
                       "--threads", "1"]) == 0
    assert threads == [1]  # the probes ran with the threads asked for
    result = json.loads((out / "probe.json").read_text())
    scores = result["groups"]["tiny"]["runs"][0]["domains"]
    assert set(scores) == {"clean"} | {c.name for c in make_validation_centers()}
    assert all(set(s) == {"head", "probe_f", "probe_slot", "probe_encoded", "probe_basis", "probe_layer"} for s in scores.values())
    with torch_settings(1):  # as the probes ran: other thread counts sum in other orders
        evaluation = validation_eval(run, str(data_root), "adabn")  # what hybrid.design scores
    for name, s in scores.items():
        assert s["head"] == pytest.approx(evaluation["domains"][name]["auc"], abs=1e-9)
        assert 0.5 < s["probe_f"] <= 1.0  # a trained embedding ranks better than chance
    summary = result["groups"]["tiny"]["summary"]
    assert summary["head"]["worst"] == pytest.approx(min(s["head"] for n, s in scores.items() if n != "clean"))
    assert summary["probe_f"]["clean"] == pytest.approx(scores["clean"]["probe_f"])
    assert (out / "probe.png").stat().st_size > 0
    assert "linear probe on f" in (out / "probe.md").read_text()


def test_a_groups_score_is_the_mean_of_each_runs_worst_center_and_a_network_without_slot_has_no_slot_probe():
    runs = [{"domains": {"clean": {"head": 0.9, "probe_f": 0.95}, "a": {"head": 0.8, "probe_f": 0.9},
                         "b": {"head": 0.7, "probe_f": 0.92}}},
            {"domains": {"clean": {"head": 0.8, "probe_f": 0.85}, "a": {"head": 0.6, "probe_f": 0.7},
                         "b": {"head": 0.9, "probe_f": 0.8}}}]
    summary = probe.summarize_group(runs)
    assert set(summary) == {"head", "probe_f"}
    assert summary["head"] == pytest.approx({"worst": 0.65, "mean": 0.75, "clean": 0.85})
    assert summary["probe_f"]["worst"] == pytest.approx(0.8)
    table = probe.to_markdown({"groups": {"g": {"runs": [{"run": "r0"}, {"run": "r1"}], "summary": summary}}})
    assert "| g | 2 | 0.650 / 0.750 / 0.850 | 0.800 / 0.830 / 0.900 | - | - | - | - |" in table


@pytest.mark.parametrize("argv,message", [(["--runs", "nameonly"], "NAME=RUN_DIR"),
                                          (["--runs", "a=x", "--runs", "a=y"], "its own name")])
def test_bad_groups_are_refused_with_a_sentence(argv, message, tmp_path, capsys):
    assert probe.main(argv + ["--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("groups", [1, 4])
def test_the_plot_lays_out_its_long_legend_for_one_group_as_for_several(groups, tmp_path):
    import warnings

    summary = {key: {"worst": 0.8 + 0.01 * i} for i, key in enumerate(probe.READINGS)}
    result = {"groups": {f"g{i}": {"runs": [], "summary": summary} for i in range(groups)}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a collapsed constrained layout only warns, and draws the axes wrong
        path = probe.plot(result, tmp_path / "probe.png")
    assert path.stat().st_size > 0


def test_a_multiclass_run_is_refused_before_any_run_is_probed(tiny_run, data_root, tmp_path, capsys, monkeypatch):
    from hybrid import train

    retina = tmp_path / "retina"
    assert train.main(["--dataset", "retinamnist", "--epochs", "1", "--max-train-samples", "64", "--width-mult", "0.35",
                       "--stem-stride", "2", "--n-bootstrap", "0", "--eval-max-samples", "20", "--no-figures",
                       "--quiet", "--data-root", str(data_root), "--out", str(retina)]) == 0

    def no_probing(*args, **kwargs):
        raise AssertionError("a run was probed before every run was checked")

    monkeypatch.setattr(probe, "probe_run", no_probing)
    out = tmp_path / "out"
    assert probe.main(["--runs", f"binary={tiny_run}", "--runs", f"five={retina}", "--out", str(out)]) == 2
    assert f"{retina} predicts 5 classes; the probes read one class against the rest" in capsys.readouterr().err
    assert not out.exists()
