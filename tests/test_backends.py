"""Backends: every one but live IBM runs offline, agrees with the exact layer, counts its jobs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import backends
from backends import BACKENDS, BackendError, EstimatorRunner, JobError, get_backend, parse_backend_spec
from hybrid.quantum import CircuitSpec, QuantumConfig, QuantumLayer, qiskit_expectations

CONFIG = QuantumConfig()  # 4 qubits, zz feature map, the model's default
BATCH = 6

# (name, options, tolerance on the mean absolute error against the exact layer)
CASES = [
    ("statevector", {}, 1e-10),
    ("aer", {}, 1e-10),
    ("aer", {"shots": 4096, "seed": 1}, 0.04),
    ("aer_noisy", {"noise_model": "fake_manila", "shots": 1024, "seed": 1}, 0.15),
    ("aer_noisy", {"depolarizing": "0.001,0.01", "readout_error": 0.01, "shots": 1024, "seed": 1}, 0.15),
    ("torch_noisy", {"noise_model": "fake_manila", "shots": 1024, "seed": 1}, 0.15),
    ("torch_noisy", {"noise_model": "fake_manila", "shots": 0}, 0.15),
    ("torch_noisy", {"depolarizing": "0.001,0.01", "readout_error": 0.01, "shots": 256, "seed": 1}, 0.15),
    ("ibm_runtime", {"ibm_backend": "fake_manila", "shots": 1024, "seed": 1, "resilience_level": 0}, 0.15),
    ("ibm_runtime", {"ibm_backend": "fake_manila", "shots": 256, "seed": 0, "resilience_level": 0,
                     "batch_mode": False}, 0.2),
]


def _ids(case):
    name, options, _ = case
    return name + "".join(f"-{k}={v}" for k, v in options.items() if k != "seed")


def _inputs(batch=BATCH, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, CONFIG.n_qubits, generator=g, dtype=torch.float64) * np.pi


@pytest.fixture(scope="module")
def exact_layer():
    return QuantumLayer(CONFIG, engine="statevector", seed=3)


def test_every_registered_backend_is_covered_offline():
    assert {name for name, _, _ in CASES} == set(BACKENDS)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_backend_runs_the_trained_layer_one_job_per_batch(case, exact_layer):
    name, options, tolerance = case
    backend = get_backend(name, **options)
    try:
        layer = QuantumLayer(CONFIG, engine="estimator", make_runner=backend.make_runner)
        layer.load_state_dict(exact_layer.state_dict())
        x = _inputs()
        with torch.no_grad():
            out, exact = layer(x), exact_layer(x)
    finally:
        backend.close()
    assert out.shape == (BATCH, CONFIG.n_qubits)
    assert (out - exact).abs().mean().item() < tolerance
    stats = backend.stats
    assert (stats.jobs, stats.circuits, stats.samples) == (1, BATCH, BATCH)
    shots = options.get("shots", 0)
    assert stats.shots == BATCH * shots
    assert stats.qpu_seconds is None  # only the live service reports QPU time
    assert backend.exact == (tolerance < 1e-6)
    assert backend.description and backend.label.startswith(name)


def test_exact_backends_train_with_the_torch_engine():
    assert get_backend("statevector").layer_kwargs() == {"engine": "statevector"}
    assert get_backend("aer").layer_kwargs() == {"engine": "statevector"}
    sampling = get_backend("aer", shots=100)
    assert sampling.layer_kwargs()["engine"] == "estimator"
    assert sampling.layer_kwargs(gradients=True)["engine"] == "qnn"
    density = get_backend("torch_noisy", noise_model="fake_manila")
    assert density.layer_kwargs()["engine"] == "estimator"
    with pytest.raises(BackendError, match="--q-noise-channel density"):
        density.layer_kwargs(gradients=True)  # no estimator for EstimatorQNN to differentiate through


def test_unknown_names_and_options_list_the_valid_ones():
    with pytest.raises(ValueError, match="valid backends: aer, aer_noisy, ibm_runtime, statevector"):
        get_backend("quantum_cloud_9000")
    with pytest.raises(ValueError, match="noise_model do not apply to backend 'aer'.*shots"):
        get_backend("aer", noise_model="fake_manila")
    with pytest.raises(ValueError, match="valid names: .*fake_brisbane.*fake_manila"):
        get_backend("aer_noisy", noise_model="fake_nowhere")


@pytest.mark.parametrize("name, options, message", [
    ("aer", {"shots": 0}, "positive integer"),
    ("aer", {"shots": 100, "precision": 0.1}, "either shots or precision"),
    ("aer_noisy", {"noise_model": "fake_manila", "depolarizing": 0.01}, "not both"),
    ("aer_noisy", {"depolarizing": 1.5}, "depolarizing"),
    ("aer_noisy", {"readout_error": 0.7}, "readout_error"),
    ("ibm_runtime", {"ibm_backend": "fake_manila", "resilience_level": 5}, "resilience_level"),
])
def test_bad_backend_options_are_one_sentence(name, options, message):
    with pytest.raises(BackendError, match=message) as info:
        get_backend(name, **options)
    assert "\n" not in str(info.value)


def test_parse_backend_spec():
    assert parse_backend_spec("statevector") == ("statevector", {})
    assert parse_backend_spec("aer:shots=1024") == ("aer", {"shots": 1024})
    assert parse_backend_spec("aer:1024") == ("aer", {"shots": 1024})
    assert parse_backend_spec("aer_noisy:fake_brisbane:shots=512") == (
        "aer_noisy", {"noise_model": "fake_brisbane", "shots": 512})
    assert parse_backend_spec("aer_noisy:depolarizing=0.001/0.01:readout-error=0.02") == (
        "aer_noisy", {"depolarizing": "0.001/0.01", "readout_error": 0.02})
    assert parse_backend_spec("ibm_runtime:fake_manila:dd=true") == (
        "ibm_runtime", {"ibm_backend": "fake_manila", "dd": True})
    with pytest.raises(BackendError, match="positional"):
        parse_backend_spec("statevector:oops")


def test_precision_sets_the_shots():
    backend = get_backend("aer", precision=1 / 32, seed=0)
    assert backend.options["shots"] == 1024 and not backend.exact


def test_aer_shots_are_seeded_and_real_sampling(exact_layer):
    """Same seed, same values; few shots give a large error (so shots are really used)."""
    x = _inputs(batch=4).numpy()
    w = exact_layer.weight.detach().numpy()
    exact = exact_layer(torch.as_tensor(x)).detach().numpy()
    runs = [get_backend("aer", shots=16, seed=7).make_runner(exact_layer.spec)(x, w) for _ in range(2)]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert np.abs(runs[0] - exact).mean() > 0.05
    # with 16 shots every <Z> is a multiple of 1/8
    np.testing.assert_allclose(runs[0] * 8, np.round(runs[0] * 8), atol=1e-9)


def test_readout_error_shrinks_expectation_values(exact_layer):
    """A symmetric readout error r scales every <Z> by (1 - 2r)."""
    x = _inputs(batch=16, seed=5).numpy()
    w = exact_layer.weight.detach().numpy()
    exact = exact_layer(torch.as_tensor(x)).detach().numpy()
    noisy = get_backend("aer_noisy", readout_error=0.25, shots=4096, seed=2).make_runner(exact_layer.spec)(x, w)
    slope = (noisy * exact).sum() / (exact * exact).sum()
    assert slope == pytest.approx(0.5, abs=0.08)


def test_runner_maps_parameters_by_object_not_by_position():
    """Weights named `a` sort before inputs named `z` in a PUB; the runner must not mix them up."""
    from qiskit import QuantumCircuit
    from qiskit.circuit import ParameterVector
    from qiskit.primitives import StatevectorEstimator
    from qiskit.quantum_info import SparsePauliOp

    z, a = ParameterVector("z", 2), ParameterVector("a", 3)
    qc = QuantumCircuit(2)
    qc.ry(z[0], 0)
    qc.rx(z[1], 1)
    qc.cx(0, 1)
    qc.ry(a[0], 0)
    qc.rz(a[1], 1)
    qc.rx(a[2] * z[0], 1)
    spec = CircuitSpec(qc, list(z), list(a), [SparsePauliOp("IZ"), SparsePauliOp("ZI"), SparsePauliOp("XX")])
    runner = EstimatorRunner(spec, StatevectorEstimator())
    x = np.array([[0.3, -1.2], [1.1, 0.4], [2.0, 0.1]])
    w = np.array([0.5, -0.9, 1.3])
    np.testing.assert_allclose(runner(x, w), qiskit_expectations(spec, x, w), atol=1e-10)


def test_runner_lays_out_observables_on_the_isa_circuit(exact_layer):
    """A device whose layout moves the qubits still measures the right ones."""
    from qiskit.primitives import StatevectorEstimator
    from qiskit.transpiler import CouplingMap, generate_preset_pass_manager

    pm = generate_preset_pass_manager(optimization_level=1, coupling_map=CouplingMap.from_line(6),
                                      basis_gates=["cx", "rz", "sx", "x"], initial_layout=[5, 3, 1, 0])
    runner = EstimatorRunner(exact_layer.spec, StatevectorEstimator(), pm)
    assert runner.circuit.num_qubits == 6
    x = _inputs(batch=3).numpy()
    out = runner(x, exact_layer.weight.detach().numpy())
    np.testing.assert_allclose(out, exact_layer(torch.as_tensor(x)).detach().numpy(), atol=1e-10)


class _SpyEstimator:
    """Wraps an estimator and keeps the PUBs of every call."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def run(self, pubs, precision=None):
        self.calls.append(list(pubs))
        return self.inner.run(pubs, precision=precision)


def test_one_pub_per_batch_with_broadcast_parameters(exact_layer):
    from qiskit.primitives import StatevectorEstimator

    spy = _SpyEstimator(StatevectorEstimator())
    runner = EstimatorRunner(exact_layer.spec, spy)
    out = runner(_inputs(batch=7).numpy(), exact_layer.weight.detach().numpy())
    assert out.shape == (7, 4) and len(spy.calls) == 1 and len(spy.calls[0]) == 1
    circuit, observables, values = spy.calls[0][0]
    assert values.shape == (7, 1, len(circuit.parameters)) and len(observables) == 4


class _BrokenJob:
    def __init__(self, done=True):
        self._done = done

    def job_id(self):
        return "job-42"

    def done(self):
        return self._done

    def cancel(self):
        pass

    def result(self):
        raise RuntimeError("backend went away\nsecond line of a long traceback-ish message")


class _BrokenEstimator:
    def __init__(self, done=True):
        self.done = done

    def run(self, pubs, precision=None):
        return _BrokenJob(self.done)


def test_failed_and_timed_out_jobs_raise_clear_errors(exact_layer):
    x, w = _inputs(batch=2).numpy(), exact_layer.weight.detach().numpy()
    runner = EstimatorRunner(exact_layer.spec, _BrokenEstimator(), label="testdevice")
    with pytest.raises(JobError, match=r"job job-42 on testdevice failed \(RuntimeError: backend went away\)$"):
        runner(x, w)
    slow = EstimatorRunner(exact_layer.spec, _BrokenEstimator(done=False), timeout=0.2, label="testdevice")
    with pytest.raises(JobError, match="did not finish within 0.2 s"):
        slow(x, w)
    assert runner.stats.jobs == 0  # nothing is counted for a job that gave no result


def test_a_failing_local_job_is_reported_at_once_not_as_a_timeout(exact_layer):
    from qiskit.primitives.primitive_job import PrimitiveJob

    class Failing:
        def run(self, pubs, precision=None):
            job = PrimitiveJob(lambda: 1 / 0)
            job._submit()
            return job

    runner = EstimatorRunner(exact_layer.spec, Failing(), timeout=30, label="testdevice")
    with pytest.raises(JobError, match="failed \\(ZeroDivisionError"):
        runner(_inputs(batch=2).numpy(), exact_layer.weight.detach().numpy())


def test_circuit_too_large_for_the_device():
    with pytest.raises(ValueError, match="needs 6 qubits but aer_noisy-fake_athens-shots16 has 5"):
        backend = get_backend("aer_noisy", noise_model="fake_athens", shots=16)
        QuantumLayer(QuantumConfig(n_qubits=6), engine="estimator", make_runner=backend.make_runner)


def test_estimator_engine_refuses_gradients(exact_layer):
    layer = QuantumLayer(CONFIG, engine="estimator", make_runner=get_backend("aer", shots=64).make_runner)
    with pytest.raises(RuntimeError, match="forward only"):
        layer(_inputs(batch=2))
    with pytest.raises(ValueError, match="make_runner"):
        QuantumLayer(CONFIG, engine="estimator")


def test_qnn_engine_on_a_sampling_backend_uses_its_shots(exact_layer):
    """EstimatorQNN must not replace the backend's shots with its own default precision."""
    backend = get_backend("aer", shots=16, seed=3)
    layer = QuantumLayer(CONFIG, **backend.layer_kwargs(gradients=True))
    layer.load_state_dict(exact_layer.state_dict())
    x = _inputs(batch=8)
    out = layer(x)
    assert (out.double() - exact_layer(x)).abs().mean().item() > 0.05  # 16 shots, not 4096
    out.sum().backward()
    assert layer.weight.grad is not None


def test_ibm_runtime_options_reach_the_estimator():
    from qiskit_ibm_runtime import Batch

    backend = get_backend("ibm_runtime", ibm_backend="fake_manila", shots=300, resilience_level=1, dd=True,
                          twirling=True, seed=4)
    try:
        opts = backend.estimator.options
        assert opts.default_shots == 300 and opts.resilience_level == 1
        assert opts.dynamical_decoupling.enable is True
        assert opts.twirling.enable_gates is True and opts.twirling.enable_measure is True
        assert isinstance(backend.estimator.mode, Batch)
        assert backend.options["local"] is True and backend.num_qubits == 5
        assert "batch mode" in backend.description and "local testing mode" in backend.description
    finally:
        backend.close()
    job_mode = get_backend("ibm_runtime", ibm_backend="fake_manila", batch_mode=False)
    assert job_mode.estimator.mode is None and job_mode.estimator.backend().name == "fake_manila"
    assert "job mode" in job_mode.description


def test_missing_ibm_credentials_is_one_sentence(monkeypatch):
    from qiskit_ibm_runtime import QiskitRuntimeService

    monkeypatch.delenv("QISKIT_IBM_TOKEN", raising=False)
    monkeypatch.setattr(QiskitRuntimeService, "saved_accounts", staticmethod(lambda *a, **k: {}))
    with pytest.raises(BackendError) as info:
        get_backend("ibm_runtime", ibm_backend="ibm_brisbane")
    message = str(info.value)
    assert message.startswith("IBM Runtime needs credentials: set QISKIT_IBM_TOKEN")
    assert "fake_manila" in message and "\n" not in message


def test_connection_errors_never_show_the_token(monkeypatch, caplog):
    token = "tok-3f9a1c-never-print-me"
    monkeypatch.setenv("QISKIT_IBM_TOKEN", token)

    class Refusing:
        def __init__(self, **kwargs):
            assert kwargs["token"] == token and kwargs["channel"] == "ibm_quantum_platform"
            raise ConnectionError(f"401 Unauthorized for token {token}")

    import qiskit_ibm_runtime

    monkeypatch.setattr(qiskit_ibm_runtime, "QiskitRuntimeService", Refusing)
    with pytest.raises(BackendError) as info:
        get_backend("ibm_runtime", ibm_backend="ibm_brisbane")
    assert "could not connect to IBM Runtime" in str(info.value)
    assert token not in str(info.value) and "***" in str(info.value)
    assert token not in caplog.text


def test_backend_options_hold_no_secrets(monkeypatch):
    monkeypatch.setenv("QISKIT_IBM_TOKEN", "tok-options-check")
    backend = get_backend("ibm_runtime", ibm_backend="fake_manila", shots=64)
    assert "tok-options-check" not in json.dumps(backend.options) + backend.description + backend.label
    backend.close()


def test_aer_never_imports_ibm_runtime():
    code = ("import sys, torch, backends; from hybrid.quantum import QuantumLayer; "
            "b = backends.get_backend('aer', shots=64); "
            "l = QuantumLayer(engine='estimator', make_runner=b.make_runner); "
            "torch.set_grad_enabled(False); l(torch.rand(2, 4)); "
            "assert 'qiskit_ibm_runtime' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=backends.__path__[0] + "/..")
