"""IBM Runtime on the client-side Estimator: counted right, planned before it runs, within budget.

Everything runs offline in qiskit-ibm-runtime's local testing mode (fake devices through Aer);
a live service's usage report is imitated by the job's `metrics()`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import backends
from backends import get_backend
from backends.budget import DEFAULT_SECONDS_PER_JOB, RATE_FILE, QpuRate, calibrate, circuit_summary, stored_rate
from hybrid import evaluate
from hybrid.qpu_budget import BudgetError, check_budget
from hybrid.quantum import QuantumConfig, QuantumLayer

CONFIG = QuantumConfig()
REPO = Path(backends.__path__[0]).parent


@pytest.fixture(scope="module")
def exact_layer():
    return QuantumLayer(CONFIG, engine="statevector", seed=5)


def _angles(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, CONFIG.n_qubits, generator=g, dtype=torch.float64) * np.pi


def _run_layer(backend, exact_layer, x):
    layer = QuantumLayer(CONFIG, engine="estimator", make_runner=backend.make_runner)
    layer.load_state_dict(exact_layer.state_dict())
    with torch.no_grad():
        return layer(x).double()


def _twirling(shots):
    from qiskit_ibm_runtime.executor.calculate_twirling_shots import calculate_twirling_shots

    return calculate_twirling_shots(shots, "auto", "auto")


def test_ibm_runtime_uses_the_client_side_estimator_without_deprecation_warnings(exact_layer):
    from qiskit_ibm_runtime.executor_estimator import Estimator

    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        backend = get_backend("ibm_runtime", ibm_backend="fake_manila", shots=512, seed=2, resilience_level=0)
        out = _run_layer(backend, exact_layer, _angles(4))
        backend.close()
    assert type(backend.estimator) is Estimator
    assert backend.options["resilience_level"] == 0 and "resilience level 0" in backend.description
    assert out.shape == (4, CONFIG.n_qubits)


def test_resilience_level_is_stated_even_when_not_given():
    backend = get_backend("ibm_runtime", ibm_backend="fake_manila", batch_mode=False)
    assert backend.options["resilience_level"] == 1 and backend.estimator.options.resilience_level == 1
    assert "resilience level 1" in backend.description


@pytest.mark.parametrize("resilience_level", [0, 1])
def test_circuits_and_shots_count_twirling_and_trex(resilience_level, exact_layer):
    shots, batch = 1000, 6
    backend = get_backend("ibm_runtime", ibm_backend="fake_manila", shots=shots, seed=3,
                          resilience_level=resilience_level, batch_mode=False)
    out = _run_layer(backend, exact_layer, _angles(batch))
    exact = exact_layer(_angles(batch)).double()
    stats = backend.stats
    assert (stats.jobs, stats.samples) == (1, batch)
    if resilience_level == 0:  # no twirling: one circuit per binding, the shots asked for
        assert (stats.circuits, stats.shots) == (batch, batch * shots)
        assert (out - exact).abs().mean() < 0.15  # fake_manila's noise and 1000 shots
    else:  # measurement twirling + TREX: randomizations per binding plus calibration circuits
        randomizations, per_randomization = _twirling(shots)
        assert randomizations > 1 and randomizations * per_randomization >= shots
        assert stats.circuits > batch * randomizations
        assert stats.shots == stats.circuits * per_randomization
        assert (out - exact).abs().mean() < 0.1  # readout mitigation brings it closer to exact


def test_shots_are_read_from_the_new_result_layout():
    from backends.runner import shots_per_circuit

    class Pub:
        def __init__(self, metadata):
            self.metadata = metadata

    class Result:
        metadata = {"shots": 1000}

    assert shots_per_circuit(Pub({"shots": 128})) == 128  # Qiskit's estimators
    assert shots_per_circuit(Pub({"executor": {"shots": 64}}), Result()) == 64  # client-side Estimator
    assert shots_per_circuit(Pub({}), Result()) == 1000  # only the job-level result says
    assert shots_per_circuit(Pub({})) == 0  # exact


def test_one_job_per_batch_and_seed_zero_is_honoured(exact_layer):
    outs = []
    for seed in (0, 0, 1):
        backend = get_backend("ibm_runtime", ibm_backend="fake_manila", shots=256, seed=seed, resilience_level=0,
                              batch_mode=False)
        layer = QuantumLayer(CONFIG, engine="estimator", make_runner=backend.make_runner)
        layer.load_state_dict(exact_layer.state_dict())
        with torch.no_grad():
            outs.append(torch.cat([layer(_angles(5, seed=1)), layer(_angles(3, seed=2))]))
        assert backend.stats.jobs == 2 and backend.stats.samples == 8
    assert torch.equal(outs[0], outs[1])  # seed 0 is a seed, not "no seed"
    assert not torch.equal(outs[0], outs[2])


def _refuse_submission(monkeypatch):
    from qiskit_ibm_runtime.executor_estimator import Estimator

    def refuse(self, *args, **kwargs):
        raise AssertionError("a dry run submitted a job")

    monkeypatch.setattr(Estimator, "run", refuse)


@pytest.mark.parametrize("resilience_level", [0, 1])
def test_dry_run_submits_nothing_and_counts_what_the_real_run_does(resilience_level, exact_layer, monkeypatch):
    options = {"ibm_backend": "fake_manila", "shots": 300, "seed": 4, "resilience_level": resilience_level,
               "twirling": True}
    x = _angles(7)
    with monkeypatch.context() as patch:
        _refuse_submission(patch)
        planned = get_backend("ibm_runtime", dry_run=True, **options)
        answer = _run_layer(planned, exact_layer, x)
        assert planned.closer is None and planned.estimator.mode is None  # no batch opened
        assert planned.options["batch_mode"] is True  # ... but the real run would use one
    assert torch.allclose(answer, exact_layer(x).double(), atol=1e-10)  # a dry run answers exactly
    real = get_backend("ibm_runtime", **options)
    try:
        _run_layer(real, exact_layer, x)
    finally:
        real.close()
    keys = ("jobs", "circuits", "shots", "samples")
    assert {k: getattr(planned.stats, k) for k in keys} == {k: getattr(real.stats, k) for k in keys}
    assert planned.stats.estimated_qpu_seconds == pytest.approx(real.stats.estimated_qpu_seconds)
    assert planned.stats.wall_seconds == 0 and planned.stats.qpu_seconds is None


def test_estimate_follows_the_rate_model():
    backend = get_backend("ibm_runtime", ibm_backend="fake_manila", shots=400, resilience_level=0, dry_run=True)
    runner = backend.make_runner(QuantumLayer(CONFIG).spec)
    plan = runner.plan(runner.pub(np.zeros((10, CONFIG.n_qubits)), np.zeros(runner.n_weights)))
    rate, duration = backend.qpu_rate, runner.summary["duration_seconds"]
    assert rate.rep_delay == pytest.approx(250e-6) and rate.seconds_per_job == DEFAULT_SECONDS_PER_JOB
    assert 0 < duration < 1e-3  # microseconds on a superconducting device
    assert plan["shots"] == 4000
    assert plan["estimated_qpu_seconds"] == pytest.approx(DEFAULT_SECONDS_PER_JOB + 4000 * (250e-6 + duration))


def test_circuit_summary_counts_two_qubit_gates():
    from qiskit import QuantumCircuit

    qc = QuantumCircuit(3)
    qc.h(0)
    qc.cx(0, 1)
    qc.cz(1, 2)
    summary = circuit_summary(qc)
    assert summary["two_qubit_gates"] == 2 and summary["depth"] == 3 and summary["duration_seconds"] is None


def test_budget_refusal_is_one_sentence():
    plans = [{"estimated_qpu_seconds": 40.0}, {"estimated_qpu_seconds": None}, {"estimated_qpu_seconds": 25.5}]
    check_budget(plans, 70)
    check_budget(plans, None)
    with pytest.raises(BudgetError) as info:
        check_budget(plans, 60)
    message = str(info.value)
    assert "65.5 QPU seconds" in message and "60" in message and "nothing was submitted" in message
    assert "\n" not in message
    with pytest.raises(ValueError, match=">= 0"):
        check_budget(plans, -1)


def test_live_usage_calibrates_the_rate(tmp_path):
    rate = QpuRate(device="ibm_test", rep_delay=250e-6, seconds_per_job=2.0)
    assert stored_rate(tmp_path, rate) == rate  # nothing recorded yet
    entry = calibrate(tmp_path, rate, reported=30.0, estimated=20.0)
    assert entry["scale"] == pytest.approx(1.5) and entry["runs"] == 1
    calibrated = stored_rate(tmp_path, rate)
    assert calibrated.scale == pytest.approx(1.5) and "calibrated by 1 live run" in calibrated.source
    assert calibrated.seconds(1, 1000, 0.0) == pytest.approx(1.5 * (2.0 + 0.25))
    # a second run: the ratio of the sums, estimated seconds taken back to the uncalibrated rate
    entry = calibrate(tmp_path, calibrated, reported=10.0, estimated=1.5 * 10.0)
    assert entry["scale"] == pytest.approx(40.0 / 30.0) and entry["runs"] == 2
    assert stored_rate(tmp_path, QpuRate(device="other")).scale == 1.0  # per device
    assert "token" not in (tmp_path / RATE_FILE).read_text().lower()
    (tmp_path / RATE_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="could not be read.*delete it"):
        stored_rate(tmp_path, rate)


def test_no_warning_is_silenced_in_the_project():
    pattern = re.compile(r"filterwarnings\(\s*[\"']ignore|simplefilter\(\s*[\"']ignore")
    offenders = [str(path.relative_to(REPO)) for folder in ("hybrid", "backends", "benchmarks")
                 for path in (REPO / folder).rglob("*.py") if pattern.search(path.read_text())]
    deprecations = [path.name for path in (REPO / "notebooks").glob("*.ipynb")
                    if re.search(r"filterwarnings\([^)]*Deprecat", path.read_text())]
    assert offenders == [] and deprecations == []


pytest_slow = pytest.mark.slow


def _cli(run, data_root, *extra):
    # the design-validation centers: 6 domains instead of 10, each a job per batch in the local simulation
    return evaluate.main(["--run", str(run), "--data-root", str(data_root), "--centers", "validation", "--max-samples",
                          "12", "--batch-size", "8", "--backend", "ibm_runtime", "--ibm-backend", "fake_manila",
                          "--tta", "none", *extra])


@pytest_slow
def test_cli_dry_run_prints_the_plan_and_writes_nothing(tiny_run, data_root, monkeypatch, capsys):
    before = sorted(p.name for p in tiny_run.iterdir())
    with monkeypatch.context() as patch:
        _refuse_submission(patch)
        assert _cli(tiny_run, data_root, "--shots", "500", "--dry-run") == 0
    out = capsys.readouterr().out
    assert sorted(p.name for p in tiny_run.iterdir()) == before
    planned = re.search(r"(\d+) jobs, (\d+) PUBs .*?, ([\d,]+) circuits, ([\d,]+) shots for (\d+) samples", out)
    assert planned and "ISA circuit: 5 qubits, depth" in out and "QPU seconds" in out
    assert _cli(tiny_run, data_root, "--shots", "500", "--name", "after_plan") == 0
    execution = json.loads((tiny_run / "eval_after_plan.json").read_text())["quantum_execution"]
    jobs, pubs, circuits, shots, samples = (int(v.replace(",", "")) for v in planned.groups())
    assert (execution["jobs"], execution["circuits"], execution["shots"], execution["samples"]) == (
        jobs, circuits, shots, samples)
    assert pubs == jobs == 12  # 6 domains, batches of 8 and 4
    assert f"about {execution['estimated_qpu_seconds']:.1f} QPU seconds" in out


@pytest_slow
def test_cli_refuses_over_budget_before_submitting(tiny_run, data_root, monkeypatch, capsys):
    before = sorted(p.name for p in tiny_run.iterdir())
    with monkeypatch.context() as patch:
        _refuse_submission(patch)
        assert _cli(tiny_run, data_root, "--max-qpu-seconds", "1") == 2
    err = capsys.readouterr().err.split("\r")[-1]  # after the planning progress bars
    assert err.strip().startswith("error: the plan needs about") and "--max-qpu-seconds 1" in err
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert sorted(p.name for p in tiny_run.iterdir()) == before
    assert _cli(tiny_run, data_root, "--shots", "64", "--resilience-level", "0", "--max-qpu-seconds", "1000",
                "--name", "within_budget") == 0


@pytest_slow
def test_live_run_reports_and_calibrates_its_estimate(tiny_run, data_root, monkeypatch, capsys, tmp_path):
    """A service that reports usage (imitated): the report compares, the rate file learns, the next plan uses it."""
    import functools
    import shutil

    from qiskit_ibm_runtime.fake_provider.local_runtime_job import LocalRuntimeJob

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    factory = backends.BACKENDS["ibm_runtime"]

    @functools.wraps(factory)  # keeps the options get_backend checks
    def reporting(**options):
        backend = factory(**options)
        backend.reports_usage = True
        return backend

    monkeypatch.setitem(backends.BACKENDS, "ibm_runtime", reporting)
    monkeypatch.setattr(LocalRuntimeJob, "metrics", lambda self: {"usage": {"quantum_seconds": 3.0}})
    assert _cli(run, data_root, "--shots", "100", "--resilience-level", "0", "--name", "live") == 0
    out = capsys.readouterr().out
    execution = json.loads((run / "eval_live.json").read_text())["quantum_execution"]
    assert execution["qpu_seconds"] == pytest.approx(3.0 * execution["jobs"])
    ratio = execution["qpu_seconds"] / execution["estimated_qpu_seconds"]
    assert f"reported / estimated = {ratio:.2f}" in out and "calibrated by 1 live run" in out
    assert "reported / estimated" in (run / "eval_live.md").read_text()
    rates = json.loads((run / RATE_FILE).read_text())
    assert rates["fake_manila"]["scale"] == pytest.approx(ratio)
    assert _cli(run, data_root, "--shots", "100", "--resilience-level", "0", "--dry-run") == 0
    planned = capsys.readouterr().out
    assert "calibrated by 1 live run(s) on fake_manila" in planned
    assert f"about {execution['qpu_seconds']:.1f} QPU seconds" in planned  # same plan, calibrated rate


@pytest_slow
def test_evaluate_runs_clean_with_deprecation_warnings_as_errors(tiny_run, data_root, tmp_path):
    run = tmp_path / "run"
    import shutil

    shutil.copytree(tiny_run, run)
    command = [sys.executable, "-W", "error::DeprecationWarning", "-m", "hybrid.evaluate", "--run", str(run),
               "--data-root", str(data_root), "--centers", "validation", "--max-samples", "8", "--backend",
               "ibm_runtime", "--ibm-backend",
               "fake_manila", "--shots", "128", "--seed", "0", "--tta", "none"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Warning" not in done.stderr
