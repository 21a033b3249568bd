"""Training algorithms: every registered one builds, updates and predicts; DANN's pieces; resume."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from hybrid.algorithms import (ALGORITHMS, Algorithm, dann_lambda, distillation_loss, grad_reverse, make_algorithm,
                               scale_gradient)
from hybrid.config import TrainConfig
from hybrid.model import HybridNet

CFG = TrainConfig(width_mult=0.35, stem_stride=2, embed_dim=16, input_size=16, lr=1e-2, quantum=False)
N_DOMAINS = 3


def build(name: str, cfg: TrainConfig = CFG, n_domains: int = N_DOMAINS, seed: int = 0) -> Algorithm:
    torch.manual_seed(seed)
    network = HybridNet(cfg.model_config(), in_channels=1, n_classes=2)
    return make_algorithm(name, network, cfg, n_domains=n_domains, total_steps=10)


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(8, 1, 16, 16, generator=g)
    y = torch.tensor([0, 1] * 4)
    x[y == 1, :, 4:12, 4:12] += 0.5  # learnable
    return x, y, torch.arange(8) % N_DOMAINS


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_algorithm_builds_updates_and_predicts(name):
    algorithm = build(name)
    assert algorithm.name == name and isinstance(algorithm, torch.nn.Module)
    before = {k: v.clone() for k, v in algorithm.network.state_dict().items()}
    x, y, domains = batch()
    logs = [algorithm.update(x, y, domains, step) for step in range(3)]
    for log in logs:
        assert {"loss", "cls_loss"} <= set(log) and all(isinstance(v, float) for v in log.values())
        assert all(math.isfinite(v) for v in log.values())
    changed = [k for k, v in algorithm.network.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("encoder") for k in changed) and any(k.startswith("classifier") for k in changed)
    algorithm.eval()
    logits = algorithm.predict(x)
    assert logits.shape == (8, 2)
    torch.testing.assert_close(logits, algorithm.network(x))  # what is saved and evaluated is the network
    assert algorithm.learning_rate() > 0


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_algorithm_resumes_exactly(name):
    x, y, domains = batch()
    straight = build(name)
    torch.manual_seed(1)
    for step in range(4):
        straight.update(x, y, domains, step)
    first = build(name)
    torch.manual_seed(1)
    for step in range(2):
        first.update(x, y, domains, step)
    dropout_rng = torch.get_rng_state()
    resumed = build(name, seed=5)  # different initial weights: everything must come from the state
    resumed.load_training_state(first.training_state())
    torch.set_rng_state(dropout_rng)  # dropout draws from the global generator
    for step in range(2, 4):
        resumed.update(x, y, domains, step)
    for k, v in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, msg=k)


def test_unknown_algorithm_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid names are: .*dann.*erm"):
        build("coral_typo")


def test_dann_needs_two_domains():
    with pytest.raises(ValueError, match="at least two training domains"):
        build("dann", n_domains=1)
    assert build("erm", n_domains=1).update(*batch(), step=0)["loss"] > 0


def test_gradient_reversal_is_identity_forward_and_negates_backward():
    x = torch.randn(5, 3, requires_grad=True)
    y = grad_reverse(x, 0.7)
    assert torch.equal(y, x)
    upstream = torch.randn(5, 3)
    y.backward(upstream)
    torch.testing.assert_close(x.grad, -0.7 * upstream)


def test_dann_schedule():
    assert dann_lambda(0.0) == 0.0
    assert dann_lambda(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert dann_lambda(0.5, max_lambda=0.3) == pytest.approx(0.3 * (2 / (1 + math.exp(-5)) - 1))
    values = [dann_lambda(p / 10) for p in range(11)]
    assert values == sorted(values)
    assert dann_lambda(2.0) == dann_lambda(1.0)  # clamped


def test_dann_reverses_the_discriminator_gradient_into_the_embedding():
    dann = build("dann", replace(CFG, dann_weight=1.0))
    dann.eval()  # deterministic features (no dropout, running BN stats)
    x, _, domains = batch()
    net = dann.network

    def embed_grad(lam, reverse=True):
        dann.zero_grad()
        f = net.features(x)
        d = dann.discriminator(grad_reverse(f, lam) if reverse else f)
        torch.nn.functional.cross_entropy(d, domains).backward()
        return net.embed[0].weight.grad.clone()

    g_pos, g_small = embed_grad(1.0), embed_grad(0.25)
    torch.testing.assert_close(g_small, 0.25 * g_pos)  # scaled by lambda...
    torch.testing.assert_close(embed_grad(1.0, reverse=False), -g_pos)  # ...and reversed in sign


def test_dann_logs_its_schedule_and_domain_accuracy():
    dann = build("dann", replace(CFG, dann_max_lambda=0.3))
    log = dann.update(*batch(), step=5)
    assert log["lambda"] == pytest.approx(dann_lambda(0.5, 0.3))
    assert 0.0 <= log["domain_acc"] <= 1.0 and log["domain_loss"] > 0
    assert log["loss"] == pytest.approx(log["cls_loss"] + CFG.dann_weight * log["domain_loss"], rel=1e-5)


def test_checkpoint_written_before_algorithms_resumes():
    """last.pt of older runs kept the discriminator inside `model`; it maps onto network + discriminator."""
    source = build("dann")
    source.update(*batch(), step=0)  # optimizer moments to carry over
    old_model = {k.removeprefix("network."): v for k, v in source.state_dict().items()}
    legacy = {"model": old_model, "optimizer": source.optimizer.state_dict(),
              "scheduler": source.scheduler.state_dict()}
    resumed = build("dann", seed=3)
    resumed.load_training_state(legacy)
    for k, v in source.state_dict().items():
        assert torch.equal(resumed.state_dict()[k], v), k
    moments = resumed.optimizer.state_dict()["state"]
    assert moments and all(torch.equal(s["exp_avg"], source.optimizer.state_dict()["state"][i]["exp_avg"])
                           for i, s in moments.items())


def test_model_config_defaults_match_the_training_config():
    from hybrid.config import ModelConfig

    assert ModelConfig() == TrainConfig().model_config()


def test_a_new_method_is_one_class_whose_hyperparameters_need_no_config_field():
    from hybrid.algorithms import ERM, register_algorithm

    @register_algorithm("scaled_erm_for_test")
    class ScaledERM(ERM):
        HPARAMS = {"scale": 1.0}

        def objective(self, x, y, domains, step):
            loss = self.hp("scale") * torch.nn.functional.cross_entropy(self.network(x), y)
            return loss, {"loss": loss.item(), "cls_loss": loss.item()}

    try:
        default = build("scaled_erm_for_test").update(*batch(), step=0)["loss"]
        doubled = build("scaled_erm_for_test", replace(CFG, algorithm_hparams="scale=2")).update(*batch(), step=0)
        assert doubled["loss"] == pytest.approx(2 * default, rel=1e-5)
        with pytest.raises(ValueError, match=r"hyperparameters are: scale \(default 1.0\)"):
            build("scaled_erm_for_test", replace(CFG, algorithm_hparams="shift=2"))
        with pytest.raises(ValueError, match="expects a number"):
            build("scaled_erm_for_test", replace(CFG, algorithm_hparams="scale=big"))
        with pytest.raises(ValueError, match="hyperparameters are: none"):
            build("erm", replace(CFG, algorithm_hparams="scale=2"))
    finally:
        del ALGORITHMS["scaled_erm_for_test"]


def test_coral_distance_is_zero_for_equal_statistics_and_grows_with_a_shift():
    from hybrid.algorithms import coral_distance

    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, 5, generator=g)
    assert coral_distance(a, a.flip(0)) < 1e-10  # the same set in another order
    assert coral_distance(a, a + 1.0) > 0.9 and coral_distance(a, 3 * a) > coral_distance(a, 1.5 * a) > 0


def test_mixstyle_mixes_statistics_only_in_its_training_objective():
    from hybrid.algorithms import mix_style

    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, 5, 5, generator=g) * torch.arange(1, 7).view(6, 1, 1, 1)
    torch.manual_seed(0)
    mixed = mix_style(x, 0.1)
    assert mixed.shape == x.shape and not torch.allclose(mixed, x)
    # the content (normalized map) of every image is kept; only its statistics move
    normed = lambda t: (t - t.mean(dim=(2, 3), keepdim=True)) / t.std(dim=(2, 3), keepdim=True)  # noqa: E731
    torch.testing.assert_close(normed(mixed), normed(x), atol=1e-3, rtol=0)
    algorithm = build("mixstyle", replace(CFG, algorithm_hparams="mix_prob=1", dropout=0.0))
    xb, y, domains = batch()
    algorithm.train()
    plain = algorithm.network(xb)
    algorithm._mixing = True
    torch.manual_seed(0)
    assert not torch.allclose(algorithm.network(xb), plain)  # the hooks act while mixing is on
    algorithm._mixing = False
    algorithm.objective(xb, y, domains, 0)
    assert algorithm._mixing is False  # and are off again after the objective
    algorithm.eval()
    torch.testing.assert_close(algorithm.predict(xb), algorithm.network(xb))


def test_randconv_keeps_shape_range_and_each_images_statistics():
    from hybrid.algorithms import random_convolution

    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 16, 16, generator=g) * 0.5 + 0.25
    torch.manual_seed(0)
    out = random_convolution(x, 7)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1 and not torch.allclose(out, x)
    torch.testing.assert_close(out.mean(dim=(2, 3)), x.mean(dim=(2, 3)), atol=0.02, rtol=0)


@pytest.mark.parametrize("name", ["coral", "mixstyle", "randconv"])
def test_new_algorithms_compose_with_shifts_and_the_quantum_layer(name, tmp_path, data_root):
    import json

    from hybrid import train

    out = tmp_path / name
    assert train.main(["--algorithm", name, "--epochs", "1", "--max-train-samples", "64", "--width-mult", "0.1",
                       "--stem-stride", "2", "--input-size", "16", "--embed-dim", "16", "--batch-size", "32",
                       "--n-bootstrap", "0", "--eval-max-samples", "32", "--threads", "1", "--no-figures", "--quiet",
                       "--data-root", str(data_root), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["run"]["algorithm"] == name and report["config"]["quantum"] and report["config"]["shift"]
    assert all(0 <= d["auc"] <= 1 for d in report["domains"].values())


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_label_smoothing_sets_every_algorithms_class_targets(name):
    """(1 - e) one-hot + e uniform: a perfectly separated batch keeps a loss, and e = 0 is plain cross-entropy."""
    logits = torch.tensor([[8.0, -8.0], [-8.0, 8.0]])
    y = torch.tensor([0, 1])
    plain = build(name).class_loss(logits, y)
    torch.testing.assert_close(plain, torch.nn.functional.cross_entropy(logits, y))
    smoothed = build(name, replace(CFG, label_smoothing=0.1)).class_loss(logits, y)
    log_p = torch.log_softmax(logits, dim=1)
    expected = -(0.95 * log_p[[0, 1], [0, 1]] + 0.05 * log_p[[0, 1], [1, 0]]).mean()
    torch.testing.assert_close(smoothed, expected)
    assert smoothed > 10 * plain  # the margin stops paying once the targets are met


def test_label_smoothing_is_checked_when_a_config_is_made():
    for bad in (-0.1, 0.6):
        with pytest.raises(ValueError, match="label-smoothing"):
            TrainConfig(label_smoothing=bad)


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_aux_weight_adds_a_training_only_embedding_classifier(name):
    """Deep supervision: W x the loss of a linear classifier on the embedding joins every algorithm's class loss;
    the classifier trains with the algorithm but is not part of the network, which still predicts alone."""
    x, y, domains = batch()
    plain = build(name)
    assert plain.aux_classifier is None and "aux_loss" not in plain.update(x, y, domains, 0)
    algorithm = build(name, replace(CFG, aux_weight=0.5))
    assert all(not key.startswith("aux") for key in algorithm.network.state_dict())
    algorithm.eval()  # no dropout: the loss is the two cross-entropies exactly
    f = algorithm.network.features(x)
    loss, logs = algorithm.head_loss(f, y)
    head = torch.nn.functional.cross_entropy(algorithm.network.head(f), y)
    aux = torch.nn.functional.cross_entropy(algorithm.aux_classifier(f), y)
    torch.testing.assert_close(loss, head + 0.5 * aux)
    assert logs == pytest.approx({"cls_loss": head.item(), "aux_loss": aux.item()})
    algorithm.train()
    before = algorithm.aux_classifier.weight.detach().clone()
    assert "aux_loss" in algorithm.update(x, y, domains, 0)
    assert not torch.equal(before, algorithm.aux_classifier.weight)
    algorithm.eval()
    with torch.no_grad():
        torch.testing.assert_close(algorithm.predict(x), algorithm.network(x))


def test_aux_weight_is_checked_when_a_config_is_made():
    with pytest.raises(ValueError, match="aux-weight"):
        TrainConfig(aux_weight=-0.1)


def test_scale_gradient_passes_the_value_and_a_share_of_the_gradient():
    for scale in (0.0, 0.1, 1.0):
        x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
        out = scale_gradient(x, scale)
        torch.testing.assert_close(out, x.detach())
        if out.requires_grad:
            (out * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
        grad = x.grad if x.grad is not None else torch.zeros(3)
        torch.testing.assert_close(grad, scale * torch.tensor([1.0, 2.0, 3.0]))


def _embedding_gradients(algorithm: Algorithm, x, y) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradient head_loss sends into the embedding, and those of the head's and the aux classifier's losses
    alone (eval mode: no dropout draws, so the three are comparable)."""
    algorithm.eval()
    f = algorithm.network.features(x).detach()

    def gradient(loss_of) -> torch.Tensor:
        leaf = f.clone().requires_grad_()
        loss_of(leaf).backward()
        return leaf.grad if leaf.grad is not None else torch.zeros_like(f)

    ce = torch.nn.functional.cross_entropy
    return (gradient(lambda e: algorithm.head_loss(e, y)[0]), gradient(lambda e: ce(algorithm.network.head(e), y)),
            gradient(lambda e: ce(algorithm.aux_classifier(e), y)))


@pytest.mark.parametrize("scale", [0.0, 0.1])
def test_head_grad_scale_lets_only_that_share_of_the_heads_gradient_reach_the_encoder(scale):
    """--head-grad-scale: the encoder gets the aux classifier's gradient and `scale` x the head's; the head still
    learns from its whole loss (at 0 it trains on detached embeddings, quantum transfer learning in one run)."""
    x, y, domains = batch()
    cfg = replace(CFG, quantum=True, quantum_head="dressed", aux_weight=1.0, head_grad_scale=scale)
    algorithm = build("dann", cfg)
    total, head, aux = _embedding_gradients(algorithm, x, y)
    assert head.abs().sum() > 0 and aux.abs().sum() > 0
    torch.testing.assert_close(total, aux + scale * head)
    algorithm.train()
    slot = [p.detach().clone() for p in algorithm.network.slot_parameters()]
    algorithm.update(x, y, domains, 0)
    assert all(not torch.equal(a, b) for a, b in zip(slot, algorithm.network.slot_parameters()))
    joint = build("dann", replace(cfg, head_grad_scale=1.0))
    total, head, aux = _embedding_gradients(joint, x, y)
    torch.testing.assert_close(total, aux + head)


def test_a_detached_head_needs_an_aux_classifier_and_the_scale_is_checked():
    with pytest.raises(ValueError, match="--head-grad-scale 0 .* --aux-weight"):
        TrainConfig(head_grad_scale=0.0)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="head-grad-scale"):
            TrainConfig(head_grad_scale=bad, aux_weight=1.0)
    assert TrainConfig(head_grad_scale=0.0, aux_weight=1.0).head_grad_scale == 0.0
    with pytest.raises(ValueError, match="--init-from RUN --algorithm erm"):  # DANN alone would move the encoder
        TrainConfig(head_grad_scale=0.0, init_from="runs/x/seed{seed}", algorithm="dann")


def test_distillation_loss_is_zero_at_the_teacher_and_trains_only_the_student():
    teacher = torch.tensor([[2.0, -1.0], [0.5, 0.3]], requires_grad=True)
    assert distillation_loss(teacher.detach().clone(), teacher, 2.0).item() == pytest.approx(0.0, abs=1e-7)
    student = torch.tensor([[0.0, 0.0], [1.0, -1.0]], requires_grad=True)
    loss = distillation_loss(student, teacher, 4.0)
    p = torch.softmax(teacher.detach() / 4.0, dim=1)
    expected = (p * (p.log() - torch.log_softmax(student.detach() / 4.0, dim=1))).sum(1).mean() * 16.0
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None


def test_head_distill_pulls_only_the_head_towards_the_aux_classifier():
    """--head-distill W: the head's loss gains W x T^2 KL(aux(f) || head(f)); with a detached head the encoder's
    gradient and the aux classifier's own gradient are exactly those without it."""
    x, y, domains = batch()
    cfg = replace(CFG, quantum=True, quantum_head="dressed", aux_weight=1.0, head_grad_scale=0.0)
    plain, distilled = build("dann", cfg), build("dann", replace(cfg, head_distill=0.5, distill_temperature=3.0))
    distilled.load_state_dict(plain.state_dict())
    for algorithm in (plain, distilled):
        algorithm.eval()  # no dropout draws: the losses are comparable
    f = plain.network.features(x).detach()
    base, logs = plain.head_loss(f, y)
    loss, logs = distilled.head_loss(f, y)
    term = distillation_loss(distilled.network.head(f), distilled.aux_classifier(f), 3.0)
    torch.testing.assert_close(loss, base + 0.5 * term)
    assert logs["distill_loss"] == pytest.approx(term.item()) and term.item() > 0
    torch.testing.assert_close(_embedding_gradients(distilled, x, y)[0], _embedding_gradients(plain, x, y)[0])
    for algorithm in (plain, distilled):
        algorithm.zero_grad()
        algorithm.head_loss(f, y)[0].backward()
    torch.testing.assert_close(distilled.aux_classifier.weight.grad, plain.aux_classifier.weight.grad)
    assert not torch.equal(distilled.network.project.weight.grad, plain.network.project.weight.grad)


def test_head_distill_needs_the_aux_classifier_as_its_teacher():
    with pytest.raises(ValueError, match="--head-distill .* --aux-weight"):
        TrainConfig(head_distill=1.0)
    with pytest.raises(ValueError, match="distill-temperature"):
        TrainConfig(head_distill=1.0, aux_weight=1.0, distill_temperature=0.0)
    assert TrainConfig(head_distill=1.0, aux_weight=1.0).distill_temperature == 2.0


def test_a_head_refit_without_a_network_to_start_from_is_refused_before_any_work(tmp_path):
    from hybrid.train import train

    cfg = replace(CFG, head_grad_scale=0.0, aux_weight=0.0, algorithm="erm")
    with pytest.raises(ValueError, match="--init-from RUN"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_a_head_refit_trains_the_head_and_leaves_the_encoder_exactly_as_it_was():
    """--init-from RUN --algorithm erm --head-grad-scale 0 --aux-weight 0: Mari et al.'s second stage."""
    x, y, domains = batch()
    cfg = replace(CFG, quantum=True, quantum_head="dressed", head_grad_scale=0.0, aux_weight=0.0, algorithm="erm",
                  init_from="runs/trained/seed{seed}")
    algorithm = build("erm", cfg)
    network = algorithm.network
    encoder = {k: v.detach().clone() for k, v in network.named_parameters() if k.startswith(("encoder.", "embed."))}
    head = {k: v.detach().clone() for k, v in network.named_parameters() if not k.startswith(("encoder.", "embed."))}
    algorithm.train()
    for step in range(2):
        algorithm.update(x, y, domains, step)
    after = dict(network.named_parameters())
    assert all(torch.equal(after[k], v) for k, v in encoder.items())
    assert {"project.weight", "quantum.weight", "classifier.weight"} <= {k for k, v in head.items()
                                                                         if not torch.equal(after[k], v)}
