"""Noise-aware training calibrated on a device: fitting each observable's attenuation, and training with it."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from hybrid.config import TrainConfig
from hybrid.device_noise import with_device_attenuation
from hybrid.model import HybridNet
from hybrid.quantum import ExpectationNoise, NoiseModel, QuantumConfig, build_circuit
from hybrid.quantum.calibration import calibrate_attenuation, exact_expectations, fit_attenuation
from hybrid.quantum.layer import qiskit_expectations

READOUT = "aer_noisy:depolarizing=0:readout_error=0.05"  # a device whose attenuation is known: (1 - 2p)^weight
SMALL = dict(width_mult=0.35, stem_stride=2, embed_dim=16, quantum_head="dressed", feature_map="angle",
             q_observables="z+zz", n_qubits=3)


def test_fit_recovers_per_column_factors_and_refuses_a_silent_observable():
    rng = np.random.default_rng(0)
    exact = rng.uniform(-1, 1, (200, 3))
    measured = exact * np.array([0.9, 0.5, 1.0]) + rng.normal(0, 0.01, exact.shape)
    np.testing.assert_allclose(fit_attenuation(exact, measured), [0.9, 0.5, 1.0], atol=0.01)
    assert fit_attenuation(exact, exact * 1.2).max() == 1.0  # a device never amplifies: clipped
    exact[:, 1] = 0.0
    with pytest.raises(ValueError, match="cannot be fitted"):
        fit_attenuation(exact, measured)
    with pytest.raises(ValueError, match="one shape"):
        fit_attenuation(exact, measured[:, :2])


def test_exact_expectations_match_qiskits_statevector_in_our_parameter_order():
    spec = build_circuit(QuantumConfig(n_qubits=3, feature_map="angle", observables=("IIZ", "ZZI")))
    rng = np.random.default_rng(1)
    angles, weights = rng.uniform(-3, 3, (5, 3)), rng.uniform(-3, 3, len(spec.weight_params))
    np.testing.assert_allclose(exact_expectations(spec, angles, weights), qiskit_expectations(spec, angles, weights),
                               atol=1e-10)


def test_calibration_on_a_readout_error_device_gives_one_minus_2p_per_measured_bit():
    cfg = with_device_attenuation(TrainConfig(**SMALL, q_noise_device=READOUT))
    factors = [float(a) for a in cfg.q_attenuation.split(",")]
    labels = HybridNet(cfg.model_config(), 1, 2).noise  # the network trains with exactly these factors
    assert labels.model.attenuation == tuple(factors)
    weights = [sum(c != "I" for c in label) for label in ("IIZ", "IZI", "ZII", "IZZ", "ZZI")]
    np.testing.assert_allclose(factors, [0.9**w for w in weights], atol=0.03)
    assert with_device_attenuation(cfg) is cfg  # fitted once: a config that has the factors keeps them
    again = with_device_attenuation(TrainConfig(**SMALL, q_noise_device=READOUT))
    assert again.q_attenuation == cfg.q_attenuation  # seeded: the same device gives the same factors


def test_calibration_draws_inputs_and_weights_and_calls_the_device_once_per_weight_draw():
    spec = build_circuit(QuantumConfig(n_qubits=2, feature_map="angle"))
    calls = []

    def halving_device(angles, weights):
        calls.append((angles.shape, weights.shape))
        return 0.5 * exact_expectations(spec, angles, weights)

    assert calibrate_attenuation(spec, halving_device, n_weight_draws=3, n_inputs=16) == (0.5, 0.5)
    assert calls == [((16, 2), (len(spec.weight_params),))] * 3


def test_training_noise_scales_each_observable_by_its_factor_and_checks_their_number():
    labels = ("IZ", "ZI", "ZZ")
    noise = ExpectationNoise(NoiseModel(attenuation=(0.9, 0.5, 0.8), readout_error=0.1), labels).train()
    e = torch.tensor([[0.5, -0.4, 0.2]], dtype=torch.float64, requires_grad=True)
    expected = e.detach() * torch.tensor([0.9 * 0.8, 0.5 * 0.8, 0.8 * 0.64], dtype=torch.float64)
    torch.testing.assert_close(noise(e), expected)  # on top of the uniform readout error
    assert torch.equal(noise.eval()(e), e)  # evaluation stays exact
    with pytest.raises(ValueError, match="2 attenuation factors for 3 observables"):
        ExpectationNoise(NoiseModel(attenuation=(0.9, 0.5)), labels)
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        NoiseModel(attenuation=(0.9, 1.5))


@pytest.mark.parametrize("text", ["0.9,x", "0.9,0", "1.2", "0.9;0.8"])
def test_config_refuses_bad_attenuation_naming_the_flag(text):
    with pytest.raises(ValueError, match="--q-attenuation"):
        TrainConfig(q_attenuation=text)


def test_a_config_that_names_the_device_matches_the_run_that_fitted_it():
    fitted = TrainConfig(q_noise_device="aer_noisy:fake_manila", q_attenuation="0.9,0.8,0.7,0.9")
    assert TrainConfig(q_noise_device="aer_noisy:fake_manila").differences(fitted) == []  # resume, study reruns
    assert TrainConfig(q_attenuation="0.9,0.8,0.7,0.8").differences(fitted) != []
    assert TrainConfig(q_noise_device="aer_noisy:fake_lima", q_attenuation="").differences(fitted) != []


@pytest.mark.parametrize("changes", [dict(quantum=False), dict(quantum_layer="classical_twin"),
                                     dict(quantum_layer="none")])
def test_calibration_needs_a_circuit_in_the_slot(changes):
    with pytest.raises(ValueError, match="calibrates the circuit"):
        with_device_attenuation(TrainConfig(**(SMALL | changes), q_noise_device=READOUT))


def test_unknown_calibration_backend_fails_before_any_work():
    from backends import BackendError

    with pytest.raises(BackendError, match="unknown backend"):
        with_device_attenuation(TrainConfig(**SMALL, q_noise_device="nosuch:device"))
    # a device where the backend belongs: the message gives the spec that runs it
    with pytest.raises(BackendError, match="fake_manila is a device: name a backend before it, e.g. "
                                           "aer_noisy:fake_manila"):
        with_device_attenuation(TrainConfig(**SMALL, q_noise_device="fake_manila"))
    with pytest.raises(BackendError) as plain:
        with_device_attenuation(TrainConfig(**SMALL, q_noise_device="nosuch:device"))
    assert "device" not in str(plain.value).split("valid backends")[1] and "did you mean" not in str(plain.value)


@pytest.mark.parametrize("name, hint", [
    ("ibm_brisbane", "run on it with ibm_runtime:ibm_brisbane, or simulate its noise with aer_noisy:fake_brisbane"),
    ("ibm_runtme", "did you mean ibm_runtime?"), ("aer_noisey", "did you mean aer_noisy?"),
])
def test_a_misspelt_backend_or_a_qpu_named_as_one_gets_the_spec_that_works(name, hint):
    from backends import BackendError, get_backend, parse_backend_spec

    for build in (lambda: parse_backend_spec(f"{name}:shots=100"), lambda: get_backend(name)):
        with pytest.raises(BackendError, match=re.escape(hint)):
            build()
    if name.startswith("ibm_b"):  # the simulator it points to exists
        assert get_backend("aer_noisy", noise_model="fake_brisbane").close() is None


def test_a_run_trained_for_a_device_saves_the_factors_it_trained_with(tmp_path, data_root):
    from hybrid import train

    out = tmp_path / "run"
    assert train.main(["--epochs", "1", "--max-train-samples", "64", "--width-mult", "0.35", "--stem-stride", "2",
                       "--quantum-head", "dressed", "--feature-map", "angle", "--n-qubits", "3",
                       "--q-train-shots", "256", "--q-noise-device", READOUT, "--n-bootstrap", "0",
                       "--eval-max-samples", "16", "--batch-size", "32", "--no-figures", "--quiet",
                       "--data-root", str(data_root), "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["q_noise_device"] == READOUT
    factors = [float(a) for a in saved["q_attenuation"].split(",")]
    np.testing.assert_allclose(factors, [0.9] * 3, atol=0.03)  # three Z observables, one bit each
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["q_attenuation"] == saved["q_attenuation"]


LABELS = ("IIZ", "IZI", "ZII", "IZZ", "ZZI")


def _layer_and_states(batch: int = 3):
    from hybrid.quantum import QuantumLayer

    layer = QuantumLayer(QuantumConfig(n_qubits=3, feature_map="angle", observables=LABELS), seed=0)
    x = torch.linspace(0.2, 2.9, batch * 3, dtype=torch.float64).reshape(batch, 3)
    return layer, x


def test_the_layer_gives_the_basis_probabilities_of_the_states_it_measures():
    layer, x = _layer_and_states()
    values, probabilities = layer.with_probabilities(x)
    torch.testing.assert_close(values, layer(x))
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(3, dtype=torch.float64))
    signs = ExpectationNoise(NoiseModel(shots=8, kind="joint"), LABELS).signs
    torch.testing.assert_close(probabilities @ signs.matrix, values)  # Z-strings are sums of signed probabilities
    assert not probabilities.requires_grad


def test_joint_shots_have_binomial_variances_and_the_covariance_of_shared_bitstrings():
    """Z0 and Z0Z1 read from the same N bitstrings: Cov = (<Z1> - <Z0><Z0Z1>) / N, which independent draws lack."""
    layer, x = _layer_and_states(batch=1)
    values, probabilities = layer.with_probabilities(x)
    shots = 256
    noise = ExpectationNoise(NoiseModel(shots=shots, kind="joint"), LABELS,
                             generator=torch.Generator().manual_seed(0)).train()
    draws = torch.stack([noise(values, probabilities)[0] for _ in range(4000)]).detach()
    e = values[0].detach()
    torch.testing.assert_close(draws.mean(0), e, atol=0.01, rtol=0)
    np.testing.assert_allclose((draws.var(0) * shots).numpy(), (1 - e**2).numpy(), rtol=0.1)
    z0, z1, z0z1 = e[0], e[1], e[3]
    covariance = ((draws[:, 0] - draws[:, 0].mean()) * (draws[:, 3] - draws[:, 3].mean())).mean()
    expected = float(z1 - z0 * z0z1) / shots
    assert abs(expected) > 1e-3 and covariance.item() == pytest.approx(expected, rel=0.15)


def test_bitstring_counts_are_the_draws_the_estimates_read():
    layer, x = _layer_and_states(batch=3)
    _, probabilities = layer.with_probabilities(x)
    signs = ExpectationNoise(NoiseModel(shots=8, kind="joint"), LABELS).signs
    counts = signs.bitstring_counts(probabilities, 300, 0.1, torch.Generator().manual_seed(5))
    torch.testing.assert_close(counts.sum(dim=1), torch.full((3,), 300.0, dtype=torch.float64))
    assert torch.equal(counts, counts.round()) and counts.min() >= 0
    estimates = signs.bitstring_estimates(probabilities, 300, 0.1, torch.Generator().manual_seed(5))
    torch.testing.assert_close(estimates, (counts / 300) @ signs.matrix)  # the same seed reads the same bitstrings


def test_bitstring_counts_take_shots_per_row():
    """Adaptive allocation reads each image with its own number of shots, from the same seeded draws."""
    layer, x = _layer_and_states(batch=3)
    _, probabilities = layer.with_probabilities(x)
    signs = ExpectationNoise(NoiseModel(shots=8, kind="joint"), LABELS).signs
    shots = torch.tensor([50, 0, 300])
    counts = signs.bitstring_counts(probabilities, shots, 0.1, torch.Generator().manual_seed(5))
    torch.testing.assert_close(counts.sum(dim=1), shots.double())
    assert torch.equal(counts, counts.round()) and counts.min() >= 0
    same = signs.bitstring_counts(probabilities, torch.full((3,), 300), 0.1, torch.Generator().manual_seed(5))
    assert torch.equal(same, signs.bitstring_counts(probabilities, 300, 0.1, torch.Generator().manual_seed(5)))
    assert not signs.bitstring_counts(probabilities, torch.zeros(3, dtype=torch.long)).any()


def test_joint_shots_flip_bits_with_the_readout_error_and_pass_the_attenuated_gradient():
    layer, x = _layer_and_states(batch=2)
    values, probabilities = layer.with_probabilities(x)
    noise = ExpectationNoise(NoiseModel(shots=512, kind="joint", readout_error=0.1, attenuation=(0.9,) * 5), LABELS,
                             generator=torch.Generator().manual_seed(1)).train()
    mean = torch.stack([noise(values, probabilities) for _ in range(1000)]).mean(0).detach()
    weights = torch.tensor([1, 1, 1, 2, 2], dtype=torch.float64)
    # the bit flips give (1 - 2p)^w; the fitted attenuation scales the mean on top
    torch.testing.assert_close(mean, values.detach() * 0.8**weights * 0.9, atol=0.01, rtol=0)
    e = values.detach().clone().requires_grad_(True)
    noise(e, probabilities).sum().backward()
    torch.testing.assert_close(e.grad, (0.8**weights * 0.9).expand(2, 5))  # straight through the draws
    assert torch.equal(noise.eval()(e), e)  # evaluation stays exact, and needs no probabilities


def test_joint_shots_say_what_they_need():
    with pytest.raises(ValueError, match="not all Z-strings"):
        ExpectationNoise(NoiseModel(shots=8, kind="joint"), ("IZ", "XX"))
    noise = ExpectationNoise(NoiseModel(shots=8, kind="joint"), ("IZ", "ZI")).train()
    assert noise.needs_probabilities and not noise.eval().needs_probabilities
    with pytest.raises(ValueError, match="basis probabilities"):
        noise.train()(torch.zeros(1, 2, dtype=torch.float64))


def test_a_joint_noise_aware_network_trains_noisy_and_evaluates_exact():
    cfg = TrainConfig(**SMALL, q_train_shots=64, q_shot_noise="joint")
    torch.manual_seed(0)
    noisy = HybridNet(cfg.model_config(), 1, 2)
    exact = HybridNet(TrainConfig(**SMALL).model_config(), 1, 2)
    exact.load_state_dict(noisy.state_dict())
    x = torch.rand(4, 1, 28, 28)
    noisy.train()
    a, b = noisy(x), noisy(x)
    assert not torch.allclose(a, b)  # a new draw of bitstrings every forward pass
    a.sum().backward()
    assert noisy.quantum.weight.grad.abs().sum() > 0  # the circuit trains through the draws
    exact.load_state_dict(noisy.state_dict())
    noisy.eval(), exact.eval()
    with torch.no_grad():
        torch.testing.assert_close(noisy(x), exact(x))


def test_only_the_exact_engine_gives_basis_probabilities():
    from hybrid.quantum import QuantumLayer

    layer = QuantumLayer(QuantumConfig(n_qubits=2, feature_map="angle"), engine="estimator",
                         make_runner=lambda spec: (lambda angles, weights: np.zeros((len(angles), 2))))
    with pytest.raises(ValueError, match="statevector engine"):
        layer.with_probabilities(torch.zeros(1, 2, dtype=torch.float64))
