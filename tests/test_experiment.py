"""The study runner on real PneumoniaMNIST with the quick preset: layout, resume, failures."""

from __future__ import annotations

import json

import pytest

from conftest import QUICK_STUDY_SETS
from hybrid.config import TrainConfig
from hybrid.studies import experiment

# the quick_study fixture's study: its preset and evaluation budget
QUICK = ["--preset", "quick", "--variants", "erm,full", "--seeds", "1", "--quiet", *QUICK_STUDY_SETS]


@pytest.fixture(scope="module")
def study_dir(quick_study):
    return quick_study[0]


@pytest.mark.slow
def test_study_layout_and_spec(study_dir):
    for variant in ("erm", "full"):
        run = study_dir / variant / "seed0"
        for name in ("config.json", "report.json", "best.pt", "train.log"):
            assert (run / name).is_file(), run / name
    erm, full = (TrainConfig.load(study_dir / v / "seed0" / "config.json") for v in ("erm", "full"))
    assert not (erm.shift or erm.quantum) and erm.algorithm == "erm" and full.shift and full.algorithm == "dann" and full.quantum
    assert erm.epochs == full.epochs == 1 and erm.max_train_samples == full.max_train_samples == 300
    spec = json.loads((study_dir / "study.json").read_text())
    assert spec["preset"] == "quick" and list(spec["variants"]) == ["broken", "erm", "full"]
    assert spec["seeds"] == [0] and spec["configs"]["full"]["quantum"] and spec["notes"]
    assert spec["machine"]["cores"] >= 1
    report = json.loads((study_dir / "full" / "seed0" / "report.json").read_text())
    assert report["summary_no_tta"] is not None and report["run"]["threads"] == 1


@pytest.mark.slow
def test_failed_run_is_logged_and_the_others_finish(study_dir, quick_study):
    summary = quick_study[1]
    assert summary["failed"] == ["broken/seed0"] and sorted(summary["finished"]) == ["erm/seed0", "full/seed0"]
    assert not experiment.is_finished(study_dir / "broken" / "seed0")
    (failure,) = [json.loads(line) for line in (study_dir / "failures.jsonl").read_text().splitlines()]
    assert failure["variant"] == "broken" and "nosuchmnist" in failure["error"] and failure["traceback"]


@pytest.mark.slow
def test_rerun_trains_nothing(study_dir, data_root, capsys):
    stamps = {p: p.stat().st_mtime_ns for p in study_dir.glob("*/seed0/*") if p.is_file()}
    assert experiment.main(QUICK + ["--data-root", str(data_root), "--out", str(study_dir)]) == 0
    assert "0 trained, 2 already finished, 0 failed" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert len(json.loads((study_dir / "study.json").read_text())["invocations"]) >= 2


@pytest.mark.slow
def test_rerun_with_another_budget_is_refused(study_dir, data_root, capsys):
    code = experiment.main(QUICK + ["--epochs", "2", "--data-root", str(data_root), "--out", str(study_dir)])
    assert code == 2 and "epochs=1" in capsys.readouterr().err


def test_a_variant_added_to_a_study_under_another_budget_is_refused(tmp_path):
    """Paired tests compare the variants of one folder: a variant trained before at 2 epochs and a new one at 10
    would be compared as if alike. Settings a variant sets itself may differ (that is what a variant is)."""
    erm = experiment.build_study("quick", variants=["erm"], overrides={"epochs": 2})
    experiment._write_study(erm, tmp_path, "first", 1)
    full = experiment.build_study("quick", variants=["full"], overrides={"epochs": 10})
    with pytest.raises(ValueError, match=r"variant 'erm' in .* was trained with epochs=2 \(now 10\)"):
        experiment.check_existing(full, tmp_path)
    experiment.check_existing(experiment.build_study("quick", variants=["full"], overrides={"epochs": 2}), tmp_path)
    moved = experiment.build_study("quick", variants=["full"], overrides={"epochs": 2, "threads": 7})
    experiment.check_existing(moved, tmp_path)  # where a run runs is not its budget


def test_status_lists_only_the_runs_some_invocation_asked_for(tmp_path, capsys):
    experiment._write_study(experiment.build_study("quick", variants=["erm"], seeds=3), tmp_path, "first", 1)
    experiment._write_study(experiment.build_study("quick", variants=["full"], seeds=1), tmp_path, "second", 1)
    assert experiment.print_status(tmp_path) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[:-1]] == ["erm/seed0", "full/seed0", "erm/seed1", "erm/seed2"]
    assert lines[-1] == "0 finished, 0 running, 0 failed, 4 pending"


def test_unknown_names_are_clear_errors():
    with pytest.raises(ValueError, match="valid presets: ablation"):
        experiment.build_study("nosuch")
    with pytest.raises(ValueError, match="valid: erm, shift"):
        experiment.build_study("quick", variants=["erm", "nosuch"])
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        experiment.build_study("quick", overrides={"epoch": 3})
    with pytest.raises(ValueError, match="variant erm: algorithm_hparams entry 'foo=1'"):  # before any run
        experiment.build_study("quick", overrides={"algorithm_hparams": "foo=1"})


def test_overrides_take_the_field_type():
    assert experiment.parse_override("n_bootstrap=200") == ("n_bootstrap", 200)
    assert experiment.parse_override("lr=1e-3") == ("lr", 1e-3)
    assert experiment.parse_override("augment=false") == ("augment", False)
    assert experiment.parse_override("max-train-samples=500") == ("max_train_samples", 500)
    assert experiment.parse_override("test_centers=rosendahl") == ("test_centers", "rosendahl")
    with pytest.raises(ValueError, match="expects a number"):
        experiment.parse_override("epochs=many")


def test_a_setting_that_variants_set_themselves_is_refused_not_silently_dropped(caplog, capsys):
    """The variants win over --set (base | variant | seed): --set quantum=false used to leave the quantum variant
    quantum, with rc 0 and no word."""
    with pytest.raises(ValueError, match=r"--set quantum=False would not reach the variants quantum, full, which"
                                         r".* two commands into the same --out: --variants erm,shift,dann --set "
                                         r"quantum=\.\.\., then --variants quantum,full"):
        experiment.build_study("quick", overrides={"quantum": False})
    with pytest.raises(ValueError, match="seeds are 0..N-1 from --seeds"):
        experiment.build_study("quick", variants=["erm"], overrides={"seed": 7})
    # a value every chosen variant already has is no conflict; nor is a key no chosen variant sets
    study = experiment.build_study("quick", variants=["erm"], overrides={"quantum": False, "lr": 2e-3})
    assert study.config("erm", 0).lr == 2e-3
    # the budget flags of a smoke test reach every variant but those with their own budget, which are named
    with caplog.at_level("WARNING", logger="hybrid.experiment"):
        study = experiment.build_study("quantum", variants=["concat", "concat_refit"], overrides={"epochs": 1})
    assert (study.config("concat", 0).epochs, study.config("concat_refit", 0).epochs) == (1, 3)
    assert "epochs=1 does not reach concat_refit, which set epochs themselves (3)" in caplog.text
    assert experiment.main(["--preset", "quick", "--epochs", "2", "--set", "epochs=3", "--dry-run"]) == 2
    assert "--epochs 2 and --set epochs=3 disagree" in capsys.readouterr().err



def test_a_study_is_not_put_inside_a_run_directory(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    assert experiment.main(["--preset", "quick", "--out", str(run), "--dry-run"]) == 2
    assert "is a run directory of hybrid.train, not a study" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["config.json"]


def test_presets_build_valid_configs():
    for name in experiment.PRESETS:
        study = experiment.build_study(name)
        if name.startswith("quantum"):  # the heads and their controls, all with the whole method
            assert {"concat", "dressed", "dressed_twin", "dressed_none"} <= set(study.variants)
            assert study.config("dressed_twin", 0).quantum_layer == "classical_twin"
        else:
            assert "erm" in study.variants and "full" in study.variants
            assert not study.config("erm", 0).quantum and study.config("full", 1).seed == 1
        if name == "quantum":  # the chosen angle circuit also at 8 qubits, with its controls
            cfg = study.config("dressed8_angle_twin", 0)
            assert (cfg.n_qubits, cfg.feature_map, cfg.quantum_layer) == (8, "angle", "classical_twin")
        assert study.notes and all(isinstance(note, str) and len(note) > 20 for note in study.notes)
    ham = experiment.build_study("ham10000")
    assert any("label mix" in note for note in ham.notes)
    assert ham.config("erm", 0).test_centers == "rosendahl"


def test_workers_exit_when_the_study_process_is_killed(tmp_path):
    """A study killed mid-run must not leave workers training in the background."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(
        "import os, sys, time\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from multiprocessing import get_context\n"
        "from hybrid.studies.launchers import exit_with_parent\n"
        "if __name__ == '__main__':\n"
        "    pool = ProcessPoolExecutor(1, mp_context=get_context('spawn'), initializer=exit_with_parent,\n"
        "                               initargs=(os.getpid(), 0.2))\n"
        "    print(pool.submit(os.getpid).result(), flush=True)\n"
        "    pool.submit(time.sleep, 120)\n"
        "    time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    worker = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)  # no cleanup possible: only the watcher can end the worker
    parent.wait()
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            os.kill(worker, 0)
            with open(f"/proc/{worker}/stat") as stat:  # an exited but unreaped worker is a zombie
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break
        except (ProcessLookupError, FileNotFoundError):
            break
        time.sleep(0.2)
    else:
        os.kill(worker, signal.SIGKILL)
        raise AssertionError("the worker outlived the killed study process")


@pytest.mark.slow
def test_a_killed_study_resumes_without_losing_or_duplicating_runs(tmp_path, data_root):
    """SIGKILL the study once its first run has finished; the rerun trains only the other one."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from hybrid.rundir import read_lines

    out = tmp_path / "study"
    argv = ["--preset", "quick", "--variants", "erm,full", "--seeds", "1", "--epochs", "1", "--max-train-samples",
            "96", "--set", "width_mult=0.1", "--set", "n_bootstrap=0", "--set", "eval_max_samples=32",
            "--data-root", str(data_root), "--out", str(out), "--quiet", "--threads", "1"]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    study = subprocess.Popen([sys.executable, "-m", "hybrid.experiment", *argv], cwd=repo,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "erm" / "seed0" / "report.json"
    deadline = time.time() + 300
    while not first.is_file() and time.time() < deadline and study.poll() is None:
        time.sleep(0.2)
    os.kill(study.pid, signal.SIGKILL)
    study.wait()
    time.sleep(2)  # the orphaned worker notices its parent is gone within 0.2 s and exits
    assert first.is_file(), "the first run did not finish in time"
    kept = first.read_bytes(), first.stat().st_mtime_ns
    assert experiment.main(argv) == 0
    assert (first.read_bytes(), first.stat().st_mtime_ns) == kept  # finished before the kill: not retrained
    assert (out / "full" / "seed0" / "report.json").is_file()
    for variant in ("erm", "full"):
        trained = [r for r in read_lines(out / variant / "seed0" / "results.jsonl") if r["kind"] == "train"]
        assert len(trained) == 1, variant  # each run trained and reported once
