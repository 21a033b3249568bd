"""The density-matrix engine of the transpiled circuit under a device's noise model, and training through it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from backends.noisy import aer_noise
from hybrid.config import TrainConfig
from hybrid.device_noise import attach_noise_channel, density_channel, with_device_attenuation
from hybrid.model import HybridNet
from hybrid.quantum import QuantumConfig, build_circuit
from hybrid.quantum.density import DensityProgram, device_density_program, linear_angle
from hybrid.quantum.layer import qiskit_expectations

LABELS = ("IIIZ", "IIZI", "IZII", "ZIII", "IIZZ", "IZZI", "ZZII")
SPEC = build_circuit(QuantumConfig(n_qubits=4, feature_map="angle", observables=LABELS))
SMALL = dict(width_mult=0.35, stem_stride=2, embed_dim=16, quantum_head="dressed", feature_map="angle",
             q_observables="z+zz", n_qubits=3)
DENSITY = dict(q_noise_device="aer_noisy:fake_manila", q_noise_channel="density")


def _inputs(seed: int, batch: int = 3):
    rng = np.random.default_rng(seed)
    return rng.uniform(-np.pi, np.pi, (batch, 4)), rng.uniform(-np.pi, np.pi, len(SPEC.weight_params))


def _aer_density_expectations(spec, isa, noise_model, x, w):
    """Aer's density-matrix simulator on the bound ISA circuit: the reference."""
    from qiskit_aer import AerSimulator

    position = {p: i for i, p in enumerate(list(spec.input_params) + list(spec.weight_params))}
    values = np.concatenate([x, np.broadcast_to(w, (len(x), len(w)))], axis=1)
    out = []
    for row in values:
        bound = isa.assign_parameters({p: row[position[p]] for p in isa.parameters})
        bound.save_density_matrix()
        rho = AerSimulator(method="density_matrix", noise_model=noise_model).run(bound).result().data()[
            "density_matrix"]
        out.append([rho.expectation_value(obs.apply_layout(isa.layout)).real for obs in spec.observables])
    return np.array(out)


@pytest.mark.parametrize("feature_map", ["angle", "ry", "zz"])  # zz: angles that are products of inputs
def test_noisy_expectations_match_aers_density_matrix_simulation_of_the_device(feature_map):
    from qiskit_aer.noise import NoiseModel

    from backends.noisy import fake_device

    spec = build_circuit(QuantumConfig(n_qubits=4, feature_map=feature_map, observables=LABELS))
    _, pass_manager, _ = aer_noise("fake_manila", seed=0)
    gates_only = NoiseModel.from_backend(fake_device("fake_manila"), readout_error=False)
    program = device_density_program(spec, gates_only, pass_manager)
    x, w = _inputs(1)
    values, probabilities = program(torch.tensor(x), torch.tensor(w))
    reference = _aer_density_expectations(spec, pass_manager.run(spec.circuit), gates_only, x, w)
    np.testing.assert_allclose(values.numpy(), reference, atol=1e-7)
    assert not np.allclose(reference, qiskit_expectations(spec, x, w), atol=0.01)  # the noise is there
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(3, dtype=torch.float64))


def test_readout_and_depolarizing_errors_scale_each_observable_as_their_algebra_says():
    # readout p on every bit: <O> -> (1 - 2p)^w <O>, exactly (no shots in this engine)
    noise_model, pass_manager, _ = aer_noise(readout_error=0.05, seed=0)
    program = device_density_program(SPEC, noise_model, pass_manager)
    x, w = _inputs(2)
    values, _ = program(torch.tensor(x), torch.tensor(w))
    weights = np.array([label.count("Z") for label in LABELS])
    np.testing.assert_allclose(values.numpy(), qiskit_expectations(SPEC, x, w) * 0.9**weights, atol=1e-9)
    noiseless, pass_manager, _ = aer_noise(depolarizing=0, seed=0)
    values, _ = device_density_program(SPEC, noiseless, pass_manager)(torch.tensor(x), torch.tensor(w))
    np.testing.assert_allclose(values.numpy(), qiskit_expectations(SPEC, x, w), atol=1e-9)


@pytest.mark.parametrize("feature_map", ["angle", "zz"])
def test_gradients_of_the_noisy_values_match_finite_differences(feature_map):
    spec = build_circuit(QuantumConfig(n_qubits=4, feature_map=feature_map, observables=LABELS))
    noise_model, pass_manager, _ = aer_noise("fake_manila", seed=0)
    program = device_density_program(spec, noise_model, pass_manager)
    x, w = _inputs(3, batch=2)
    x, w = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: program(a, b)[0], (x, w), eps=1e-6, atol=1e-5)


def test_rz_angles_are_read_as_linear_functions_of_the_parameters():
    from qiskit.circuit import Parameter

    a, b = Parameter("a"), Parameter("b")
    coefficients, offset = linear_angle(2 * a - b + np.pi, {a: 0, b: 1})
    np.testing.assert_allclose(coefficients, [2, -1])
    assert offset == pytest.approx(np.pi)
    assert linear_angle(0.5, {a: 0})[1] == 0.5
    with pytest.raises(ValueError, match="not linear"):
        linear_angle(a * b, {a: 0, b: 1})


def test_the_engine_says_what_it_cannot_simulate():
    from qiskit import QuantumCircuit
    from qiskit.circuit import Parameter

    circuit = QuantumCircuit(1)
    circuit.ry(Parameter("t"), 0)  # not transpiled to the device's basis
    with pytest.raises(ValueError, match="fixed gates and rz"):
        DensityProgram(circuit, circuit.parameters, [], ("Z",), lambda *_: None, lambda _: None)
    with pytest.raises(ValueError, match="not all Z-strings"):
        DensityProgram(circuit, circuit.parameters, [], ("X",), lambda *_: None, lambda _: None)
    wide = QuantumCircuit(11)
    wide.h(range(11))
    with pytest.raises(ValueError, match="touches 11 qubits"):
        DensityProgram(wide, [], [], ("Z" * 11,), lambda *_: None, lambda _: None)


@pytest.mark.parametrize("changes, message", [
    (dict(q_noise_channel="density"), "name it with --q-noise-device"),
    (dict(DENSITY, q_readout_error=0.03), "drop --q-readout-error"),
    (dict(DENSITY, q_attenuation="0.9,0.9,0.9,0.9,0.9"), "drop --q-attenuation"),
    (dict(q_noise_channel="kraus"), "must be one of attenuation, density"),
])
def test_config_refuses_a_density_channel_it_cannot_honour(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**SMALL, **changes)


@pytest.mark.parametrize("device, message", [("aer", "must be\\s+aer_noisy"),
                                             ("aer_noisy:fake_manila:shots=512", "not shots")])
def test_density_channel_needs_an_aer_noise_model_and_takes_shots_from_its_own_flag(device, message):
    with pytest.raises(ValueError, match=message):
        density_channel(TrainConfig(**SMALL, q_noise_device=device, q_noise_channel="density"))


def test_a_density_channel_run_is_not_calibrated():
    cfg = TrainConfig(**SMALL, **DENSITY, q_train_shots=64)
    assert with_device_attenuation(cfg) is cfg  # no calibration jobs: the noise model is simulated itself


def test_a_network_trains_through_the_device_channel_and_evaluates_exact():
    cfg = TrainConfig(**SMALL, **DENSITY, q_train_shots=64, q_shot_noise="joint")
    torch.manual_seed(0)
    network = HybridNet(cfg.model_config(), 1, 2)
    exact = HybridNet(TrainConfig(**SMALL).model_config(), 1, 2)
    exact.load_state_dict(network.state_dict())
    attach_noise_channel(network, cfg)
    assert network.noise_channel is not None
    x = torch.rand(4, 1, 28, 28)
    network.train()
    f = network.features(x)
    calls = []
    channel = network.noise_channel
    network.use_noise_channel(lambda a, w: calls.append(1) or channel(a, w))
    a, b = network.layer_outputs(f), network.layer_outputs(f)
    assert len(calls) == 2 and not torch.allclose(a, b)  # through the channel, a new draw each time
    a.sum().backward()
    assert network.quantum.weight.grad.abs().sum() > 0
    exact.load_state_dict(network.state_dict())  # the training passes moved BatchNorm's statistics
    network.eval(), exact.eval()
    torch.testing.assert_close(network(x), exact(x))  # evaluation is the exact circuit
    assert len(calls) == 2


def test_a_model_without_a_circuit_refuses_a_channel():
    network = HybridNet(TrainConfig(**SMALL, quantum_layer="classical_twin").model_config(), 1, 2)
    with pytest.raises(ValueError, match="has none"):
        network.use_noise_channel(lambda a, w: (a, a))


def test_a_run_trained_through_the_device_channel_records_it_and_reloads_with_it(tmp_path, data_root):
    from hybrid import train
    from hybrid.rundir import load_run

    out = tmp_path / "run"
    assert train.main(["--epochs", "1", "--max-train-samples", "64", "--width-mult", "0.35", "--stem-stride", "2",
                       "--quantum-head", "dressed", "--feature-map", "angle", "--n-qubits", "3",
                       "--q-train-shots", "256", "--q-shot-noise", "joint", "--q-noise-device", "aer_noisy:fake_manila",
                       "--q-noise-channel", "density", "--q-noise-at-eval", "--n-bootstrap", "0", "--eval-max-samples", "16",
                       "--batch-size", "32", "--no-figures", "--quiet", "--data-root", str(data_root), "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["q_noise_channel"] == "density" and saved["q_attenuation"] == ""
    assert json.loads((out / "report.json").read_text())["config"]["q_noise_channel"] == "density"
    assert load_run(out).model.noise_channel is not None  # evaluated through the noise model, as it asked
    assert load_run(out, "aer_noisy", noise_model="fake_manila").model.noise_channel is None  # the backend's own


def test_the_torch_noisy_backend_gives_the_noisy_values_or_joint_shot_estimates_of_them():
    from backends import get_backend

    x, w = _inputs(4, batch=4)
    noise_model, pass_manager, _ = aer_noise("fake_manila", seed=0)
    expected = device_density_program(SPEC, noise_model, pass_manager)(torch.tensor(x), torch.tensor(w))[0].numpy()
    noiseless_shots = get_backend("torch_noisy", noise_model="fake_manila", shots=0, seed=0)
    np.testing.assert_allclose(noiseless_shots.make_runner(SPEC)(x, w), expected, atol=1e-12)
    backend = get_backend("torch_noisy", noise_model="fake_manila", shots=256, seed=0)
    runner = backend.make_runner(SPEC)
    draws = np.stack([runner(x, w) for _ in range(200)])
    assert not np.allclose(draws[0], draws[1])
    standard_error = np.sqrt((1 - expected**2) / 256 / 200)
    assert np.all(np.abs(draws.mean(axis=0) - expected) < 5 * standard_error)  # unbiased
    np.testing.assert_allclose(draws.std(axis=0), np.sqrt((1 - expected**2) / 256), rtol=0.25)  # binomial spread
    assert backend.stats.jobs == 200 and backend.stats.shots == 200 * 4 * 256 and backend.stats.samples == 800
    assert backend.circuit_summary["two_qubit_gates"] > 0
    again = get_backend("torch_noisy", noise_model="fake_manila", shots=256, seed=0).make_runner(SPEC)
    np.testing.assert_array_equal(again(x, w), draws[0])  # seeded


def test_the_torch_noisy_backend_refuses_what_it_cannot_run():
    from backends import BackendError, get_backend

    with pytest.raises(BackendError, match="positive whole number"):
        get_backend("torch_noisy", noise_model="fake_manila", shots=-1)
    with pytest.raises(BackendError, match="not both"):
        get_backend("torch_noisy", noise_model="fake_manila", readout_error=0.1)


def test_a_trained_run_evaluates_through_the_torch_noisy_backend(tiny_run):
    from hybrid.rundir import load_run

    loaded = load_run(tiny_run, "torch_noisy", noise_model="fake_manila", shots=128, seed=0)
    assert loaded.model.quantum.engine == "estimator"
    with torch.no_grad():
        out = loaded.model(torch.rand(3, 1, 28, 28))
    assert out.shape == (3, 2) and torch.isfinite(out).all()
    assert loaded.backend.stats.jobs == 1 and loaded.backend.stats.shots == 3 * 128


def test_the_noisy_engines_benchmark_times_both_and_checks_they_agree(tmp_path):
    from benchmarks import noisy_engines

    out = tmp_path / "noisy.json"
    result = noisy_engines.main(["--batch", "8", "--rounds", "1", "--check-shots", "4000", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    rows = result["rows"]
    assert result["speedup"] == pytest.approx(rows["aer_noisy"]["seconds_per_batch"]
                                              / rows["torch_noisy"]["seconds_per_batch"])
    assert result["agreement"]["max_abs_z"] < 5  # the same noise, up to Aer's shots
