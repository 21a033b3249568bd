"""Quantum heads (concat, dressed, residual), their controls, re-uploading, observables and training noise."""

from __future__ import annotations

from copy import deepcopy
from dataclasses import replace

import numpy as np
import pytest
import torch

from hybrid.config import ModelConfig, TrainConfig
from hybrid.heads import QUANTUM_HEADS, QUANTUM_LAYERS, ClassicalTwin, count_parameters
from hybrid.model import HybridNet, quantum_config
from hybrid.quantum import (ExpectationNoise, NoiseModel, QuantumConfig, QuantumLayer, build_circuit,
                            pauli_observables, qiskit_expectations)
from hybrid.quantum.noise import sample_estimates

SMALL = ModelConfig(width_mult=0.35, stem_stride=2, embed_dim=16)


@pytest.mark.parametrize("layer", QUANTUM_LAYERS)
@pytest.mark.parametrize("head", QUANTUM_HEADS)
def test_each_head_and_layer_builds_trains_a_step_and_predicts(head, layer):
    torch.manual_seed(0)
    model = HybridNet(replace(SMALL, quantum_head=head, quantum_layer=layer, q_observables="z+zz"), 1, 2)
    x, y = torch.rand(8, 1, 28, 28), torch.tensor([0, 1] * 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    slot = {"pqc": "quantum.weight", "separable": "quantum.weight", "classical_twin": "classical.inner",
            "none": "project.weight"}[layer]
    assert slot in changed and "classifier.weight" in changed  # the step reached the layer and the classifier
    model.eval()
    with torch.no_grad():
        probs = model(x).softmax(1)
    assert probs.shape == (8, 2) and torch.allclose(probs.sum(1), torch.ones(8))
    assert (model.quantum is not None) == (layer in ("pqc", "separable"))


def test_dressed_prediction_depends_on_the_circuit_weights():
    torch.manual_seed(0)
    model = HybridNet(replace(SMALL, quantum_head="dressed"), 1, 2).eval()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        before = model(x)
        model.quantum.weight.add_(0.7)
        after = model(x)
    assert (before - after).abs().max() > 1e-3
    assert model.classifier.in_features == model.quantum.n_outputs  # the classifier sees only the circuit


def test_residual_head_adds_the_lifted_layer_to_the_embedding():
    model = HybridNet(replace(SMALL, quantum_head="residual"), 1, 2).eval()
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        f = model.features(x)
        expected = model.classifier(f + model.lift(model.quantum(model.quantum_angles(f))))
        torch.testing.assert_close(model(x), expected)


@pytest.mark.parametrize("config", [QuantumConfig(), QuantumConfig(n_qubits=3, feature_map="angle", reupload=2),
                                    QuantumConfig(n_qubits=5, entanglement="full", reps=3)])
def test_separable_circuit_has_no_entangling_gate_and_matches_qiskit(config):
    spec = build_circuit(replace(config, separable=True))
    assert spec.circuit.num_nonlocal_gates() == 0 and build_circuit(config).circuit.num_nonlocal_gates() > 0
    single = lambda c: sum(1 for i in c.decompose().data if i.operation.num_qubits == 1)  # noqa: E731
    assert single(spec.circuit) == single(build_circuit(config).circuit)  # only the entanglers are gone
    layer = QuantumLayer(replace(config, separable=True), engine="statevector", seed=2)
    x = torch.rand(5, layer.n_inputs, dtype=torch.float64) * 3
    reference = qiskit_expectations(spec, x.numpy(), layer.weight.detach().numpy())
    np.testing.assert_allclose(layer(x).detach().numpy(), reference, atol=1e-10)


@pytest.mark.parametrize("n, reps, reupload, observables", [(4, 2, 1, "z"), (4, 2, 1, "z+zz"), (8, 2, 1, "z"),
                                                             (6, 3, 2, "zz"), (12, 2, 1, "z+zz")])
def test_classical_twin_has_exactly_the_parameter_count_of_the_circuit(n, reps, reupload, observables):
    cfg = replace(SMALL, n_qubits=n, q_reps=reps, q_reupload=reupload, q_observables=observables)
    circuit_net = HybridNet(cfg, 1, 2)
    twin_net = HybridNet(replace(cfg, quantum_layer="classical_twin"), 1, 2)
    assert count_parameters(twin_net.classical) == count_parameters(circuit_net.quantum) == \
        len(build_circuit(quantum_config(cfg)).weight_params)
    assert twin_net.parameter_counts()["total"] == circuit_net.parameter_counts()["total"]
    out = twin_net.classical(torch.rand(7, n) * 3)
    assert out.shape == (7, circuit_net.quantum.n_outputs) and out.abs().max() <= 1


@pytest.mark.parametrize("feature_map, feature_reps, encoding_gates", [("angle", 2, 16), ("angle", 1, 8), ("ry", 1, 4)])
def test_the_encoding_options_reach_the_circuit_and_leave_the_twin_its_count(feature_map, feature_reps, encoding_gates):
    cfg = replace(SMALL, quantum_head="dressed", feature_map=feature_map, q_feature_reps=feature_reps,
                  q_observables="z+zz")
    circuit = HybridNet(cfg, 1, 2).quantum.spec.circuit
    assert sum(1 for inst in circuit.data if inst.operation.name in ("ry", "rz")
               and str(inst.operation.params[0]).startswith("x")) == encoding_gates
    twin = HybridNet(replace(cfg, quantum_layer="classical_twin"), 1, 2)
    assert count_parameters(twin.classical) == len(build_circuit(quantum_config(cfg)).weight_params) == 12


def test_classical_twin_too_small_for_its_inputs_says_what_to_change():
    with pytest.raises(ValueError, match="--q-reps"):
        ClassicalTwin(4, 7, 8)


def test_reuploading_interleaves_encoding_and_new_weights_and_matches_qiskit():
    config = QuantumConfig(n_qubits=3, reps=1, reupload=3)
    spec = build_circuit(config)
    assert len(spec.weight_params) == 3 * 3 * 2 and len(spec.input_params) == 3
    assert len({p.name for p in spec.weight_params}) == len(spec.weight_params)
    assert [p.name for p in build_circuit(QuantumConfig(n_qubits=3, reps=1)).weight_params] == \
        [p.name for p in spec.weight_params[:6]]  # block 0 keeps the names of one-block circuits
    layer = QuantumLayer(config, engine="statevector", seed=1)
    x = torch.rand(4, 3, dtype=torch.float64) * 3
    np.testing.assert_allclose(layer(x).detach().numpy(),
                               qiskit_expectations(spec, x.numpy(), layer.weight.detach().numpy()), atol=1e-10)


def test_zz_observables_give_more_outputs_than_qubits():
    assert pauli_observables(4, "zz") == ("IIZZ", "IZZI", "ZZII")
    layer = QuantumLayer(QuantumConfig(n_qubits=4, observables=pauli_observables(4, "z+zz")), seed=0)
    assert layer.n_outputs == 7
    x = torch.rand(3, 4, dtype=torch.float64) * 3
    np.testing.assert_allclose(layer(x).detach().numpy(),
                               qiskit_expectations(layer.spec, x.numpy(), layer.weight.detach().numpy()), atol=1e-10)
    with pytest.raises(ValueError, match="at least 2 qubits"):
        pauli_observables(1, "zz")


@pytest.mark.parametrize("kind", ["binomial", "gaussian", "pathwise"])
def test_shot_noise_has_the_binomial_mean_and_variance(kind):
    shots, repeats = 64, 20000
    mean = torch.tensor([-0.9, -0.3, 0.0, 0.5, 0.95], dtype=torch.float64).repeat(repeats, 1)
    estimates = sample_estimates(mean, shots, kind, torch.Generator().manual_seed(0))
    expected_var = (1 - mean[0] ** 2) / shots
    # standard errors: of the mean sqrt(var / repeats), of the variance about var * sqrt(2 / repeats)
    assert torch.all((estimates.mean(0) - mean[0]).abs() < 4 * (expected_var / repeats).sqrt())
    assert torch.all((estimates.var(0) - expected_var).abs() < 4 * expected_var * (2 / repeats) ** 0.5 + 1e-12)
    if kind == "binomial":  # a mean of 64 ±1 outcomes takes values on a grid of 2/64
        grid = (estimates + 1) * shots / 2
        assert torch.allclose(grid, grid.round())


def test_training_noise_is_off_at_evaluation_unless_asked_and_passes_the_exact_gradient():
    labels = ("IZ", "ZZ")
    noise = ExpectationNoise(NoiseModel(shots=100, readout_error=0.1, depolarizing=0.2), labels)
    e = torch.tensor([[0.5, -0.4]], dtype=torch.float64, requires_grad=True)
    noise.train()
    noisy = noise(e)
    assert not torch.allclose(noisy, e)
    noisy.sum().backward()
    attenuation = torch.tensor([0.8 * 0.8, 0.8 * 0.8**2], dtype=torch.float64)  # (1-λ)(1-2p)^weight
    torch.testing.assert_close(e.grad[0], attenuation)  # straight through the sampling
    noise.eval()
    assert torch.equal(noise(e), e)
    at_eval = ExpectationNoise(NoiseModel(readout_error=0.1, depolarizing=0.2), labels, at_eval=True).eval()
    torch.testing.assert_close(at_eval(e), e * attenuation)


def test_pathwise_shot_noise_differentiates_through_its_variance():
    """d/dm [m + sqrt((1 - m^2) / N) ε] = 1 - m ε / sqrt(N (1 - m^2)): the gradient knows that outputs near ±1
    are measured with less noise, which the straight-through kinds (gradient 1) cannot say."""
    shots, labels = 100, ("IZ", "ZZ")
    noise = ExpectationNoise(NoiseModel(shots=shots, kind="pathwise"), labels,
                             generator=torch.Generator().manual_seed(3)).train()
    e = torch.tensor([[0.6, -0.8], [0.1, 0.0]], dtype=torch.float64, requires_grad=True)
    noisy = noise(e)
    noisy.sum().backward()
    std = ((1 - e.detach() ** 2) / shots).sqrt()
    eps = (noisy.detach() - e.detach()) / std
    torch.testing.assert_close(e.grad, 1 - e.detach() * eps / (shots * (1 - e.detach() ** 2)).sqrt())
    assert not torch.allclose(e.grad, torch.ones_like(e.grad))
    assert torch.equal(noise.eval()(e), e)  # off at evaluation, like the other kinds
    at_one = torch.tensor([[1.0, -1.0]], dtype=torch.float64, requires_grad=True)
    noise.train()(at_one).sum().backward()
    assert torch.isfinite(at_one.grad).all()  # the floor keeps the gradient finite at |<O>| = 1


def test_noise_aware_model_trains_noisy_and_evaluates_exact():
    torch.manual_seed(0)
    exact = HybridNet(replace(SMALL, quantum_head="dressed"), 1, 2)
    noisy = HybridNet(replace(SMALL, quantum_head="dressed", q_train_shots=32), 1, 2)
    noisy.load_state_dict(exact.state_dict())  # the noise adds no parameters
    x = torch.rand(4, 1, 28, 28)
    noisy.train()
    torch.manual_seed(1)
    a = noisy(x)
    torch.manual_seed(2)
    assert not torch.allclose(a, noisy(x))  # a new draw every forward pass
    exact.load_state_dict(noisy.state_dict())  # the BatchNorm statistics those passes collected
    exact.eval(), noisy.eval()
    with torch.no_grad():
        torch.testing.assert_close(noisy(x), exact(x))


def test_config_refuses_bad_noise_settings_naming_the_flag():
    with pytest.raises(ValueError, match="--q-train-shots"):
        TrainConfig(q_train_shots=-1)
    with pytest.raises(ValueError, match="--q-readout-error"):
        TrainConfig(q_readout_error=0.7)
    with pytest.raises(ValueError, match="--q-reupload"):
        TrainConfig(q_reupload=0)


def _slot_step(layer: str, scale: float) -> tuple[list[dict], torch.Tensor]:
    """One ERM update of a small dressed network: the optimizer's groups and how far the slot moved."""
    from hybrid.algorithms import make_algorithm

    torch.manual_seed(0)
    cfg = TrainConfig(width_mult=0.35, stem_stride=2, embed_dim=16, quantum_head="dressed", feature_map="angle",
                      quantum_layer=layer, q_lr_scale=scale, algorithm="erm", shift=False)
    network = HybridNet(cfg.model_config(), 1, 2)
    algorithm = make_algorithm("erm", network, cfg, n_domains=1, total_steps=10)
    slot = network.slot_parameters()
    before = [p.detach().clone() for p in slot]
    x, y = torch.rand(8, 1, 28, 28), torch.tensor([0, 1] * 4)
    algorithm.update(x, y, torch.zeros(8, dtype=torch.long), 0)
    moved = torch.cat([(p.detach() - b).abs().flatten() for p, b in zip(slot, before)]) if slot else torch.zeros(0)
    return algorithm.optimizer.param_groups, moved


@pytest.mark.parametrize("layer", QUANTUM_LAYERS)
def test_slot_learning_rate_scales_the_circuit_or_its_twin_only(layer):
    groups, moved = _slot_step(layer, 30.0)
    if layer == "none":  # no slot parameters: one group, as without the flag
        assert len(groups) == 1 and moved.numel() == 0
        return
    assert len(groups) == 2 and groups[1]["max_lr"] == pytest.approx(30 * groups[0]["max_lr"])
    assert sum(p.numel() for p in groups[1]["params"]) == moved.numel() > 0
    _, moved_at_lr = _slot_step(layer, 1.0)
    # Adam's first step moves each parameter by about its learning rate: 30x further, whatever the gradient
    ratio = moved.mean() / moved_at_lr.mean()
    assert 20 < ratio < 31


def test_slot_learning_rate_of_one_keeps_a_single_group_and_bad_values_are_refused():
    groups, _ = _slot_step("pqc", 1.0)
    assert len(groups) == 1  # checkpoints of earlier runs (one group) still resume
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="--q-lr-scale"):
            TrainConfig(q_lr_scale=bad)


def test_cli_flags_choose_head_and_layer():
    import argparse

    from hybrid.cli import add_config_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    cfg = config_from_args(parser.parse_args(["--quantum-head", "dressed", "--quantum-layer", "classical_twin",
                                              "--q-observables", "z+zz", "--q-train-shots", "256"]))
    assert (cfg.quantum_head, cfg.quantum_layer, cfg.q_observables, cfg.q_train_shots) == \
        ("dressed", "classical_twin", "z+zz", 256)
    with pytest.raises(SystemExit):
        parser.parse_args(["--quantum-head", "sideways"])


@pytest.mark.parametrize("feature_map", ["zz", "angle"])
def test_wide_circuits_run_gate_by_gate_and_match_qiskit(feature_map):
    from hybrid.quantum.segments import GateByGate
    from hybrid.quantum.statevector import FUSE_MAX_QUBITS

    config = QuantumConfig(n_qubits=FUSE_MAX_QUBITS + 2, feature_map=feature_map, reps=1, reupload=2)
    layer = QuantumLayer(config, engine="statevector", seed=3)
    assert any(isinstance(s, GateByGate) for s in layer.program.segments)
    x = torch.rand(3, config.n_qubits, dtype=torch.float64) * 3
    np.testing.assert_allclose(layer(x).detach().numpy(),
                               qiskit_expectations(layer.spec, x.numpy(), layer.weight.detach().numpy()), atol=1e-10)
    x.requires_grad_()
    layer(x).sum().backward()
    assert x.grad.abs().sum() > 0 and layer.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("layer", QUANTUM_LAYERS)
def test_angle_norm_normalises_the_slot_inputs_for_every_layer(layer):
    torch.manual_seed(0)
    model = HybridNet(replace(SMALL, quantum_head="dressed", feature_map="angle", quantum_layer=layer,
                              q_angle_norm=True), 1, 2)
    x = torch.rand(16, 1, 28, 28)
    model(x)  # a training-mode pass moves the angle BatchNorm's statistics
    assert model.angle_norm.num_batches_tracked.item() == 1
    model.eval()
    with torch.no_grad():
        f = model.features(x)
        norm = model.angle_norm
        z = (model.project(f) - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps) * norm.weight + norm.bias
        torch.testing.assert_close(model.slot_inputs(f), z)
        angles = model.quantum_angles(f)
    assert angles.min() >= 0 and angles.max() <= torch.pi
    assert model.parameter_counts()["head"] == sum(p.numel() for name in ("project", "angle_norm", "classifier")
                                                   for p in getattr(model, name).parameters())
    without = HybridNet(replace(SMALL, quantum_head="dressed", quantum_layer=layer), 1, 2)
    assert without.angle_norm is None and "angle_norm.weight" not in without.state_dict()  # old checkpoints load


@pytest.mark.parametrize("layer", ["pqc", "classical_twin"])
def test_the_arctan_angle_map_keeps_far_inputs_apart_where_tanh_saturates(layer):
    torch.manual_seed(0)
    config = replace(SMALL, quantum_head="dressed", feature_map="angle", quantum_layer=layer)
    tanh_model, arctan_model = HybridNet(config, 1, 2), HybridNet(replace(config, q_angle_map="arctan"), 1, 2)
    arctan_model.load_state_dict(tanh_model.state_dict())  # same weights: only the angle map differs
    f = torch.randn(32, 16)
    with torch.no_grad():
        z = tanh_model.slot_inputs(f)
        torch.testing.assert_close(tanh_model.quantum_angles(f), (torch.tanh(z) + 1) * torch.pi / 2)
        torch.testing.assert_close(arctan_model.quantum_angles(f), torch.pi / 2 + torch.atan(z))
        assert not torch.allclose(tanh_model.layer_outputs(f), arctan_model.layer_outputs(f))  # the slot reads them
    far = torch.tensor([2.0, 4.0])  # one RY's <Z> = cos(angle): tanh's pair is 0.0016 apart, arctan's 0.076
    tanh_z, arctan_z = torch.cos((torch.tanh(far) + 1) * torch.pi / 2), torch.cos(torch.pi / 2 + torch.atan(far))
    assert (tanh_z[0] - tanh_z[1]).abs() < 0.002 and (arctan_z[0] - arctan_z[1]).abs() > 0.07
    torch.testing.assert_close(arctan_z, -far / torch.sqrt(1 + far**2))
    with pytest.raises(ValueError, match="--q-angle-map must be one of tanh, arctan"):
        TrainConfig(q_angle_map="sigmoid")


def test_adabn_re_estimates_the_angle_norm_without_running_the_circuit():
    from hybrid.batchnorm import use_batch_stats
    from hybrid.tta import make_tta

    torch.manual_seed(0)
    model = HybridNet(replace(SMALL, quantum_head="dressed", feature_map="angle", q_angle_norm=True), 1, 2).eval()
    target = 0.3 + 0.5 * torch.rand(32, 1, 28, 28)
    with torch.no_grad():  # one chunk: every BatchNorm normalises with this batch's statistics, then keeps them
        batch_mode = use_batch_stats(deepcopy(model))
        z = batch_mode.project(batch_mode.features(target))
    calls = []
    model.quantum.register_forward_hook(lambda *args: calls.append(1))
    tta = make_tta("adabn", model, stats_batch_size=32)
    tta.prepare(target)
    assert not calls  # the statistics pass stops in front of the (possibly remote) circuit
    torch.testing.assert_close(model.angle_norm.running_mean, z.mean(0))
    torch.testing.assert_close(model.angle_norm.running_var, z.var(0, unbiased=True))


@pytest.mark.parametrize("layer", ["pqc", "none"])
def test_slot_input_dropout_reaches_the_dressed_head_in_training_only(layer):
    """With --q-input-dropout the slot reads dropout(f): two training passes of one batch differ, and in
    eval mode the head is the same function as without it (the weights of one model serve both)."""
    torch.manual_seed(0)
    plain = HybridNet(replace(SMALL, quantum_head="dressed", quantum_layer=layer, dropout=0.5), 1, 2)
    dropped = HybridNet(replace(plain.config, q_input_dropout=True), 1, 2)
    dropped.load_state_dict(plain.state_dict())
    f = torch.randn(6, SMALL.embed_dim)
    plain.train(), dropped.train()
    torch.testing.assert_close(plain.head(f), plain.head(f))  # no dropout anywhere in the dressed head
    first, second = dropped.head(f), dropped.head(f)
    assert not torch.allclose(first, second)
    plain.eval(), dropped.eval()
    torch.testing.assert_close(dropped.head(f), plain.head(f))
