"""Design validation: candidates are compared on validation centers with a stated rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hybrid.studies import design
from hybrid.config import TrainConfig
from hybrid.metrics import summarize_domains

CENTERS = ["val_a", "val_b"]


def fake_eval(run: str, seed: int, clean: float, a: float, b: float, tta: str = "bn") -> dict:
    domains = {"clean": {"auc": clean}, "val_a": {"auc": a}, "val_b": {"auc": b}}
    return {"run": run, "config": {"seed": seed}, "unseen": CENTERS, "domains": domains, "tta": tta,
            "summary": summarize_domains({c: domains[c] for c in CENTERS}, keys=("auc",))}


def write_run(tmp_path, name: str, seed: int, clean: float, a: float, b: float):
    path = tmp_path / name
    path.mkdir()
    TrainConfig(seed=seed).save(path / "config.json")
    (path / "eval_pneumoniamnist_validation.json").write_text(json.dumps(fake_eval(str(path), seed, clean, a, b)))
    return path


def add_tta_eval(path, tta: str, clean: float, a: float, b: float) -> None:
    seed = TrainConfig.load(path / "config.json").seed
    (path / f"eval_pneumoniamnist_validation_{tta}.json").write_text(
        json.dumps(fake_eval(str(path), seed, clean, a, b, tta=tta)))


def test_score_is_mean_over_runs_of_each_runs_worst_center():
    s = design.summarize_candidate([fake_eval("r0", 0, 0.9, 0.80, 0.70), fake_eval("r1", 1, 0.9, 0.60, 0.90)])
    assert s["worst_per_run"] == [0.70, 0.60]
    assert s["score"] == pytest.approx(0.65)  # not min of the per-center means (0.70)
    assert s["centers"] == {"val_a": pytest.approx(0.70), "val_b": pytest.approx(0.80)}
    assert s["mean"] == pytest.approx(0.75) and s["seeds"] == [0, 1]


def test_rule_needs_the_gain_and_no_clean_loss():
    result = design.compare({
        "base": [fake_eval("b", 0, 0.90, 0.80, 0.80)],
        "better": [fake_eval("g", 0, 0.90, 0.85, 0.82)],
        "small_gain": [fake_eval("s", 0, 0.90, 0.805, 0.805)],
        "costs_clean": [fake_eval("c", 0, 0.87, 0.88, 0.88)],
    })
    c = result["candidates"]
    assert "qualifies" not in c["base"]
    assert c["better"]["qualifies"] and c["better"]["gain"] == pytest.approx(0.02)
    assert not c["small_gain"]["qualifies"]
    assert not c["costs_clean"]["qualifies"]  # best score, but 0.03 clean AUC lost
    assert result["best"] == "costs_clean"
    assert result["adopt"] == "better"  # the top score does not qualify; the best qualifying one is adopted
    only_small = design.compare({"base": [fake_eval("b", 0, 0.90, 0.80, 0.80)],
                                 "small_gain": [fake_eval("s", 0, 0.90, 0.805, 0.805)]})
    assert only_small["best"] == "small_gain" and only_small["adopt"] == "base"
    assert "none qualifies, **base** stays" in design.to_markdown(only_small)


def test_runs_on_different_centers_are_refused():
    other = fake_eval("x", 0, 0.9, 0.8, 0.8) | {"unseen": ["tgt_blur"]}
    with pytest.raises(ValueError, match="same validation centers"):
        design.compare({"base": [fake_eval("b", 0, 0.9, 0.8, 0.8)], "x": [other]})


def test_cli_reuses_saved_evaluations_and_writes_table_json_and_plot(tmp_path, capsys, monkeypatch):
    from hybrid.runtime import torch_settings

    base = [write_run(tmp_path, f"base{s}", s, 0.90, 0.80, 0.78) for s in (0, 1)]
    cand = [write_run(tmp_path, f"cand{s}", s, 0.91, 0.86, 0.84) for s in (0, 1)]
    out = tmp_path / "out"
    argv = ["--out", str(out), "--candidate", "baseline=" + ",".join(map(str, base)),
            "--candidate", "smooth=" + ",".join(map(str, cand))]
    threads = []
    monkeypatch.setattr(design, "torch_settings", lambda n: threads.append(n) or torch_settings(n))
    assert design.main(argv + ["--threads", "1"]) == 0 and threads == [1]
    result = json.loads((out / "design.json").read_text())
    assert result["best"] == "smooth" and result["candidates"]["smooth"]["qualifies"]
    assert result["candidates"]["smooth"]["score"] == pytest.approx(0.84)
    md = (out / "design.md").read_text()
    assert "| smooth | bn | 2 | 0.840 |" in md and "+0.060 (qualifies)" in md
    assert result["adopt"] == "smooth" and "By the rule: **smooth**" in md
    assert (out / "design.png").stat().st_size > 1000


@pytest.mark.parametrize("argv,match", [
    (["--candidate", "only=x"], "at least two"),
    (["--candidate", "a=x", "--candidate", "noequals"], "NAME[:TTA]=RUN_DIR"),
    (["--candidate", "a=x", "--candidate", "b:nosuch=x"], "unknown TTA method 'nosuch'"),
    (["--candidate", "a=x", "--candidate", "b=x", "--candidate", "a:bn=x"], "candidate name(s) a given twice"),
    (["--candidate", "a=x", "--candidate", "a=x"], "candidate name(s) a given twice"),
])
def test_cli_errors_are_one_sentence(tmp_path, capsys, argv, match):
    (tmp_path / "x").mkdir()
    argv = [a.replace("=x", f"={tmp_path / 'x'}") for a in argv]
    assert design.main(argv + ["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1


def test_cli_error_for_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert design.main(["--out", str(tmp_path / "o"), "--candidate", f"a={tmp_path / 'a'}",
                        "--candidate", f"b={tmp_path / 'b'}"]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_a_tta_candidate_is_judged_on_its_own_evaluation_of_the_same_runs(tmp_path):
    runs = [write_run(tmp_path, f"run{s}", s, 0.90, 0.80, 0.78) for s in (0, 1)]
    for run in runs:
        add_tta_eval(run, "adabn", 0.905, 0.79, 0.776)
    out = tmp_path / "out"
    spec = ",".join(map(str, runs))
    # a negative --min-gain asks for non-inferiority: no worse than 0.005 on the score
    argv = ["--out", str(out), "--min-gain", "-0.005", "--candidate", f"bn={spec}", "--candidate", f"domain:adabn={spec}"]
    assert design.main(argv) == 0
    c = json.loads((out / "design.json").read_text())["candidates"]
    assert c["bn"]["tta"] == ["bn"] and c["domain"]["tta"] == ["adabn"]
    assert c["domain"]["score"] == pytest.approx(0.776) and c["bn"]["score"] == pytest.approx(0.78)
    assert c["domain"]["gain"] == pytest.approx(-0.004) and c["domain"]["qualifies"]
    assert "| domain | adabn | 2 |" in (out / "design.md").read_text()


def test_parse_candidate_reads_an_optional_tta():
    assert design.parse_candidate("a=r0,r1") == ("a", None, [Path("r0"), Path("r1")])
    assert design.parse_candidate("b:adabn=r0") == ("b", "adabn", [Path("r0")])


def test_evaluations_on_different_sample_counts_are_never_mixed(tmp_path):
    short = fake_eval("short", 0, 0.9, 0.8, 0.8)
    for center in CENTERS:
        short["domains"][center]["n"] = 32  # a quick `--max-samples 32` look
    full = fake_eval("full", 1, 0.9, 0.8, 0.8)
    for center in CENTERS:
        full["domains"][center]["n"] = 624
    with pytest.raises(ValueError, match="different numbers of images"):
        design.compare({"base": [full], "new": [short]})


def test_a_saved_evaluation_on_a_sample_is_redone_in_full(tmp_path, monkeypatch):
    run = write_run(tmp_path, "r", 0, 0.9, 0.8, 0.8)
    path = run / "eval_pneumoniamnist_validation.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"max_samples": 32}))
    calls = []

    def fake_main(argv):
        calls.append(argv)
        path.write_text(json.dumps(fake_eval(str(run), 0, 0.9, 0.7, 0.7) | {"max_samples": None}))
        return 0

    from hybrid import evaluate
    monkeypatch.setattr(evaluate, "main", fake_main)
    result = design.validation_eval(run)
    assert len(calls) == 1 and "--max-samples" not in calls[0] and result["max_samples"] is None


def test_a_saved_evaluation_that_scored_the_held_out_clinic_is_redone(tmp_path, monkeypatch):
    """`--centers validation` used to add a multi-center run's held-out clinic to the validation centers, so the
    design's worst AUC could be the reported clinic's; such a saved evaluation is not reused."""
    run = write_run(tmp_path, "r", 0, 0.9, 0.8, 0.8)
    path = run / "eval_pneumoniamnist_validation.json"
    old = json.loads(path.read_text())
    old["domains"]["real:clinic"], old["unseen"] = {"auc": 0.5}, CENTERS + ["real:clinic"]
    path.write_text(json.dumps(old))
    calls = []

    def fake_main(argv):
        calls.append(argv)
        path.write_text(json.dumps(fake_eval(str(run), 0, 0.9, 0.7, 0.7)))
        return 0

    from hybrid import evaluate
    monkeypatch.setattr(evaluate, "main", fake_main)
    result = design.validation_eval(run)
    assert len(calls) == 1 and result["unseen"] == CENTERS
    assert design.validation_eval(run) == result and len(calls) == 1  # the new one is reused
