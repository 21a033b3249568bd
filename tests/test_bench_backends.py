"""A trained run on other backends: evaluate CLI, resume after a failed job, benchmark, no token leaks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backends import EstimatorRunner, JobError
from hybrid import evaluate
from hybrid.studies import bench_backends

pytestmark = pytest.mark.slow  # every test uses a trained run

N_DOMAINS = 10  # clean + 9 virtual target centers
VALIDATION_DOMAINS = 6  # clean + 5 design-validation centers (--centers validation): fewer simulated jobs
TOKEN = "tok-7d1e5b-must-never-be-written"


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    return tiny_run


def _evaluate(run_dir, data_root, *extra):
    return evaluate.main(["--run", str(run_dir), "--data-root", str(data_root), "--max-samples", "16",
                          "--batch-size", "8", *extra])


def test_evaluate_on_a_sampling_backend_counts_jobs(run_dir, data_root):
    assert _evaluate(run_dir, data_root, "--backend", "aer", "--shots", "256", "--seed", "0", "--tta", "bn") == 0
    result = json.loads((run_dir / "eval_pneumoniamnist_aer-shots256_tta-bn_max16.json").read_text())
    execution = result["quantum_execution"]
    assert execution["jobs"] == N_DOMAINS * 2  # one job per batch of 8, two batches per domain
    assert execution["circuits"] == execution["samples"] == N_DOMAINS * 16
    assert execution["shots"] == N_DOMAINS * 16 * 256 and execution["qpu_seconds"] is None
    assert result["backend_options"] == {"shots": 256, "seed": 0}
    assert 0 <= result["summary"]["auc"]["mean"] <= 1
    assert not list(run_dir.glob("partial_*.jsonl"))  # removed once the report is written


def test_evaluate_ibm_runtime_local_mode(run_dir, data_root):
    assert _evaluate(run_dir, data_root, "--backend", "ibm_runtime", "--ibm-backend", "fake_manila", "--shots",
                     "128", "--job-mode", "--dd", "--twirling", "--resilience-level", "1", "--tta", "none",
                     "--centers", "validation", "--name", "ibm_local") == 0
    result = json.loads((run_dir / "eval_ibm_local.json").read_text())
    assert result["quantum_execution"]["jobs"] == VALIDATION_DOMAINS * 2
    assert result["backend_options"]["batch_mode"] is False and result["backend_options"]["dd"] is True


def test_tent_and_foreign_options_are_refused(run_dir, data_root, capsys):
    assert _evaluate(run_dir, data_root, "--backend", "aer", "--shots", "64", "--tta", "tent") == 2
    err = capsys.readouterr().err
    assert "tent" in err and "adabn" in err and err.count("\n") == 1
    assert _evaluate(run_dir, data_root, "--backend", "aer", "--noise-model", "fake_manila") == 2
    assert "do not apply to backend 'aer'" in capsys.readouterr().err


def test_failed_job_keeps_finished_batches_and_resume_continues(run_dir, data_root, monkeypatch, capsys):
    common = ["--backend", "aer", "--shots", "128", "--seed", "3", "--tta", "bn"]
    assert _evaluate(run_dir, data_root, *common, "--name", "uninterrupted") == 0
    reference = json.loads((run_dir / "eval_uninterrupted.json").read_text())

    calls = {"n": 0}
    original = EstimatorRunner.__call__

    def flaky(self, angles, weights):
        calls["n"] += 1
        if calls["n"] == 5:
            raise JobError("job 5 on aer-shots128 failed (simulated outage)")
        return original(self, angles, weights)

    monkeypatch.setattr(EstimatorRunner, "__call__", flaky)
    assert _evaluate(run_dir, data_root, *common, "--name", "flaky") == 3
    err = capsys.readouterr().err
    assert "simulated outage" in err and "32 samples are saved" in err and "--resume" in err
    assert "Traceback" not in err
    partial = run_dir / "partial_flaky.jsonl"
    assert len(partial.read_text().splitlines()) == 1 + 4  # header + four finished batches

    monkeypatch.setattr(EstimatorRunner, "__call__", original)
    assert _evaluate(run_dir, data_root, "--backend", "aer", "--shots", "64", "--seed", "3", "--tta", "bn",
                     "--name", "flaky", "--resume") == 2
    assert "different settings" in capsys.readouterr().err
    assert _evaluate(run_dir, data_root, *common, "--name", "flaky", "--resume") == 0
    resumed = json.loads((run_dir / "eval_flaky.json").read_text())
    assert resumed["quantum_execution"]["resumed_batches"] == 4
    assert resumed["quantum_execution"]["jobs"] == reference["quantum_execution"]["jobs"] == N_DOMAINS * 2
    # seeded jobs: nothing lost, nothing different (compared as JSON: NaN CIs without bootstrap); the TTA
    # counters say which batches this process adapted and which it reused from the interrupted one
    counters = {k: (m.pop("tta_counters"), reference["domains"][k].pop("tta_counters"))
                for k, m in resumed["domains"].items()}
    assert json.dumps(resumed["domains"], sort_keys=True) == json.dumps(reference["domains"], sort_keys=True)
    assert sum(c["reused_batches"] for c, _ in counters.values()) == 4
    assert all(c["batches_seen"] + c["reused_batches"] == ref["batches_seen"] for c, ref in counters.values())
    assert not partial.exists()


def test_missing_credentials_is_one_sentence_not_a_traceback(run_dir, data_root, monkeypatch, capsys):
    from qiskit_ibm_runtime import QiskitRuntimeService

    monkeypatch.delenv("QISKIT_IBM_TOKEN", raising=False)
    monkeypatch.setattr(QiskitRuntimeService, "saved_accounts", staticmethod(lambda *a, **k: {}))
    assert _evaluate(run_dir, data_root, "--backend", "ibm_runtime", "--ibm-backend", "ibm_brisbane") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: IBM Runtime needs credentials: set QISKIT_IBM_TOKEN") and err.count("\n") == 1


def test_token_never_reaches_logs_reports_or_run_directory(run_dir, data_root, monkeypatch, capsys, caplog,
                                                           tmp_path):
    import qiskit_ibm_runtime

    monkeypatch.setenv("QISKIT_IBM_TOKEN", TOKEN)
    monkeypatch.setenv("QISKIT_IBM_INSTANCE", "crn:v1:test-instance")

    class Refusing:
        def __init__(self, **kwargs):
            raise PermissionError(f"token {kwargs.get('token')} is not authorized for this instance")

        @staticmethod
        def saved_accounts(*args, **kwargs):
            return {}

    monkeypatch.setattr(qiskit_ibm_runtime, "QiskitRuntimeService", Refusing)
    # the live path fails fast, without network; the local path and the benchmark succeed with the token set
    assert _evaluate(run_dir, data_root, "--backend", "ibm_runtime", "--ibm-backend", "ibm_brisbane") == 2
    assert _evaluate(run_dir, data_root, "--backend", "ibm_runtime", "--ibm-backend", "fake_manila", "--shots",
                     "64", "--tta", "none", "--centers", "validation", "--name", "with_token") == 0
    # the budget paths: a dry run, a refusal over budget, and the benchmark's dry run
    assert _evaluate(run_dir, data_root, "--backend", "ibm_runtime", "--ibm-backend", "fake_manila", "--dry-run",
                     "--centers", "validation") == 0
    assert _evaluate(run_dir, data_root, "--backend", "ibm_runtime", "--ibm-backend", "fake_manila",
                     "--max-qpu-seconds", "0.01", "--centers", "validation") == 2
    assert bench_backends.main(["--run", str(run_dir), "--data-root", str(data_root), "--dry-run", "--samples", "4",
                                "--domains", "tgt_blur", "--quiet", "--backends", "ibm_runtime:fake_manila"]) == 0
    assert bench_backends.main(["--run", str(run_dir), "--data-root", str(data_root),
                                "--backends", "ibm_runtime:fake_manila:shots=64",
                                "--samples", "4", "--domains", "tgt_blur", "--quiet", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "could not connect to IBM Runtime" in captured.err
    assert TOKEN not in captured.out + captured.err + caplog.text
    for folder in (run_dir, tmp_path):
        for path in Path(folder).rglob("*"):
            if path.is_file():
                assert TOKEN.encode() not in path.read_bytes(), path


def test_benchmark_writes_json_markdown_and_plot(run_dir, data_root, tmp_path):
    out = tmp_path / "bench"
    assert bench_backends.main([
        "--run", str(run_dir), "--data-root", str(data_root), "--samples", "8", "--domains", "tgt_blur,tgt_speckle",
        "--backends", "statevector,aer:shots=512,aer_noisy:fake_manila:shots=256,"
                      "ibm_runtime:fake_manila:shots=256:resilience_level=0",
        "--quiet", "--out", str(out)]) == 0
    result = json.loads((out / "bench_backends.json").read_text())
    rows = {r["backend"]: r for r in result["rows"]}
    assert list(rows) == [bench_backends.REFERENCE, "statevector", "aer:shots=512", "aer_noisy:fake_manila:shots=256",
                          "ibm_runtime:fake_manila:shots=256:resilience_level=0"]
    assert result["domains"] == ["tgt_blur", "tgt_speckle"]
    assert rows["statevector"]["mae"] < 1e-10 and rows["statevector"]["delta_auc"] == pytest.approx(0, abs=1e-9)
    assert rows["statevector"]["flip_rate"] == 0 and rows["statevector"]["prob_mae"] < 1e-6
    for spec, shots in (("aer:shots=512", 512), ("aer_noisy:fake_manila:shots=256", 256),
                        ("ibm_runtime:fake_manila:shots=256:resilience_level=0", 256)):
        row = rows[spec]
        assert 1e-4 < row["mae"] < 0.3
        assert row["jobs"] == 2 and row["circuits"] == 16 and row["shots"] == 16 * shots
        assert 0 <= row["auc"] <= 1 and row["latency_ms"] > 0 and 0 <= row["flip_rate"] <= 1
    table = (out / "bench_backends.md").read_text()
    assert "| backend | AUC |" in table and "ibm_runtime:fake_manila:shots=256:resilience_level=0" in table
    assert (out / "bench_backends.png").stat().st_size > 10_000
    assert json.loads((out / "results.jsonl").read_text().splitlines()[-1])["kind"] == "bench_backends"


def test_benchmark_errors_are_one_sentence(run_dir, data_root, capsys, tmp_path):
    args = ["--run", str(run_dir), "--data-root", str(data_root), "--samples", "4", "--quiet", "--out", str(tmp_path)]
    assert bench_backends.main(args + ["--domains", "tgt_nowhere", "--backends", "statevector"]) == 2
    assert "unknown domain(s) tgt_nowhere" in capsys.readouterr().err
    assert bench_backends.main(args + ["--backends", "statevector:oops"]) == 2
    assert "positional" in capsys.readouterr().err
    # a misspelt backend is refused before any work
    assert bench_backends.main(args + ["--domains", "tgt_blur", "--backends", "statevector,quantum_cloud_9000"]) == 2
    assert "valid backends" in capsys.readouterr().err and not (tmp_path / "bench_backends.json").exists()
    # so are a device that does not exist and an option value a backend refuses: before the baseline runs
    for spec, words in (("aer_noisy:fake_nowhere", "fake_nowhere"), ("aer:shots=-1", "shots must be a positive"),
                        ("aer:shotz=100", "do not apply to backend 'aer'")):
        assert bench_backends.main(args + ["--domains", "tgt_blur", "--backends", f"statevector,{spec}"]) == 2
        assert words in capsys.readouterr().err and not (tmp_path / "bench_backends.json").exists()


def test_a_live_backend_that_cannot_start_gets_an_error_row_and_the_others_run(run_dir, data_root, monkeypatch,
                                                                               tmp_path):
    from qiskit_ibm_runtime import QiskitRuntimeService

    monkeypatch.delenv("QISKIT_IBM_TOKEN", raising=False)
    monkeypatch.setattr(QiskitRuntimeService, "saved_accounts", staticmethod(lambda *a, **k: {}))
    args = ["--run", str(run_dir), "--data-root", str(data_root), "--samples", "4", "--quiet", "--out", str(tmp_path),
            "--domains", "tgt_blur", "--backends", "statevector,ibm_runtime:ibm_brisbane"]
    assert bench_backends.main(args) == 1
    rows = json.loads((tmp_path / "bench_backends.json").read_text())["rows"]
    assert "auc" in rows[1] and "needs credentials" in rows[2]["error"]


def test_benchmark_refuses_a_tta_that_needs_gradients(run_dir, data_root):
    with pytest.raises(ValueError, match="needs gradients.*sampling backend.*adabn"):
        bench_backends.run_bench(run_dir, ["aer"], samples=8, tta="tent", data_root=str(data_root), progress=False)
    with pytest.raises(ValueError, match="unknown TTA method 'nosuch'"):
        bench_backends.run_bench(run_dir, ["aer"], samples=8, tta="nosuch", data_root=str(data_root), progress=False)


def test_benchmark_dry_run_plans_what_the_benchmark_sends(run_dir, data_root, monkeypatch, capsys, tmp_path):
    from qiskit_ibm_runtime.executor_estimator import Estimator

    specs = ["aer:shots=128", "ibm_runtime:fake_manila:shots=100"]
    sizes = {"samples": 8, "domain_names": ["tgt_blur", "tgt_speckle"], "batch_size": 8,
             "data_root": str(data_root), "progress": False}
    with monkeypatch.context() as patch:
        patch.setattr(Estimator, "run", lambda *a, **k: pytest.fail("a dry run submitted a job"))
        plan = bench_backends.plan_bench(run_dir, specs, **sizes)
        args = ["--run", str(run_dir), "--data-root", str(data_root), "--samples", "8", "--domains", "tgt_blur",
                "--quiet", "--backends", ",".join(specs), "--out", str(tmp_path / "bench")]
        assert bench_backends.main(args + ["--dry-run"]) == 0
        table = capsys.readouterr().out
        assert bench_backends.main(args + ["--max-qpu-seconds", "0.5"]) == 2
        err = capsys.readouterr().err
        assert "more than --max-qpu-seconds 0.5" in err and "fewer samples (--samples)" in err
    assert not (tmp_path / "bench").exists()  # neither a dry run nor a refusal writes anything
    assert "| ibm_runtime:fake_manila:shots=100 |" in table and "estimated QPU s" in table
    real = bench_backends.run_bench(run_dir, specs, **sizes)
    for planned, row in zip(plan["plans"], real["rows"][1:]):
        assert planned["spec"] == row["backend"]
        for key in ("jobs", "circuits", "shots"):
            assert planned[key] == row[key], (row["backend"], key)
        assert planned["estimated_qpu_seconds"] == pytest.approx(row["estimated_qpu_seconds"])
    ibm = plan["plans"][1]
    assert ibm["jobs"] == 2 and ibm["circuits"] > 16  # resilience level 1: twirled and TREX circuits
    assert ibm["isa_circuit"]["qubits"] == 5 and ibm["estimated_qpu_seconds"] > 2 * 2.0
    assert plan["plans"][0]["estimated_qpu_seconds"] is None  # a simulator costs no QPU time


@pytest.fixture(scope="module")
def dressed_run(tmp_path_factory, data_root):
    """A one-epoch run whose classifier sees only the circuit (dressed head)."""
    from hybrid import train

    out = tmp_path_factory.mktemp("dressed") / "dressed"
    assert train.main(["--epochs", "1", "--max-train-samples", "300", "--width-mult", "0.35", "--stem-stride", "2",
                       "--n-bootstrap", "0", "--batch-size", "64", "--quiet", "--data-root", str(data_root),
                       "--quantum-head", "dressed", "--eval-max-samples", "50", "--out", str(out)]) == 0
    return out


def test_a_compared_run_on_other_data_is_refused_before_any_benchmark(dressed_run, tmp_path, capsys, monkeypatch):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(dressed_run, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps(config | {"dataset": "breastmnist"}))
    monkeypatch.setattr(bench_backends, "run_bench", lambda *a, **k: pytest.fail("benchmarked before the check"))
    out = tmp_path / "sweep"
    assert bench_backends.main(["--run", str(dressed_run), "--compare-run", str(other), "--shot-sweep", "16,exact",
                                "--backends", "aer", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "is scored on other data than" in err and "dataset 'pneumoniamnist' / 'breastmnist'" in err
    assert not out.exists()


def test_shot_sweep_writes_its_table_plot_and_recovery(dressed_run, data_root, tmp_path):
    out = tmp_path / "sweep"
    assert bench_backends.main(["--run", str(dressed_run), "--compare-run", str(dressed_run), "--shot-sweep",
                                "16,64,exact", "--backends", "aer", "--samples", "24", "--domains",
                                "tgt_blur,tgt_speckle", "--n-bootstrap", "20", "--data-root", str(data_root),
                                "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "shot_sweep.json").read_text())
    assert result["shots"] == [16, 64] and len(result["runs"]) == 2
    curve = result["runs"][0]["curves"]["aer"]
    assert [p["shots"] for p in curve] == [16, 64]
    assert all(0 <= p["auc"] <= 1 and p["auc_ci"][0] <= p["auc_ci"][1] and p["mae"] > 0 for p in curve)
    assert result["runs"][0]["exact"]["mae"] == 0
    assert set(result["recovery"]) == {"aer@16", "aer@64"}  # the same run twice: nothing to recover
    assert all(r["auc_difference"] == 0 and r["lost_first"] == r["lost_second"] for r in result["recovery"].values())
    md = (out / "shot_sweep.md").read_text()
    assert "16 shots" in md and "| aer |" in md and "recovered" in md
    assert (out / "shot_sweep.png").stat().st_size > 5000


def test_dressed_predictions_move_with_shot_noise(dressed_run, data_root):
    result = bench_backends.run_bench(dressed_run, ["aer:shots=16"], samples=24, domain_names=["tgt_blur"],
                                      data_root=str(data_root), progress=False)
    exact, sampled = result["rows"]
    assert exact["prob_mae"] == 0 and sampled["prob_mae"] > 1e-4  # the circuit is in the decision path


def test_shot_sweep_refuses_bad_shot_counts():
    from hybrid.studies.shot_sweep import parse_shots

    assert parse_shots("32, 1024,exact") == [32, 1024, None]
    for bad in ("0", "many", ""):
        with pytest.raises(ValueError, match="shot"):
            parse_shots(bad)


def test_recovery_measures_each_run_against_its_own_exact_auc():
    from hybrid.studies.shot_sweep import recovery

    def run(exact, at_1024):
        return {"exact": {"auc": exact}, "curves": {"aer_noisy": [{"shots": 1024, "auc": at_1024}]}}

    # the second model is better everywhere but loses as much to noise: nothing recovered
    same_loss = recovery(run(0.80, 0.76), run(0.90, 0.86))["aer_noisy@1024"]
    assert same_loss["recovered_share"] == pytest.approx(0) and same_loss["auc_difference"] == pytest.approx(0.10)
    half = recovery(run(0.80, 0.76), run(0.80, 0.78))["aer_noisy@1024"]
    assert half["recovered_share"] == pytest.approx(0.5)


def _sweep_file(folder, exact, at_1024, *, second_exact, second_at_1024, run="a", samples=100):
    from hybrid.studies.shot_sweep import recovery

    seed = int(folder.name[-1]) if folder.name[-1].isdigit() else 0  # s0, s1: one seed per folder

    def run_entry(name, e, n):
        return {"run": f"runs/{name}/seed{seed}", "label": name, "seed": seed, "exact": {"auc": e},
                "samples_per_domain": samples, "domains": ["d1", "d2"], "tta": "adabn",
                "curves": {"aer_noisy": [{"shots": 1024, "auc": n}]}}

    first, second = run_entry(run, exact, at_1024), run_entry(run + "_noise", second_exact, second_at_1024)
    folder.mkdir(parents=True)
    (folder / "shot_sweep.json").write_text(json.dumps({"runs": [first, second], "recovery": recovery(first, second)}))


def test_sweep_pool_averages_each_models_loss_over_seeds_before_the_share(tmp_path, capsys):
    from hybrid.studies import sweep_pool

    # seed 0: loses 0.04 vs 0.01 (75%); seed 1: 0.02 vs 0.03 (-50%); pooled: 1 - 0.02/0.03 = 1/3, not the mean 12.5%
    _sweep_file(tmp_path / "s0", 0.80, 0.76, second_exact=0.82, second_at_1024=0.81)
    _sweep_file(tmp_path / "s1", 0.85, 0.83, second_exact=0.84, second_at_1024=0.81)
    assert sweep_pool.main([str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "pooled")]) == 0
    pooled = json.loads((tmp_path / "pooled" / "recovery.json").read_text())
    row = pooled["rows"]["aer_noisy@1024"]
    assert row["mean_lost_first"] == pytest.approx(0.03) and row["mean_lost_second"] == pytest.approx(0.02)
    assert row["recovered_share"] == pytest.approx(1 / 3)
    assert row["per_seed_share"] == pytest.approx([0.75, -0.5])
    # on the device: the noise-aware runs score +0.05 and -0.02 there; pooled 0.015 / 0.03 = 50%
    assert row["auc_difference"] == pytest.approx([0.05, -0.02]) and row["recovered_on_device"] == pytest.approx(0.5)
    assert row["per_seed_on_device"] == pytest.approx([1.25, -1.0])
    md = (tmp_path / "pooled" / "recovery.md").read_text()
    assert "33%" in md and "75%, -50%" in md and "| 50% | 125%, -100% |" in md


def test_sweep_pool_refuses_missing_empty_or_mixed_sweeps(tmp_path, capsys):
    from hybrid.studies import sweep_pool

    assert sweep_pool.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert "shot_sweep.json: no such file" in capsys.readouterr().err
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "shot_sweep.json").write_text(json.dumps({"runs": [{}], "recovery": None}))
    assert sweep_pool.main([str(tmp_path / "one"), "--out", str(tmp_path / "o")]) == 2
    assert "--compare-run" in capsys.readouterr().err
    _sweep_file(tmp_path / "pair", 0.80, 0.76, second_exact=0.82, second_at_1024=0.81)
    (tmp_path / "single").mkdir()
    pair = json.loads((tmp_path / "pair" / "shot_sweep.json").read_text())
    (tmp_path / "single" / "shot_sweep.json").write_text(json.dumps({"runs": pair["runs"][:1]}))
    assert sweep_pool.main([str(tmp_path / "pair"), str(tmp_path / "single"), "--out", str(tmp_path / "o")]) == 2
    assert "sweeps made the same way" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_sweep_pool_refuses_sweeps_that_are_not_seeds_of_one_comparison(tmp_path, capsys):
    from hybrid.studies import sweep_pool

    def refused(*names) -> str:
        assert sweep_pool.main([*(str(tmp_path / n) for n in names), "--out", str(tmp_path / "o")]) == 2
        return capsys.readouterr().err

    _sweep_file(tmp_path / "s0", 0.80, 0.76, second_exact=0.82, second_at_1024=0.81)
    _sweep_file(tmp_path / "t1", 0.85, 0.83, second_exact=0.84, second_at_1024=0.81)
    swapped = json.loads((tmp_path / "t1" / "shot_sweep.json").read_text())
    swapped["runs"].reverse()
    (tmp_path / "t1" / "shot_sweep.json").write_text(json.dumps(swapped))
    assert "swapped?" in refused("s0", "t1")  # a: the exact-trained run in s0, the noise-aware one in t1
    _sweep_file(tmp_path / "u1", 0.85, 0.83, second_exact=0.84, second_at_1024=0.81, samples=8)
    assert "different images per center (--samples)" in refused("s0", "u1")
    assert "hold the same run (runs/a/seed0)" in refused("s0", "s0")
    assert not (tmp_path / "o").exists()


def test_sweep_pool_of_single_run_sweeps_averages_the_loss_alone(tmp_path):
    from hybrid.studies import sweep_pool

    for name, exact, at_1024 in (("s0", 0.80, 0.76), ("s1", 0.85, 0.84)):  # losses 0.04 and 0.01
        _sweep_file(tmp_path / name, exact, at_1024, second_exact=0.5, second_at_1024=0.5)
        pair = json.loads((tmp_path / name / "shot_sweep.json").read_text())
        (tmp_path / name / "shot_sweep.json").write_text(json.dumps({"runs": pair["runs"][:1]}))  # no --compare-run
    assert sweep_pool.main([str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "pooled")]) == 0
    pooled = json.loads((tmp_path / "pooled" / "recovery.json").read_text())
    assert pooled["kind"] == "loss_pooled" and list(pooled["rows"]) == ["aer_noisy@1024"]
    row = pooled["rows"]["aer_noisy@1024"]
    assert row["lost_first"] == pytest.approx([0.04, 0.01]) and row["mean_lost_first"] == pytest.approx(0.025)
    assert "| aer_noisy@1024 | +0.0250 | +0.0400, +0.0100 |" in (tmp_path / "pooled" / "recovery.md").read_text()


def test_a_sweep_with_several_draws_seeds_each_and_averages_them():
    from hybrid.studies.shot_sweep import format_markdown, run_sweep, sweep_specs

    assert sweep_specs(["aer"], [64, None], draws=1) == [("aer:shots=64", "aer", 64)]
    assert [s for s, _, _ in sweep_specs(["aer"], [64], draws=3)] == [f"aer:shots=64:seed={k}" for k in range(3)]
    with pytest.raises(ValueError, match="drop seed= from aer:seed=4"):
        sweep_specs(["aer:seed=4"], [64], draws=2)
    with pytest.raises(ValueError, match="whole number >= 1"):
        sweep_specs(["aer"], [64], draws=0)
    aucs = {"aer:shots=64:seed=0": 0.80, "aer:shots=64:seed=1": 0.84, "aer:shots=64:seed=2": 0.82}

    def bench(run, specs, **settings):
        exact = {"backend": "exact", "auc": 0.85, "mae": 0.0, "sensitivity": 0.9, "seconds": 1.0}
        return {"rows": [exact] + [{"backend": s, "auc": aucs[s], "mae": 0.01, "sensitivity": 0.8, "seconds": 2.0}
                                   for s in specs], "domains": ["a"], "samples_per_domain": 10, "tta": "adabn",
                "seed": 0}

    result = run_sweep(["r1", "r2"], ["aer"], [64, None], bench=bench, draws=3)
    point = result["runs"][0]["curves"]["aer"][0]
    assert point["auc"] == pytest.approx(0.82) and point["auc_draws"] == [0.80, 0.84, 0.82]
    assert point["auc_draw_std"] == pytest.approx(0.02) and point["seconds"] == 6.0 and result["draws"] == 3
    assert result["recovery"]["aer@64"]["lost_first"] == pytest.approx(0.03)  # from the mean over draws
    assert "0.8200 ± 0.0200" in format_markdown(result) and "3 shot draws" in format_markdown(result)


def test_draws_need_a_shot_sweep(tiny_run, capsys):
    assert bench_backends.main(["--run", str(tiny_run), "--backends", "aer", "--draws", "2", "--quiet"]) == 2
    assert "--draws go with --shot-sweep" in capsys.readouterr().err


def test_the_sweep_command_runs_each_draw(dressed_run, data_root, tmp_path):
    out = tmp_path / "draws"
    assert bench_backends.main(["--run", str(dressed_run), "--shot-sweep", "16,exact", "--draws", "2", "--backends",
                                "aer", "--samples", "24", "--domains", "tgt_blur", "--data-root", str(data_root),
                                "--out", str(out), "--quiet"]) == 0
    point = json.loads((out / "shot_sweep.json").read_text())["runs"][0]["curves"]["aer"][0]
    assert len(point["auc_draws"]) == 2 and point["auc"] == pytest.approx(sum(point["auc_draws"]) / 2)


def test_sweep_labels_tell_the_runs_apart(tmp_path):
    """Two runs in one folder were both named after that folder ('lost by journey | lost by journey')."""
    from hybrid.studies.shot_sweep import run_labels

    assert run_labels([tmp_path / "r_dressed", tmp_path / "r_aer"]) == ["r_dressed", "r_aer"]
    study = tmp_path / "study"
    assert run_labels([study / "dressed" / "seed0", study / "concat" / "seed1"]) == ["dressed", "concat"]
    assert run_labels([tmp_path / "a" / "dressed" / "seed0", tmp_path / "b" / "dressed" / "seed0"]) == [
        "a/dressed/seed0", "b/dressed/seed0"]
