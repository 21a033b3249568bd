"""Edge cases of the backends and the quantum layer: layouts, labels, empty batches, bad options, torn files."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from backends import BackendError, get_backend, parse_backend_spec
from hybrid.quantum.layer import QuantumConfig, QuantumLayer, build_circuit


class _ShiftingPassManager:
    """A pass manager whose layout changes on every run, as an unseeded transpiler's may."""

    def __init__(self, layouts):
        self.layouts = itertools.cycle(layouts)
        self.runs = 0

    def run(self, circuits):
        from qiskit.transpiler import CouplingMap, generate_preset_pass_manager

        self.runs += 1
        pm = generate_preset_pass_manager(optimization_level=1, coupling_map=CouplingMap.from_line(5),
                                          basis_gates=["cx", "rz", "sx", "x"], initial_layout=next(self.layouts))
        return pm.run(circuits)


def test_qnn_engine_reads_observables_where_the_circuit_it_runs_put_the_qubits():
    """The qnn engine's outputs and gradients match the exact engine even when each transpilation lays the circuit
    out differently: the observables must follow the circuit that is actually run."""
    from qiskit.primitives import StatevectorEstimator

    cfg = QuantumConfig(n_qubits=3, feature_map="angle", reps=1)
    exact = QuantumLayer(cfg, engine="statevector", seed=0)
    pm = _ShiftingPassManager([[0, 1, 2], [4, 3, 2]])
    layer = QuantumLayer(cfg, engine="qnn", estimator=StatevectorEstimator(default_precision=0.0), pass_manager=pm)
    layer.load_state_dict(exact.state_dict())
    x = (torch.rand(2, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1) * np.pi
    torch.testing.assert_close(layer(x).double(), exact(x), atol=1e-6, rtol=0)

    qnn = layer.connector.neural_network
    input_grad, weight_grad = qnn.backward(x.numpy(), exact.weight.detach().numpy())
    jac_x, jac_w = torch.autograd.functional.jacobian(lambda xx, ww: exact.program(xx, ww), (x, exact.weight.detach()))
    np.testing.assert_allclose(torch.einsum("bobi->boi", jac_x).numpy(), input_grad, atol=1e-8)
    np.testing.assert_allclose(jac_w.numpy(), weight_grad, atol=1e-8)


def _batch(n_qubits, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    spec = build_circuit(QuantumConfig(n_qubits=n_qubits))
    return spec, rng.uniform(-1, 1, (batch, n_qubits)), rng.uniform(-1, 1, len(spec.weight_params))


@pytest.mark.parametrize("name", ["torch_noisy", "aer_noisy"])
def test_simple_noise_is_in_the_label_and_options(name):
    """Results of different noise must not share a file name, nor a resume reuse another noise's batches."""
    extra = {"shots": 0} if name == "torch_noisy" else {}
    weak = get_backend(name, depolarizing=0.001, seed=0, **extra)
    strong = get_backend(name, depolarizing=0.2, readout_error=0.1, seed=0, **extra)
    split = get_backend(name, depolarizing="0.01,0.2", readout_error=0.1, seed=0, **extra)
    assert len({weak.label, strong.label, split.label}) == 3
    assert f"{name}-p0.2-ro0.1" in strong.label
    assert strong.options["depolarizing"] == [0.2, 0.2] and strong.options["readout_error"] == 0.1
    assert weak.options != strong.options and split.options["depolarizing"] == [0.01, 0.2]


@pytest.mark.parametrize("name,device_option", [("aer", None), ("aer_noisy", "noise_model"),
                                                ("torch_noisy", "noise_model"), ("ibm_runtime", "ibm_backend")])
def test_results_at_other_shot_counts_get_other_labels(name, device_option):
    """The label names hybrid.evaluate's result and resume files: an evaluation at 256 shots overwrote the one at
    64 on aer_noisy and ibm_runtime, whose labels named only the device."""
    device = {device_option: "fake_manila"} if device_option else {}
    labels = {shots: get_backend(name, shots=shots, seed=0, **device).label for shots in (64, 256)}
    assert labels[64] != labels[256] and all(str(shots) in label for shots, label in labels.items())


def test_density_runner_answers_an_empty_batch_without_a_job():
    backend = get_backend("torch_noisy", noise_model="fake_manila", shots=100, seed=0)
    spec, _, w = _batch(3)
    out = backend.make_runner(spec)(np.zeros((0, 3)), w)
    assert out.shape == (0, 3) and backend.stats.jobs == 0


def test_density_runner_refuses_a_layer_wider_than_the_device_clearly():
    layer_kwargs = get_backend("torch_noisy", noise_model="fake_manila").layer_kwargs()
    with pytest.raises(ValueError, match="needs 6 qubits but torch_noisy-fake_manila.* has 5"):
        QuantumLayer(QuantumConfig(n_qubits=6), **layer_kwargs)


def test_density_runner_dry_run_simulates_nothing_and_counts_the_plan():
    from hybrid.quantum.calibration import exact_expectations

    backend = get_backend("torch_noisy", noise_model="fake_manila", shots=100, seed=0, dry_run=True)
    spec, x, w = _batch(3, batch=4)
    runner = backend.make_runner(spec)
    runner.program = None  # simulating would fail
    out = runner(x, w)
    np.testing.assert_allclose(out, exact_expectations(spec, x, w), atol=1e-10)
    assert (backend.stats.jobs, backend.stats.circuits, backend.stats.shots, backend.stats.samples) == (1, 4, 400, 4)


def test_density_runner_summarises_the_circuit_it_simulates():
    """One transpilation: the summary describes the program's own ISA circuit, not a second one that an unseeded
    transpiler may have laid out differently."""
    from backends.budget import circuit_summary
    from backends.density import DensityRunner
    from backends.noisy import simple_noise_model

    backend = get_backend("torch_noisy", depolarizing=0.01, shots=0, seed=0)
    spec, x, w = _batch(3)
    pm = _ShiftingPassManager([[0, 1, 2], [4, 2, 0]])
    runner = DensityRunner(backend, spec, simple_noise_model(0.01), pm, None, seed=0)
    assert pm.runs == 1
    assert runner.summary == circuit_summary(runner.program.circuit, None)
    assert runner(x, w).shape == (2, 3)


def test_one_qubit_zz_layer_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="zz feature map needs at least 2 qubits.*angle"):
        QuantumLayer(QuantumConfig(n_qubits=1))
    layer = QuantumLayer(QuantumConfig(n_qubits=1, feature_map="angle"))
    assert layer(torch.zeros(2, 1, dtype=torch.float64)).shape == (2, 1)


@pytest.mark.parametrize("spec, option", [
    ("aer:shots=abc", "shots"), ("aer:precision=abc", "precision"), ("aer:shots=1.5", "shots"),
    ("aer_noisy:0.01", "noise_model"), ("aer_noisy:readout_error=abc", "readout_error"),
    ("torch_noisy:readout_error=abc", "readout_error"), ("torch_noisy:shots=abc", "shots"),
    ("torch_noisy:depolarizing=abc", "depolarizing"), ("aer:seed=abc:shots=10", "seed"),
    ("aer_noisy:optimization_level=7", "optimization_level"),
])
def test_bad_spec_values_raise_a_backend_error_naming_the_option(spec, option):
    name, options = parse_backend_spec(spec)
    with pytest.raises(BackendError, match=option):
        get_backend(name, **options)


@pytest.mark.parametrize("name", ["aer", "torch_noisy"])
def test_whole_number_float_shots_are_accepted_alike(name):
    backend = get_backend(name, **parse_backend_spec(f"{name}:shots=1e3")[1])
    assert backend.shots == 1000 and isinstance(backend.shots, int)


def _partial(path, resume=False):
    from backends.partial import PartialResults
    from backends.runner import ExecutionStats

    return PartialResults(path, {"a": 1}, ExecutionStats(), resume=resume)


def test_resume_drops_a_batch_torn_mid_write_and_keeps_the_rest(tmp_path, caplog):
    path = tmp_path / "partial.jsonl"
    _partial(path).add("d", 0, np.full((4, 2), 0.5))
    path.write_text(path.read_text() + '{"domain": "d", "start": 4, "n": 4, "probs": [[0.5, 0.')  # killed
    with caplog.at_level("WARNING", logger="backends.partial"):
        resumed = _partial(path, resume=True)
    assert "mid-write" in caplog.text
    assert resumed.get("d", 0) is not None and resumed.get("d", 4) is None  # the torn batch is recomputed
    resumed.add("d", 4, np.full((4, 2), 0.25))
    again = _partial(path, resume=True)
    np.testing.assert_allclose(again.get("d", 4), 0.25)
    assert again.n_samples == 8


def test_resume_refuses_a_file_damaged_before_its_last_line(tmp_path):
    path = tmp_path / "partial.jsonl"
    results = _partial(path)
    results.add("d", 0, np.full((4, 2), 0.5))
    results.add("d", 4, np.full((4, 2), 0.5))
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1][:20], lines[2]]) + "\n")
    with pytest.raises(BackendError, match=f"{path.name} is damaged.*line 2"):
        _partial(path, resume=True)


class _RecordingBatch:
    """Stands in for qiskit_ibm_runtime.Batch: records what was opened and closed."""

    opened: list = []
    closed: list = []

    def __init__(self, backend=None, **_):
        self.backend = backend
        _RecordingBatch.opened.append(self)

    def close(self):
        _RecordingBatch.closed.append(self)


@pytest.fixture
def recording_batch(monkeypatch):
    import qiskit_ibm_runtime

    _RecordingBatch.opened, _RecordingBatch.closed = [], []
    monkeypatch.setattr(qiskit_ibm_runtime, "Batch", _RecordingBatch)
    return _RecordingBatch


@pytest.mark.parametrize("bad, option", [({"dd": 2}, "dd"), ({"twirling": "maybe"}, "twirling"),
                                         ({"batch_mode": "maybe"}, "batch_mode"),
                                         ({"precision": 2.0}, "precision")])
def test_invalid_ibm_options_raise_a_backend_error_and_open_no_batch(bad, option, recording_batch):
    with pytest.raises(BackendError, match=option) as info:
        get_backend("ibm_runtime", ibm_backend="fake_manila", **bad)
    assert len(str(info.value).splitlines()) == 1
    assert recording_batch.opened == []


def test_ibm_batch_is_closed_when_the_estimator_cannot_be_made_on_it(recording_batch, monkeypatch):
    import qiskit_ibm_runtime.executor_estimator as executor_estimator

    def broken(*args, **kwargs):
        raise RuntimeError("no estimator today")

    monkeypatch.setattr(executor_estimator, "Estimator", broken)
    with pytest.raises(RuntimeError, match="no estimator today"):
        get_backend("ibm_runtime", ibm_backend="fake_manila", shots=100)
    assert len(recording_batch.opened) == 1 and recording_batch.closed == recording_batch.opened


def test_ibm_pydantic_refusal_is_one_sentence_naming_the_option():
    from backends.ibm import estimator_options

    with pytest.raises(BackendError, match=r"ibm_runtime option shots=-5 is not valid \(.+\)"):
        estimator_options(shots=-5, precision=None, resilience_level=1, dd=None, twirling=None, seed=None,
                          local=True)


@pytest.mark.parametrize("observables, groups", [(("XX", "ZZ", "YI"), 3), (("ZI", "IZ", "ZZ"), 1), (("XI", "IZ"), 1)])
def test_sampling_costs_count_one_circuit_per_measurement_basis(observables, groups, caplog):
    """BackendEstimatorV2 runs one circuit per binding per qubit-wise-commuting group of the observables."""
    backend = get_backend("aer", shots=100, seed=1)
    simulator = backend.estimator._backend
    executed = {"circuits": 0, "shots": 0}
    run = simulator.run

    def counting_run(circuits, **options):
        circuits = circuits if isinstance(circuits, list) else [circuits]
        executed["circuits"] += len(circuits)
        executed["shots"] += len(circuits) * options.get("shots", 0)
        return run(circuits, **options)

    simulator.run = counting_run
    spec = build_circuit(QuantumConfig(n_qubits=2, feature_map="ry", observables=observables))
    x = np.random.default_rng(0).uniform(-1, 1, (5, 2))
    with caplog.at_level("WARNING", logger="backends.runner"):
        backend.make_runner(spec)(x, np.zeros(len(spec.weight_params)))
    assert executed == {"circuits": 5 * groups, "shots": 500 * groups}
    assert (backend.stats.circuits, backend.stats.shots) == (executed["circuits"], executed["shots"])
    assert "planned" not in caplog.text
