"""--q-shot-noise marginal: the joint shots' expected extra cross-entropy, computed instead of drawn."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hybrid.algorithms import make_algorithm
from hybrid.config import TrainConfig
from hybrid.model import HybridNet
from hybrid.quantum import ExpectationNoise, NoiseModel, QuantumConfig, QuantumLayer

LABELS = ("IIZ", "IZI", "ZII", "IZZ", "ZZI")
SMALL = dict(width_mult=0.35, stem_stride=2, embed_dim=16, quantum_head="dressed", feature_map="angle",
             q_observables="z+zz", n_qubits=3)


def _states(batch: int = 3) -> tuple[QuantumLayer, torch.Tensor]:
    layer = QuantumLayer(QuantumConfig(n_qubits=3, feature_map="angle", observables=LABELS), seed=0)
    return layer, torch.linspace(0.2, 2.9, batch * 3, dtype=torch.float64).reshape(batch, 3)


def _readout(classes: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return (torch.randn(classes, len(LABELS), generator=generator, dtype=torch.float64) * 3,
            torch.randn(classes, generator=generator, dtype=torch.float64))


def _drawn_logits(values, probabilities, readout, bias, shots, readout_error=0.0, draws=4000):
    """Logits read from `draws` joint shot estimates: (draws, B, classes)."""
    noise = ExpectationNoise(NoiseModel(shots=shots, kind="joint", readout_error=readout_error), LABELS,
                             generator=torch.Generator().manual_seed(0)).train()
    readout_factor = (1 - 2 * readout_error) ** noise.signs.weights
    # the joint kind keeps the exact mean and adds the draws' deviation; the logits' covariance is the draws'
    return torch.stack([noise(values / readout_factor, probabilities) @ readout.T + bias for _ in range(draws)])


@pytest.mark.parametrize("readout_error", [0.0, 0.08])
def test_the_penalty_is_half_the_trace_of_the_cross_entropy_hessian_times_the_drawn_logit_covariance(readout_error):
    layer, x = _states()
    values, probabilities = (t.detach() for t in layer.with_probabilities(x))
    readout, bias = _readout(classes=3)
    shots = 64
    noise = ExpectationNoise(NoiseModel(shots=shots, kind="marginal", readout_error=readout_error), LABELS).train()
    logits = values @ readout.T + bias
    penalty = noise.shot_penalty(probabilities, logits, readout)
    drawn = _drawn_logits(values, probabilities, readout, bias, shots, readout_error)
    p = logits.softmax(dim=1)
    hessians = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    centred = drawn - drawn.mean(0)
    covariances = torch.einsum("dbk,dbl->bkl", centred, centred) / len(drawn)
    expected = 0.5 * torch.einsum("bkl,blk->b", hessians, covariances).mean()
    assert penalty.item() > 0 and penalty.item() == pytest.approx(expected.item(), rel=0.08)


def test_the_penalty_predicts_the_extra_cross_entropy_of_drawn_shots():
    layer, x = _states(batch=4)
    values, probabilities = (t.detach() for t in layer.with_probabilities(x))
    readout, bias = _readout()
    labels = torch.tensor([0, 1, 1, 0])
    shots = 256
    noise = ExpectationNoise(NoiseModel(shots=shots, kind="marginal"), LABELS).train()
    exact_logits = values @ readout.T + bias
    drawn = _drawn_logits(values, probabilities, readout, bias, shots)
    extra = torch.stack([F.cross_entropy(z, labels) for z in drawn]).mean() - F.cross_entropy(exact_logits, labels)
    assert extra.item() == pytest.approx(noise.shot_penalty(probabilities, exact_logits, readout).item(), rel=0.15)


def test_the_penalty_is_differentiable_through_the_state_and_the_readout():
    layer, x = _states(batch=2)
    readout, bias = _readout()
    noise = ExpectationNoise(NoiseModel(shots=100, kind="marginal", readout_error=0.05), LABELS).train()

    def penalty(angles, weights):
        values, probabilities = layer.with_probabilities(angles, detach=False)
        return noise.shot_penalty(probabilities, values @ weights.T + bias, weights)

    assert torch.autograd.gradcheck(penalty, (x.clone().requires_grad_(True), readout.clone().requires_grad_(True)))
    _, detached = layer.with_probabilities(x)
    assert not detached.requires_grad  # the joint kind's draws still get detached probabilities


def test_the_marginal_kind_passes_the_attenuated_exact_values_and_refuses_evaluation():
    values = torch.rand(2, len(LABELS), dtype=torch.float64)
    noise = ExpectationNoise(NoiseModel(shots=64, kind="marginal", attenuation=(0.9,) * 5), LABELS).train()
    assert noise.marginal and not noise.needs_probabilities
    torch.testing.assert_close(noise(values), values * 0.9)  # no draws: the same values every call
    assert not noise.eval().marginal and torch.equal(noise(values), values)
    with pytest.raises(ValueError, match="training objective"):
        ExpectationNoise(NoiseModel(shots=64, kind="marginal"), LABELS, at_eval=True)


def test_a_marginal_noise_aware_network_trains_deterministically_with_the_penalty_and_evaluates_exact():
    cfg = TrainConfig(**SMALL, q_train_shots=64, q_shot_noise="marginal", algorithm="erm", aux_weight=1.0)
    torch.manual_seed(0)
    network = HybridNet(cfg.model_config(), 1, 2)
    exact = HybridNet(TrainConfig(**SMALL).model_config(), 1, 2)
    exact.load_state_dict(network.state_dict())
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 0, 1])
    network.train(), exact.train()
    f = network.features(x)
    logits, penalty = network.head_terms(f)
    torch.testing.assert_close(logits, exact.head(f))  # no draws in the logits
    assert penalty.item() > 0
    penalty.backward()
    assert network.quantum.weight.grad.abs().sum() > 0  # the circuit learns where its shots disturb less
    assert network.project.weight.grad.abs().sum() > 0
    logs = make_algorithm("erm", network, cfg, n_domains=1, total_steps=2).update(x, y, torch.zeros(4).long(), 0)
    assert logs["shot_penalty"] > 0 and logs["cls_loss"] > 0
    network.eval()
    assert network.head_terms(network.features(x))[1] is None


@pytest.mark.parametrize("change, message", [
    (dict(quantum_head="concat"), "dressed"),
    (dict(quantum_layer="classical_twin"), "dressed"),
    (dict(q_noise_at_eval=True), "training objective"),
    (dict(q_noise_channel="density", q_noise_device="aer_noisy:fake_manila"), "training objective"),
])
def test_the_marginal_kind_says_where_it_does_not_apply(change, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**(SMALL | dict(q_train_shots=64, q_shot_noise="marginal") | change))
