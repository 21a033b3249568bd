"""The study report: tables from the runs' JSON, honest p-values, and the figures."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from hybrid.studies import report as study_report
from hybrid.config import TrainConfig
from hybrid.metrics import summarize_domains
from hybrid.studies.results import paired_test

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CENTERS = ["c0", "c1", "c2", "c3"]
SEEDS = (0, 1, 2)


def erm_auc(seed: int, c: int) -> float:
    return 0.80 + 0.01 * c - 0.005 * seed


# AUC per (variant, seed, center index): "better" beats erm in all 12 pairs; "same" differs
# by +-0.01 * (c + 1) with alternating signs, which a paired test must not call significant.
AUC = {
    "erm": erm_auc,
    "better": lambda s, c: erm_auc(s, c) + 0.05 + 0.001 * (c + s),
    "same": lambda s, c: erm_auc(s, c) + 0.01 * (c + 1) * (-1) ** (c + s),
}
FLAGS = {"erm": (False, "erm", False), "better": (True, "dann", True), "same": (True, "erm", False)}


def metrics(auc: float) -> dict:
    return {"auc": auc, "auc_ci_low": auc - 0.03, "auc_ci_high": auc + 0.03, "sensitivity": auc - 0.05,
            "specificity": auc - 0.1, "accuracy": auc - 0.07, "balanced_accuracy": auc - 0.075,
            "threshold": 0.5, "n": 200, "n_pos": 120}


def write_run(root, variant: str, seed: int) -> None:
    domains = {"clean": metrics(0.9)} | {c: metrics(AUC[variant](seed, i)) for i, c in enumerate(CENTERS)}
    no_tta = {k: metrics(m["auc"] - 0.02) for k, m in domains.items()}
    shift, algorithm, quantum = FLAGS[variant]
    report = {"run": {"name": f"seed{seed}", "dataset": "synthetic", "seconds": 60.0, "best_epoch": 1, "threads": 2},
              "config": TrainConfig(shift=shift, algorithm=algorithm, quantum=quantum, epochs=4, max_train_samples=2000,
                                    seed=seed, tta="bn").to_dict(),
              "tta": "bn", "positive_class": 1, "unseen": CENTERS, "domains": domains,
              "summary": summarize_domains({c: domains[c] for c in CENTERS}), "domains_no_tta": no_tta,
              "summary_no_tta": summarize_domains({c: no_tta[c] for c in CENTERS})}
    path = root / variant / f"seed{seed}"
    path.mkdir(parents=True)
    (path / "report.json").write_text(json.dumps(report))


@pytest.fixture
def synthetic(tmp_path):
    for variant in AUC:
        for seed in SEEDS:
            write_run(tmp_path, variant, seed)
    (tmp_path / "study.json").write_text(json.dumps({"preset": "synthetic", "variants": {v: {} for v in AUC},
                                                     "notes": ["a note from the preset"],
                                                     "base": {"epochs": 4, "max_train_samples": 2000}}))
    return tmp_path


def rows(result, setting="tta", group="unseen centers"):
    return {(r["name"], r["metric"]): r for r in result["groups"][group]["comparisons"][setting]}


def test_tables_show_every_variant_with_mean_and_std_over_seeds(synthetic):
    result = study_report.build_report(synthetic, models=False)
    md = (synthetic / "report.md").read_text()
    per_seed = [np.mean([erm_auc(s, c) for c in range(len(CENTERS))]) for s in SEEDS]
    expected = f"{np.mean(per_seed):.3f} ± {np.std(per_seed, ddof=1):.3f}"
    assert f"| erm | none | n/a | 3 | {expected} |" in md  # synthetic reports record no parameter counts
    assert "| better | shift + DANN + quantum | n/a | 3 |" in md and "| same | shift | n/a | 3 |" in md
    assert "a note from the preset" in md
    assert "Settings shared by every run (all others at the TrainConfig defaults): max_train_samples=2000, epochs=4, tta=bn." in md
    table = result["groups"]["unseen centers"]["tables"]["no_tta"]
    assert table["erm"]["auc_mean"]["mean"] == pytest.approx(np.mean(per_seed) - 0.02)
    worst = [min(erm_auc(s, c) for c in range(len(CENTERS))) for s in SEEDS]
    assert result["groups"]["unseen centers"]["tables"]["tta"]["erm"]["auc_worst"]["mean"] == pytest.approx(np.mean(worst))
    clean = result["groups"]["in-distribution test split"]  # what each variant costs without any shift
    assert clean["domains"] == ["clean"]
    assert clean["tables"]["tta"]["erm"]["auc_mean"]["mean"] == pytest.approx(0.9)
    assert clean["tables"]["no_tta"]["erm"]["auc_mean"]["mean"] == pytest.approx(0.88)
    assert "## In-distribution test split" in md


def test_paired_comparisons_say_what_is_and_is_not_significant(synthetic):
    result = study_report.build_report(synthetic, models=False)
    comp = rows(result)
    better, same = comp[("better", "AUC")], comp[("same", "AUC")]
    assert better["n"] == 12 and better["higher"] == 12 and better["p"] < 0.05
    assert better["verdict"] == "higher, significant at 0.05"
    assert same["p"] >= 0.05 and same["verdict"] == "not significant at 0.05"
    assert comp[("better", "mean AUC")]["p"] is None  # 3 seeds cannot reach p < 0.05
    assert "too few pairs" in comp[("better", "mean AUC")]["verdict"]
    md = (synthetic / "report.md").read_text()
    assert "**same** vs erm (with TTA)" in md and "not significant at 0.05" in md
    tta = {r["name"]: r for r in result["groups"]["unseen centers"]["tta_effect"] if r["metric"] == "AUC"}
    assert all(tta[v]["mean_diff"] == pytest.approx(0.02) and tta[v]["p"] < 0.05 for v in AUC)


def test_figures_without_checkpoints_are_left_out_with_a_note(synthetic):
    result = study_report.build_report(synthetic)
    assert (synthetic / "figures" / "center_auc.png").read_bytes()[:8] == PNG_MAGIC
    assert set(result["figures"]) == {"center_auc"}
    md = (synthetic / "report.md").read_text()
    assert "## Left out" in md and "roc_hardest figure" in md and "virtual-center grid" in md


def test_missing_baseline_skips_comparisons(synthetic):
    for path in (synthetic / "erm").glob("*/report.json"):
        path.unlink()
    result = study_report.build_report(synthetic, models=False)
    assert not result["groups"]["unseen centers"]["comparisons"]["tta"]
    assert any("no erm runs" in s for s in result["skipped"])


def test_paired_test_edge_cases():
    assert paired_test([]) | {"verdict": paired_test([])["verdict"]} == paired_test([])
    assert paired_test([]) ["verdict"] == "no pairs"
    assert paired_test([0.0] * 8)["p"] is None and paired_test([0.0] * 8)["verdict"] == "no difference"
    few = paired_test([0.1, 0.2, 0.3, 0.4, 0.5])
    assert few["p"] is None and few["verdict"].startswith("too few pairs")
    low = paired_test([-0.1 - 0.01 * i for i in range(8)])
    assert low["p"] < 0.05 and low["verdict"] == "lower, significant at 0.05"


def test_the_direction_of_a_significant_difference_is_the_ranks_not_the_mean():
    """Eleven small losses and one large gain: the signed-rank test finds the losses; the mean points up."""
    result = paired_test([-0.010 - 0.001 * i for i in range(11)] + [0.5])
    assert result["mean_diff"] > 0 and result["lower"] == 11 and result["p"] < 0.05
    assert result["verdict"] == "lower, significant at 0.05 (by the ranks; the mean difference points the other way)"
    agree = paired_test([0.010 + 0.001 * i for i in range(11)] + [-0.001])
    assert agree["p"] < 0.05 and agree["verdict"] == "higher, significant at 0.05"


def test_damaged_files_leave_their_run_out_instead_of_stopping_the_report(synthetic, caplog):
    """A disk-full write can leave an empty report.json, a crash a torn failures.jsonl line; --status reads
    both as the tool's runs directory does (the run is unfinished, the torn line is skipped)."""
    (synthetic / "same" / "seed2" / "report.json").write_text("")
    failure = {"variant": "same", "seed": 2, "error": "disk full", "time": "2026-12-07 10:00:00"}
    (synthetic / "failures.jsonl").write_text(json.dumps(failure) + "\n" + '{"variant": "same", "se')
    result = study_report.build_report(synthetic, models=False, out_dir=synthetic / "out")
    assert [(r["variant"], r["seed"]) for r in result["runs"]].count(("same", 2)) == 0
    assert [(f["variant"], f["seed"], f["error"]) for f in result["failures"]] == [("same", 2, "disk full")]
    assert "does not parse" in caplog.text


@pytest.mark.slow
def test_report_on_a_real_quick_study(quick_study):
    study_dir = quick_study[0]
    assert study_report.main([str(study_dir)]) == 0
    result = json.loads((study_dir / "report.json").read_text())
    assert set(result["figures"]) == {"center_auc", "roc_hardest", "features", "centers"}
    for rel in result["figures"].values():
        data = (study_dir / rel).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000
    hardest = result["hardest_center"]
    assert hardest["center"] in result["groups"]["unseen centers"]["domains"]
    for check in hardest["runs"].values():  # ROC curves recomputed from the checkpoints
        assert check["recomputed_auc"] == pytest.approx(check["reported_auc"], abs=1e-3)
    invariance = result["invariance"]["variants"]
    assert set(invariance) == {"erm", "full"} and all(0 <= v["center_accuracy"] <= 1 for v in invariance.values())
    md = (study_dir / "report.md").read_text()
    # parameter counts: the whole network (the quantum layer's 12 circuit weights)
    assert re.search(r"\| erm \| none \| [\d,]+ \(0\) \| 1 \|", md)
    assert re.search(r"\| full \| shift \+ DANN \+ quantum \| [\d,]+ \(12\) \| 1 \|", md)
    assert "## Failed runs (not finished)" in md and "broken/seed0" in md


def test_shared_settings_come_from_the_runs_own_configs():
    from hybrid.studies.results import Run

    def run(config: dict):
        return Run(variant="v", seed=config.get("seed", 0), path=None, report={"config": config})

    runs = [run(TrainConfig(seed=0, dropout=0.5, quantum=True).to_dict()),
            run(TrainConfig(seed=1, dropout=0.5, quantum=False).to_dict())]
    # dropout differs from the default in every run; quantum varies; seed is never a setting
    assert study_report.shared_settings(runs) == {"dropout": 0.5}
    # a config saved before input_smoothing existed ran without it, whatever the default is now
    old = study_report.shared_settings([run({"seed": 0, "epochs": 4})])
    assert old["input_smoothing"] == 0.0 and old["source_sampling"] == "random"


def test_quantum_layer_effect_compares_variants_that_differ_only_by_the_layer(synthetic, monkeypatch):
    shift_auc = lambda s, c: erm_auc(s, c) + 0.03  # noqa: E731
    monkeypatch.setitem(AUC, "shift", shift_auc)
    monkeypatch.setitem(AUC, "quantum", lambda s, c: shift_auc(s, c) - 0.02 - 0.001 * c)
    monkeypatch.setitem(FLAGS, "shift", (True, "erm", False))
    monkeypatch.setitem(FLAGS, "quantum", (True, "erm", True))
    for variant in ("shift", "quantum"):
        for seed in SEEDS:
            write_run(synthetic, variant, seed)
    result = study_report.build_report(synthetic, models=False)
    effect = result["groups"]["unseen centers"]["quantum_effect"]["tta"]
    auc = next(r for r in effect if r["metric"] == "AUC")
    assert auc["name"] == "quantum vs shift" and auc["n"] == 12
    assert auc["mean_diff"] == pytest.approx(-0.02 - 0.001 * 1.5)
    assert auc["lower"] == 12 and auc["verdict"] == "lower, significant at 0.05"
    assert not any(r["name"].startswith("full") for r in effect)  # no full/dann runs here
    md = (synthetic / "report.md").read_text()
    assert "### Does the quantum layer help?" in md and "| quantum vs shift | AUC (per seed x center) | 12 |" in md


def test_every_head_variant_is_paired_with_its_controls_and_with_concat():
    variants = ["concat", "dressed8_angle", "dressed8_angle_separable", "dressed8_angle_twin", "dressed8_angle_none",
                "residual", "shift", "quantum"]
    pairs = study_report.quantum_pairs(variants)
    assert ("quantum", "shift") in pairs
    assert {p for p in pairs if p[0] == "dressed8_angle"} == {
        ("dressed8_angle", "dressed8_angle" + s) for s in ("_separable", "_twin", "_none")} | {("dressed8_angle", "concat")}
    assert ("residual", "concat") in pairs and not any(p[0].endswith("_twin") for p in pairs)
    assert not any(p[1] == "concat" for p in study_report.quantum_pairs(variants[1:]))  # no concat run, no pair


def write_evaluation(synthetic, name: str, tta: str, gain: float) -> None:
    """eval_<name>.json in every run: the run's with-TTA AUCs plus `gain`, as another TTA would give."""
    for path in synthetic.glob("*/seed*/report.json"):
        r = json.loads(path.read_text())
        domains = {k: metrics(m["auc"] + gain) for k, m in r["domains"].items()}
        (path.parent / f"eval_{name}.json").write_text(json.dumps({"tta": tta, "domains": domains}))


def test_an_evaluation_replaces_the_with_tta_results_in_a_report_of_its_own(synthetic, capsys):
    before = (synthetic / "report.md").exists()
    write_evaluation(synthetic, "alt", "adabn", 0.03)
    assert study_report.main([str(synthetic), "--no-models", "--evaluation", "alt"]) == 0
    out = synthetic / "report_alt"
    assert str(out / "report.md") in capsys.readouterr().out
    result = json.loads((out / "report.json").read_text())
    tables = result["groups"]["unseen centers"]["tables"]
    per_seed = [np.mean([erm_auc(s, c) for c in range(len(CENTERS))]) for s in SEEDS]
    assert tables["tta"]["erm"]["auc_mean"]["mean"] == pytest.approx(np.mean(per_seed) + 0.03)
    assert tables["no_tta"]["erm"]["auc_mean"]["mean"] == pytest.approx(np.mean(per_seed) - 0.02)  # the run's own
    tta = {r["name"]: r for r in result["groups"]["unseen centers"]["tta_effect"] if r["metric"] == "AUC"}
    assert tta["erm"]["mean_diff"] == pytest.approx(0.05)
    md = (out / "report.md").read_text()
    assert "eval_alt.json" in md and "TTA = adabn" in md and "### With TTA (adabn)" in md
    assert "tta=bn" not in md  # the runs' own TTA is not what this report shows
    assert (synthetic / "report.md").exists() == before  # the study's own report is not touched


def test_an_evaluation_keeps_the_no_tta_results_of_runs_trained_without_tta(synthetic):
    from hybrid.studies.results import load_runs

    for path in synthetic.glob("*/seed*/report.json"):  # trained without TTA: "domains" holds the no-TTA results
        r = json.loads(path.read_text())
        path.write_text(json.dumps(r | {"tta": "none", "domains": r["domains_no_tta"], "domains_no_tta": None}))
    write_evaluation(synthetic, "alt", "adabn", 0.03)
    _, runs = load_runs(synthetic, evaluation="alt")
    erm = next(r for r in runs if r.variant == "erm" and r.seed == 0)
    assert erm.domains("no_tta")["c0"]["auc"] == pytest.approx(erm_auc(0, 0) - 0.02)  # its own, kept
    assert erm.domains("tta")["c0"]["auc"] == pytest.approx(erm_auc(0, 0) - 0.02 + 0.03)  # the evaluation's


def test_an_evaluation_missing_from_a_run_or_without_tta_is_refused(synthetic, capsys):
    write_evaluation(synthetic, "alt", "adabn", 0.0)
    (synthetic / "erm" / "seed1" / "eval_alt.json").unlink()
    assert study_report.main([str(synthetic), "--no-models", "--evaluation", "alt"]) == 2
    err = capsys.readouterr().err
    assert "1 run has no eval_alt.json" in err and "--name alt" in err and err.count("\n") == 1
    write_evaluation(synthetic, "plain", "none", 0.0)
    assert study_report.main([str(synthetic), "--no-models", "--evaluation", "plain"]) == 2
    assert "without TTA" in capsys.readouterr().err


def test_multiclass_studies_get_a_per_class_auc_table():
    from pathlib import Path

    from hybrid.studies.report_markdown import per_class_lines
    from hybrid.studies.results import Run

    def run(variant, seed, clean, real):
        domains = {"clean": {"auc": 0.8, "auc_per_class": clean}, "real:q": {"auc": 0.6, "auc_per_class": real},
                   "tgt_blur": {"auc": 0.7}}
        return Run(variant, seed, Path("."), {"domains": domains, "data": {"class_names": ["mel", "nv", "bcc"]}})

    lines = per_class_lines([run("erm", 0, [0.9, 0.8, 0.7], [0.5, 0.6, None]),
                             run("erm", 1, [0.7, 0.8, 0.9], [0.7, 0.6, None])])
    text = "\n".join(lines)
    assert "### clean" in text and "### real:q" in text and "tgt_blur" not in text
    assert "| erm | 0.800 | 0.800 | 0.800 |" in text and "| erm | 0.600 | 0.600 | – |" in text
    assert per_class_lines([Run("erm", 0, Path("."), {"domains": {"clean": {"auc": 0.8}},
                                                      "data": {"class_names": ["a", "b"]}})]) == []


def test_the_variant_is_selected_on_source_validation_with_ties_to_the_earlier_listed(synthetic):
    # erm 0.85, better 0.90, same 0.903: "same" scores highest, but "better" is within the 0.005 tie
    # and listed earlier, so it is chosen; no held-out center enters the choice
    source_val = {"erm": 0.85, "better": 0.90, "same": 0.903}
    for variant, auc in source_val.items():
        for seed in SEEDS:
            path = synthetic / variant / f"seed{seed}" / "report.json"
            report = json.loads(path.read_text())
            path.write_text(json.dumps(report | {"source_val": {"auc": auc + 0.001 * (seed - 1)}}))
    result = study_report.build_report(synthetic, models=False)
    selection = result["selection"]
    assert selection["selected"] == "better"
    assert selection["scores"]["same"]["mean"] == pytest.approx(0.903)
    assert selection["scores"]["erm"]["n"] == 3
    text = (synthetic / "report.md").read_text()
    assert "## Selection on source validation" in text
    assert "| better (selected) | 0.900 ± 0.001 | 3 |" in text
    assert "- better: mean AUC over seeds (with the run's TTA): clean 0.900." in text


def test_components_name_colour_constancy():
    from hybrid.studies.report_markdown import method_components

    cfg = TrainConfig(shift=True, algorithm="erm", quantum=False, colour_constancy=6.0).to_dict()
    assert method_components(cfg) == "colour constancy + shift"
    assert method_components(TrainConfig(shift=False, algorithm="erm", quantum=False).to_dict()) == "none"


def test_a_run_that_fell_back_to_erm_is_reported_as_erm(tmp_path, data_root, caplog):
    """CORAL (like DANN) with one training domain (no virtual centers) trains ERM: the run's report and a study's
    components must say so, not the configured method; its own hyperparameters, which ERM does not take, used to
    stop that fallback with an error."""
    from hybrid import train
    from hybrid.studies.report_markdown import method_components

    out = tmp_path / "run"
    with caplog.at_level("WARNING"):
        assert train.main(["--algorithm", "coral", "--algorithm-hparams", "coral_weight=2", "--no-shift",
                           "--no-quantum", "--epochs", "1", "--max-train-samples", "64", "--width-mult", "0.1",
                           "--stem-stride", "2", "--input-size", "16", "--embed-dim", "16", "--batch-size", "32",
                           "--n-bootstrap", "0", "--eval-max-samples", "32", "--no-figures", "--threads", "1",
                           "--quiet", "--data-root", str(data_root), "--out", str(out)]) == 0
    assert "coral needs at least two training domains" in caplog.text and "training with erm instead" in caplog.text
    report = json.loads((out / "report.json").read_text())
    assert (report["config"]["algorithm"], report["run"]["algorithm"]) == ("coral", "erm")
    assert "Trained with **erm**: the config asks for coral" in (out / "report.md").read_text()
    assert method_components(report["config"], report["run"]["algorithm"]) == "none"
    assert method_components(report["config"]) == "CORAL"


def test_runs_without_source_validation_select_nothing(synthetic):
    result = study_report.build_report(synthetic, models=False)
    assert result["selection"]["selected"] is None
    assert "Selection on source validation" not in (synthetic / "report.md").read_text()


def test_components_name_the_slot_learning_rate_and_the_noise_kind():
    from hybrid.studies.experiment import build_study
    from hybrid.studies.report_markdown import method_components

    study = build_study("quantum")
    name = lambda variant: method_components(study.config(variant, 0).to_dict())  # noqa: E731
    assert name("dressed_angle_qlr100") == "shift + DANN + quantum (dressed, pqc, 4 qubits, angle map, slot lr x100)"
    assert name("dressed_angle_qlr100_twin").endswith("(dressed, classical_twin, 4 qubits, slot lr x100)")
    assert name("dressed_angle_qlr100_noise_pathwise").endswith("angle map, noise-aware (pathwise), slot lr x100)")
    assert name("dressed_angle_noise_aware").endswith("angle map, noise-aware)")
    device = name("dressed_angle_qlr100_zzobs_drop_noise_device")
    assert "noise-aware (attenuation of aer_noisy:fake_manila)" in device
    density = name("dressed_angle_qlr100_zzobs_drop_noise_density")
    assert "noise-aware (joint, noise model of aer_noisy:fake_manila)" in density
    marginal = name("dressed_angle_qlr100_zzobs_drop_detach_kd_last_noise_marginal")
    assert "noise-aware (marginal, attenuation of aer_noisy:fake_manila)" in marginal
    assert name("concat") == "shift + DANN + quantum"


def test_the_device_calibrated_variant_is_the_adopted_recipe_with_shots_and_the_device():
    from hybrid.studies.presets import PRESETS

    variants = PRESETS["quantum"].variants
    adopted = variants["dressed_angle_qlr100_zzobs_drop"]
    device = variants["dressed_angle_qlr100_zzobs_drop_noise_device"]
    changed = {k: v for k, v in device.items() if adopted.get(k) != v}
    assert changed == dict(q_train_shots=1024, q_noise_device="aer_noisy:fake_manila")
    density = variants["dressed_angle_qlr100_zzobs_drop_noise_density"]
    assert {k: v for k, v in density.items() if adopted.get(k) != v} == dict(
        changed, q_shot_noise="joint", q_noise_channel="density")


def test_a_slot_learning_rate_variant_is_paired_with_the_none_control_of_its_base():
    from hybrid.studies.report import quantum_pairs

    pairs = quantum_pairs(["concat", "dressed_angle_qlr100", "dressed_angle_qlr100_twin", "dressed_angle_none",
                           "dressed_angle_qlr100_noise_pathwise"])
    assert ("dressed_angle_qlr100", "dressed_angle_none") in pairs
    assert ("dressed_angle_qlr100", "dressed_angle_qlr100_twin") in pairs
    assert not any(p[0].endswith("_noise_pathwise") and p[1].endswith("_none") for p in pairs)  # not its control


def test_angle_norm_variants_are_named_and_paired_with_their_own_controls():
    from hybrid.studies.experiment import build_study
    from hybrid.studies.report import quantum_pairs
    from hybrid.studies.report_markdown import method_components

    study = build_study("quantum")
    name = lambda variant: method_components(study.config(variant, 0).to_dict())  # noqa: E731
    assert name("dressed_angle_qlr100_anorm").endswith("(dressed, pqc, 4 qubits, angle map, slot lr x100, angle BN)")
    assert name("dressed_angle_anorm_none").endswith("(dressed, none, 4 qubits, angle BN)")
    variants = ["concat", "dressed_angle_qlr100_anorm", "dressed_angle_qlr100_anorm_separable",
                "dressed_angle_qlr100_anorm_twin", "dressed_angle_anorm_none", "dressed8_angle_qlr100_anorm"]
    pairs = quantum_pairs(variants)
    assert {("dressed_angle_qlr100_anorm", control) for control in variants[2:5]} <= set(pairs)
    assert {(v, "concat") for v in ("dressed_angle_qlr100_anorm", "dressed8_angle_qlr100_anorm")} <= set(pairs)
    assert study.config("dressed_angle_anorm_none", 0).q_angle_norm and not study.config("dressed_angle_none", 0).q_angle_norm


def test_more_readout_variants_name_their_observables_and_keep_the_plain_none_control():
    from hybrid.studies.experiment import build_study
    from hybrid.studies.report import quantum_pairs
    from hybrid.studies.report_markdown import method_components

    study = build_study("quantum")
    assert method_components(study.config("dressed_angle_qlr100_zzobs", 0).to_dict()).endswith(
        "(dressed, pqc, 4 qubits, angle map, z+zz observables, slot lr x100)")
    # a circuit with no layer has nothing to measure: the control is dressed_angle_none under another name
    assert study.config("dressed_angle_zzobs_none", 0) == study.config("dressed_angle_none", 0)
    assert study.config("dressed_angle_qlr100_zzobs_twin", 0).q_observables == "z+zz"
    pairs = quantum_pairs(["concat", "dressed_angle_qlr100_zzobs", "dressed_angle_zzobs_none"])
    assert ("dressed_angle_qlr100_zzobs", "dressed_angle_zzobs_none") in pairs


def test_drop_plus_variants_add_their_regularizer_to_the_adopted_recipe_and_name_it():
    from hybrid.studies.experiment import build_study
    from hybrid.studies.report_markdown import method_components

    study = build_study("quantum")
    adopted = study.config("dressed_angle_qlr100_zzobs_drop", 0)
    both = study.config("dressed_angle_qlr100_zzobs_drop_ls", 0)
    stronger = study.config("dressed_angle_qlr100_zzobs_drop5", 0)
    assert (both.label_smoothing, both.q_input_dropout, both.dropout) == (0.1, True, adopted.dropout)
    assert (stronger.dropout, stronger.q_input_dropout, stronger.label_smoothing) == (0.5, True, 0.0)
    assert method_components(stronger.to_dict()).endswith("slot lr x100, slot input dropout 0.5)")
    assert method_components(adopted.to_dict()).endswith("slot lr x100, slot input dropout)")
    assert study.config("dressed_angle_zzobs_drop5_none", 0).dropout == 0.5


def test_reupload_variant_is_the_adopted_recipe_with_two_uploads_and_says_so():
    from hybrid.studies.experiment import build_study
    from hybrid.studies.report_markdown import method_components

    study = build_study("quantum")
    for width in ("", "8"):
        adopted = study.config(f"dressed{width}_angle_qlr100_zzobs_drop", 0)
        reupload = study.config(f"dressed{width}_angle_reup2_qlr100_zzobs_drop", 0)
        assert reupload.q_reupload == 2 and adopted.q_reupload == 1
        assert {k: v for k, v in reupload.to_dict().items() if k != "q_reupload"} == \
            {k: v for k, v in adopted.to_dict().items() if k != "q_reupload"}
    assert "re-uploaded x2" in method_components(reupload.to_dict())


def test_aux_variants_are_the_adopted_recipe_with_an_embedding_classifier_and_say_so():
    from hybrid.studies.experiment import build_study
    from hybrid.studies.report import quantum_pairs
    from hybrid.studies.report_markdown import method_components

    study = build_study("quantum")
    for tag, weight in (("aux1", 1.0), ("aux03", 0.3)):
        for width in ("", "8"):
            adopted = study.config(f"dressed{width}_angle_qlr100_zzobs_drop", 0)
            aux = study.config(f"dressed{width}_angle_qlr100_zzobs_drop_{tag}", 0)
            assert aux.aux_weight == weight and adopted.aux_weight == 0.0
            assert adopted.differences(aux) == [("aux_weight", 0.0, weight)]
        assert study.config(f"dressed_angle_zzobs_drop_{tag}_none", 0).aux_weight == weight
        assert study.config(f"dressed_angle_qlr100_zzobs_drop_{tag}_twin", 0).aux_weight == weight
    assert method_components(aux.to_dict()).startswith("shift + DANN + aux loss x0.3 + quantum (dressed, pqc, 8")
    pairs = quantum_pairs(["dressed_angle_qlr100_zzobs_drop_aux1", "dressed_angle_qlr100_zzobs_drop_aux1_separable",
                           "dressed_angle_zzobs_drop_aux1_none"])
    assert ("dressed_angle_qlr100_zzobs_drop_aux1", "dressed_angle_zzobs_drop_aux1_none") in pairs


def test_budget_recheck_variants_change_one_thing_in_the_adopted_recipe_and_their_controls():
    from hybrid.studies.experiment import build_study
    from hybrid.studies.report_markdown import method_components

    study = build_study("quantum")
    for width in ("", "8"):
        for suffix in ("", "_separable", "_twin"):
            adopted = study.config(f"dressed{width}_angle_qlr100_zzobs_drop{suffix}", 0)
            assert adopted.differences(study.config(f"dressed{width}_angle_qlr30_zzobs_drop{suffix}", 0)) == \
                [("q_lr_scale", 100.0, 30.0)]
            assert adopted.differences(study.config(f"dressed{width}_angle_qlr100_zzobs_drop_anorm{suffix}", 0)) == \
                [("q_angle_norm", False, True)]
        none = study.config(f"dressed{width}_angle_zzobs_drop_none", 0)
        assert none.differences(study.config(f"dressed{width}_angle_zzobs_drop_anorm_none", 0)) == \
            [("q_angle_norm", False, True)]
    assert "slot lr x30, slot input dropout)" in method_components(study.config("dressed_angle_qlr30_zzobs_drop", 0).to_dict())
    assert "angle BN" in method_components(study.config("dressed_angle_qlr100_zzobs_drop_anorm", 0).to_dict())


def test_ansatz_depth_variants_change_only_the_repetitions_and_keep_a_twin_where_one_can_exist():
    from dataclasses import replace

    from hybrid.model import HybridNet
    from hybrid.studies.experiment import build_study

    study = build_study("quantum")
    adopted = study.config("dressed_angle_qlr100_zzobs_drop", 0)
    for reps in (1, 4):
        assert adopted.differences(study.config(f"dressed_angle_qlr100_zzobs_drop_reps{reps}", 0)) == [("q_reps", 2, reps)]
    twin = study.config("dressed_angle_qlr100_zzobs_drop_reps4_twin", 0)
    circuit = study.config("dressed_angle_qlr100_zzobs_drop_reps4", 0)
    small = [replace(cfg, width_mult=0.1, embed_dim=8).model_config() for cfg in (circuit, twin)]  # the slot alone matters
    counts = [HybridNet(cfg, in_channels=1, n_classes=2).parameter_counts()["layer"] for cfg in small]
    assert counts == [20, 20]  # RealAmplitudes on 4 qubits, 4 repetitions: 4 x 5 angles; the twin matches them
    assert "dressed_angle_qlr100_zzobs_drop_reps1_twin" not in study.variants


TRAINING_TRIES = [("ema99", "ema_decay", 0.0, 0.99, "weight EMA 0.99"),
                  ("ema995", "ema_decay", 0.0, 0.995, "weight EMA 0.995"),
                  ("last", "selection", "auc", "last", "last epoch kept")]


@pytest.mark.parametrize("tag,field,default,value,label", TRAINING_TRIES, ids=[t[0] for t in TRAINING_TRIES])
def test_training_tries_change_the_adopted_recipe_and_concat_and_are_paired_with_both_concats(tag, field, default,
                                                                                               value, label):
    from hybrid.studies.experiment import build_study
    from hybrid.studies.report import quantum_pairs
    from hybrid.studies.report_markdown import method_components

    study = build_study("quantum")
    for width in ("", "8"):
        adopted = study.config(f"dressed{width}_angle_qlr100_zzobs_drop", 0)
        assert adopted.differences(study.config(f"dressed{width}_angle_qlr100_zzobs_drop_{tag}", 0)) == \
            [(field, default, value)]
    assert study.config("concat", 0).differences(study.config(f"concat_{tag}", 0)) == [(field, default, value)]
    assert getattr(study.config(f"dressed_angle_zzobs_drop_{tag}_none", 0), field) == value
    assert method_components(study.config(f"concat_{tag}", 0).to_dict()) == f"shift + DANN + {label} + quantum"
    other = next(t[0] for t in TRAINING_TRIES if t[0] != tag)  # another try's head must not meet this concat
    variants = ["concat", f"concat_{tag}", f"dressed_angle_qlr100_zzobs_drop_{tag}",
                f"dressed8_angle_qlr100_zzobs_drop_{tag}", "dressed_angle_qlr100_zzobs_drop",
                f"dressed_angle_qlr100_zzobs_drop_{other}"]
    pairs = quantum_pairs(variants)
    for width in ("", "8"):  # each changed head against concat with and without the same change
        assert (f"dressed{width}_angle_qlr100_zzobs_drop_{tag}", "concat") in pairs
        assert (f"dressed{width}_angle_qlr100_zzobs_drop_{tag}", f"concat_{tag}") in pairs
    assert (f"concat_{tag}", "concat") in pairs
    assert (f"dressed_angle_qlr100_zzobs_drop_{other}", f"concat_{tag}") not in pairs  # another change: no such pair
    assert (f"dressed_angle_qlr100_zzobs_drop_{other}", "concat") in pairs


def test_head_gradient_variants_add_the_aux_classifier_and_scale_the_heads_gradient_for_every_control():
    from hybrid.studies.experiment import build_study
    from hybrid.studies.report_markdown import method_components

    study = build_study("quantum")
    for tag, scale, label in (("detach", 0.0, "head on detached f"), ("hgrad01", 0.1, "head gradient x0.1 to the encoder")):
        for width in ("", "8"):
            adopted = study.config(f"dressed{width}_angle_qlr100_zzobs_drop", 0)
            changed = study.config(f"dressed{width}_angle_qlr100_zzobs_drop_{tag}", 0)
            assert sorted(adopted.differences(changed)) == [("aux_weight", 0.0, 1.0), ("head_grad_scale", 1.0, scale)]
            for control in (f"dressed{width}_angle_qlr100_zzobs_drop_{tag}_separable",
                            f"dressed{width}_angle_qlr100_zzobs_drop_{tag}_twin", f"dressed{width}_angle_zzobs_drop_{tag}_none"):
                assert (study.config(control, 0).head_grad_scale, study.config(control, 0).aux_weight) == (scale, 1.0)
        assert f"aux loss x1 + {label} + quantum (dressed" in method_components(changed.to_dict())


def test_angle_map_variants_change_only_the_slots_reading_on_the_detached_recipe():
    from hybrid.studies.experiment import build_study
    from hybrid.studies.report_markdown import method_components

    study = build_study("quantum")
    for width in ("", "8"):
        detach = study.config(f"dressed{width}_angle_qlr100_zzobs_drop_detach", 0)
        assert detach.differences(study.config(f"dressed{width}_angle_qlr100_zzobs_drop_detach_atan", 0)) == \
            [("q_angle_map", "tanh", "arctan")]
        assert detach.differences(study.config(f"dressed{width}_angle_qlr100_zzobs_drop_detach_fm1", 0)) == \
            [("q_feature_reps", 2, 1)]
        assert study.config(f"dressed{width}_angle_qlr100_zzobs_drop_detach_atan_twin", 0).q_angle_map == "arctan"
        assert study.config(f"dressed{width}_angle_zzobs_drop_detach_atan_none", 0).differences(
            study.config(f"dressed{width}_angle_zzobs_drop_detach_none", 0)) == []  # no angles without a slot
    for recipe, kind in (("detach", "joint"), ("detach_kd_last", "joint"), ("detach_kd_last", "marginal")):
        noisy = study.config(f"dressed_angle_qlr100_zzobs_drop_{recipe}_noise_{kind}", 0)  # for the device
        assert sorted(study.config(f"dressed_angle_qlr100_zzobs_drop_{recipe}", 0).differences(noisy)) == [
            ("q_noise_device", "", "aer_noisy:fake_manila"), ("q_shot_noise", "binomial", kind),
            ("q_train_shots", 0, 1024)]
    assert ", arctan angles" in method_components(study.config("dressed_angle_qlr100_zzobs_drop_detach_atan", 0).to_dict())
    assert "arctan" not in method_components(study.config("dressed_angle_zzobs_drop_detach_atan_none", 0).to_dict())


def test_distill_variants_add_only_the_distillation_to_the_detached_recipe_and_its_controls():
    from hybrid.studies.experiment import build_study
    from hybrid.studies.report_markdown import method_components

    study = build_study("quantum")
    for tag, temperature in (("kd", 2.0), ("kd4", 4.0)):
        added = [("distill_temperature", 2.0, temperature)] if temperature != 2.0 else []
        for width in ("", "8"):
            for suffix in ("", "_separable", "_twin"):
                base = study.config(f"dressed{width}_angle_qlr100_zzobs_drop_detach{suffix}", 0)
                assert sorted(base.differences(study.config(f"dressed{width}_angle_qlr100_zzobs_drop_detach_{tag}{suffix}", 0))) \
                    == sorted([("head_distill", 0.0, 1.0)] + added)
            none = study.config(f"dressed{width}_angle_zzobs_drop_detach_none", 0)
            assert sorted(none.differences(study.config(f"dressed{width}_angle_zzobs_drop_detach_{tag}_none", 0))) == \
                sorted([("head_distill", 0.0, 1.0)] + added)
            assert study.config(f"dressed{width}_angle_qlr100_zzobs_drop_detach_kd", 0).differences(
                study.config(f"dressed{width}_angle_qlr100_zzobs_drop_detach_kd_last", 0)) == [("selection", "auc", "last")]
        assert f"head distilled from the aux classifier x1 at T={temperature:g}" in method_components(
            study.config(f"dressed_angle_qlr100_zzobs_drop_detach_{tag}", 0).to_dict())


def test_refit_variants_refit_the_head_of_a_trained_network_and_need_the_runs_to_start_from():
    from hybrid.config import refits_head
    from hybrid.studies.experiment import build_study

    study = build_study("quantum")
    for tag, lr in (("refit", 2e-4), ("refit_lr2e3", 2e-3)):
        for base, refitted in (("dressed_angle_qlr100_zzobs_drop_detach", f"dressed_angle_qlr100_zzobs_drop_detach_{tag}"),
                               ("dressed8_angle_qlr100_zzobs_drop_detach", f"dressed8_angle_qlr100_zzobs_drop_detach_{tag}"),
                               ("concat", f"concat_{tag}")):
            cfg = study.config(refitted, 0)
            assert (cfg.algorithm, cfg.lr, cfg.epochs, cfg.aux_weight, cfg.head_grad_scale) == ("erm", lr, 3, 0.0, 0.0)
            changed = {name for name, _, _ in study.config(base, 0).differences(cfg)}
            assert changed <= {"algorithm", "lr", "epochs", "aux_weight", "head_grad_scale"}  # nothing else differs
            assert refits_head(cfg)  # so it trains only with --set init_from=...
    noisy = study.config("dressed_angle_qlr100_zzobs_drop_detach_refit_noise_joint", 0)  # the paired noise-aware arm
    assert sorted(study.config("dressed_angle_qlr100_zzobs_drop_detach_refit", 0).differences(noisy)) == [
        ("q_noise_device", "", "aer_noisy:fake_manila"), ("q_shot_noise", "binomial", "joint"), ("q_train_shots", 0, 1024)]
    assert refits_head(noisy)


def test_encoding_variants_change_only_the_encoding_and_their_none_control_is_the_adopted_one():
    from hybrid.studies.experiment import build_study

    study = build_study("quantum")
    adopted = study.config("dressed_angle_qlr100_zzobs_drop", 0)
    assert adopted.differences(study.config("dressed_angle_qlr100_zzobs_drop_fm1", 0)) == [("q_feature_reps", 2, 1)]
    assert sorted(adopted.differences(study.config("dressed_angle_qlr100_zzobs_drop_ry1", 0))) == \
        [("feature_map", "angle", "ry"), ("q_feature_reps", 2, 1)]
    for tag in ("fm1", "ry1"):  # no circuit, no encoding: the control is the adopted recipe's own
        assert study.config(f"dressed_angle_zzobs_drop_{tag}_none", 0).differences(
            study.config("dressed_angle_zzobs_drop_none", 0)) == []


def _split_study(synthetic, tmp_path):
    """The synthetic study trained in two folders: erm in one, the other variants in another."""
    part_a, part_b = tmp_path / "baseline", tmp_path / "candidates"
    shutil.copytree(synthetic / "erm", part_a / "erm")
    for variant in ("better", "same"):
        shutil.copytree(synthetic / variant, part_b / variant)
    (part_b / "study.json").write_text(json.dumps({
        "preset": "synthetic", "variants": {"better": {}, "same": {}}, "machine": {"cpu": "cpu B", "cores": 2},
        "invocations": [{"started": "2026-12-05T10:00", "command": "train b"}]}))
    (part_a / "study.json").write_text(json.dumps({
        "variants": {"erm": {}}, "machine": {"cpu": "cpu A", "cores": 2},
        "invocations": [{"started": "2026-12-05T09:00", "command": "train a"}]}))
    return part_a, part_b


def test_runs_trained_in_several_folders_make_one_report_equal_to_the_single_folder_one(synthetic, tmp_path, capsys):
    study_report.build_report(synthetic, models=False, out_dir=tmp_path / "whole")
    whole = json.loads((tmp_path / "whole" / "report.json").read_text())
    part_a, part_b = _split_study(synthetic, tmp_path)
    for out in ([], ["--out", str(part_b)]):  # no --out, or the study's own folder: its report would be replaced
        assert study_report.main([str(part_b), "--include", str(part_a), "--no-models", *out]) == 2
        assert "needs an --out of its own" in capsys.readouterr().err and not (part_b / "report.md").exists()
    out = tmp_path / "joined"
    assert study_report.main([str(part_b), "--include", str(part_a), "--no-models", "--out", str(out)]) == 0
    joined = json.loads((out / "report.json").read_text())
    assert joined["variants"] == ["better", "same", "erm"]  # the leading folder's study order, then the included
    assert joined["groups"]["unseen centers"]["tables"] == whole["groups"]["unseen centers"]["tables"]
    assert rows(joined) == rows(whole) and ("better", "AUC") in rows(joined)  # erm, from the other folder, is paired
    assert joined["selection"] == {} and any("several study folders" in s for s in joined["skipped"])
    md = (out / "report.md").read_text()
    assert f"Runs from {part_b}, {part_a}." in md
    assert f"Machine ({part_b}): cpu B" in md and f"Machine ({part_a}): cpu A" in md
    assert md.index("`train a`") < md.index("`train b`")  # invocations in the order they started


def test_a_report_of_some_variants_and_seeds_keeps_only_those_and_names_what_it_kept(synthetic, tmp_path, capsys):
    out = tmp_path / "replication"
    (synthetic / "failures.jsonl").write_text("\n".join(json.dumps(f) for f in [
        {"variant": "better", "seed": 7, "error": "killed"}, {"variant": "same", "seed": 1, "error": "killed"},
        {"variant": "better", "seed": 9, "error": "out of memory"}]))
    assert study_report.main([str(synthetic), "--no-models", "--variants", "erm,better", "--only-seeds", "1,2",
                              "--out", str(out)]) == 0
    result = json.loads((out / "report.json").read_text())
    assert [(r["variant"], r["seed"]) for r in result["runs"]] == [("erm", 1), ("erm", 2), ("better", 1), ("better", 2)]
    better = rows(result)[("better", "AUC")]
    assert better["n"] == 2 * len(CENTERS) and better["higher"] == 2 * len(CENTERS)
    assert result["failures"] == []  # seeds 7 and 9, and the variant "same", are not in this report
    assert "variants erm, better; seeds 1, 2." in (out / "report.md").read_text()
    for argv, words in [(["--variants", "erm,worse"], "no finished runs of worse"),
                        (["--only-seeds", "2,3"], "no finished run of erm seed 3"),
                        (["--only-seeds", "8,9"], "no finished run has any of the seeds asked for (8, 9)")]:
        assert study_report.main([str(synthetic), "--no-models", *argv, "--out", str(out)]) == 2
        assert words in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study_report.main([str(synthetic), "--only-seeds", "one", "--out", str(out)])
    assert "comma-separated whole numbers" in capsys.readouterr().err


def test_the_same_run_in_two_folders_is_refused_unless_one_is_left_out(synthetic, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(synthetic / "same", copy / "same")
    shutil.copytree(synthetic / "better", copy / "better")
    out = str(tmp_path / "r")
    assert study_report.main([str(synthetic), "--include", str(copy), "--no-models", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "seed 0 is in both" in err and str(synthetic) in err and str(copy) in err and "--only-seeds" in err
    assert study_report.main([str(synthetic), "--include", str(copy), "--variants", "erm", "--no-models",
                              "--out", out]) == 0  # the duplicated variants are not asked for
    assert study_report.main([str(synthetic), "--include", str(tmp_path / "typo"), "--no-models", "--out", out]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'typo'} does not exist" in err  # a mistyped folder is not silently empty
    # one run's folder is not a study: its own report.md is named
    one_run = synthetic / "erm" / "seed0"
    assert study_report.main([str(one_run), "--no-models", "--out", out]) == 2
    assert f"is one run's directory, not a study: its report is {one_run / 'report.md'}" in capsys.readouterr().err


def test_a_variant_trained_differently_in_two_folders_is_refused(synthetic, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(synthetic / "same" / "seed0", other / "same" / "seed5")
    report_path = other / "same" / "seed5" / "report.json"
    report = json.loads(report_path.read_text())
    report["config"] = report["config"] | {"seed": 5, "epochs": 12}
    report_path.write_text(json.dumps(report))
    assert study_report.main([str(synthetic), "--include", str(other), "--no-models", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "same was trained differently" in err and "epochs" in err and "seed," not in err


def test_the_feature_study_scores_every_variant_on_the_same_centers(tmp_path):
    """A variant whose domains lack a center must not shrink the set for the variants after it only: every
    center accuracy (and its chance level) is over the centers all variants have."""
    import torch

    from hybrid.studies.report_figures import feature_study
    from hybrid.studies.results import Run

    class Encoder(torch.nn.Module):
        def features(self, x):
            return x.flatten(1)

    def domain(k):
        return (torch.randn(40, 1, 2, 2, generator=torch.Generator().manual_seed(k)) + k, torch.zeros(40))

    everything = {"clean": domain(0), "c0": domain(1), "c1": domain(2), "c2": domain(3)}
    lacking = {k: v for k, v in everything.items() if k != "c1"}
    have = {"first": everything, "second": lacking, "third": everything}
    runs = [Run(v, 0, tmp_path, {"domains": {c: {"auc": 0.8} for c in CENTERS[:3]}}) for v in have]
    result = feature_study(runs, CENTERS[:3], tmp_path / "features.png", lambda run: (None, Encoder(), have[run.variant]))
    assert result["domains"] == ["clean", "c0", "c2"]
    assert [v["chance"] for v in result["variants"].values()] == pytest.approx([1 / 3] * 3)


def test_a_slurm_study_names_the_nodes_its_runs_trained_on_not_only_the_login_node(synthetic, tmp_path):
    """study.json is written where the command runs: with Slurm that is the login node, not the runs' machine."""
    study = json.loads((synthetic / "study.json").read_text())
    login = {"host": "login1", "cpu": "login cpu", "cores": 4, "launcher": "slurm"}
    (synthetic / "study.json").write_text(json.dumps(study | {"machine": login}))
    for k, report_path in enumerate(sorted(synthetic.glob("*/seed*/report.json"))):
        report = json.loads(report_path.read_text())
        report["run"]["host"] = f"node{k % 2}"
        report_path.write_text(json.dumps(report))
    study_report.build_report(synthetic, models=False, out_dir=tmp_path / "slurm")
    md = (tmp_path / "slurm" / "report.md").read_text()
    assert "Machine: Slurm nodes (the runs' hosts: node0, node1); submitted from login1: login cpu, 4 cores" in md
    (synthetic / "study.json").write_text(json.dumps(study | {"machine": login | {"launcher": "local"}}))
    study_report.build_report(synthetic, models=False, out_dir=tmp_path / "local")
    assert "Machine: login cpu, 4 cores" in (tmp_path / "local" / "report.md").read_text()


def test_the_roc_figure_scores_the_images_the_run_reported(tmp_path, caplog):
    """A run trained with --eval-max-samples reported its first N images per center; the figure's check scored
    them all and warned of a difference that was only the image count."""
    import torch

    from hybrid.studies.report_figures import roc_on_hardest
    from hybrid.studies.results import Run

    rng = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, generator=rng)
    y = (x[:, 0] + torch.randn(200, generator=rng) > 0).long()
    y[:40] = (x[:40, 0] > 0).long()  # the first 40 are easy: their AUC is 1, the whole set's is not
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-1.0, 0, 0], [1.0, 0, 0]]))
        model.bias.zero_()
    cfg = TrainConfig(eval_max_samples=40)
    report = {"tta": "none", "positive_class": 1, "domains": {"tgt_a": {"auc": 1.0}}}
    run = Run("erm", 0, tmp_path, report)
    with caplog.at_level("WARNING"):
        result = roc_on_hardest([run], ["tgt_a"], tmp_path / "roc.png", lambda r: (cfg, model, {"tgt_a": (x, y)}))
    assert result["runs"]["erm"]["recomputed_auc"] == pytest.approx(1.0)
    assert "differs from the run's" not in caplog.text and (tmp_path / "roc.png").is_file()


def test_unfinished_runs_are_named_not_dropped_silently(synthetic, tmp_path, capsys):
    """A run still training (or killed) has config.json but no report.json: the report used to read as if the
    variant had never been run."""
    (synthetic / "failures.jsonl").write_text(json.dumps({"variant": "same", "seed": 9, "error": "disk full"}) + "\n")
    for name in ("pending/seed0", "same/seed9"):  # one still training, one that failed (listed as failed instead)
        (synthetic / name).mkdir(parents=True)
        TrainConfig().save(synthetic / name / "config.json")
    assert study_report.main([str(synthetic), "--no-models", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "out" / "report.json").read_text())
    assert result["unfinished"] == ["pending/seed0"] and "left out, unfinished: pending/seed0" in out
    assert "1 unfinished run(s), not in the tables: pending/seed0" in (tmp_path / "out" / "report.md").read_text()


def _set_input_statistics(synthetic, variant: str, seed: int, mean, std) -> None:
    path = synthetic / variant / f"seed{seed}" / "report.json"
    report = json.loads(path.read_text())
    report["run"]["input_statistics"] = {"mean": mean, "std": std}
    path.write_text(json.dumps(report))


def test_seeds_that_normalised_their_inputs_differently_are_flagged(synthetic, caplog):
    imagenet = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    grey = ([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    _set_input_statistics(synthetic, "better", 0, *imagenet)  # seeds 1, 2 older: one value for every channel
    for seed in SEEDS:
        _set_input_statistics(synthetic, "same", seed, *grey)
    _set_input_statistics(synthetic, "erm", 0, *grey)  # erm's other seeds unrecorded, and theirs was the same
    result = study_report.build_report(synthetic, models=False)
    assert len(result["warnings"]) == 1
    assert result["warnings"][0].startswith("better: its seeds normalised their inputs differently")
    assert "seed 0: mean (0.485, 0.456, 0.406)" in result["warnings"][0]
    assert "seed 1, 2: not recorded" in result["warnings"][0]
    assert "**Warning:** better:" in (synthetic / "report.md").read_text()
    assert "better: its seeds normalised" in caplog.text
