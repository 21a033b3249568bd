"""TTA wrappers: exact reset, each method's prediction, TENT's updates and collapse guard."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hybrid.tta import TTA_METHODS, BatchNormForward, make_tta, softmax_entropy


class SmallCNN(nn.Module):
    """conv -> BatchNorm2d -> ReLU -> global pool -> Dropout -> linear."""

    def __init__(self, n_classes: int = 3, channels: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.5)  # would make outputs random if TTA left it in train mode
        self.fc = nn.Linear(channels, n_classes)

    def forward(self, x):
        return self.fc(self.drop(self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1)))


class SmallMLP(nn.Module):
    """A different architecture: BatchNorm1d between linear layers."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(),
                                 nn.Dropout(0.3), nn.Linear(16, 2))

    def forward(self, x):
        return self.net(x)


def trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BN non-trivial affine params and running stats, as after training; then eval()."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
        model.train()
        for _ in range(5):
            model(torch.randn(16, 1, 8, 8))
    return model.eval()


def target_batch(n: int = 32, seed: int = 1) -> torch.Tensor:
    """A shifted domain: different brightness and contrast from the source batches."""
    g = torch.Generator().manual_seed(seed)
    return 0.7 + 2.0 * torch.randn(n, 1, 8, 8, generator=g)


def snapshot(model: nn.Module):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [getattr(m, "track_running_stats", None) for m in model.modules()],
    )


def assert_same_state(model: nn.Module, snap) -> None:
    state, training, requires_grad, tracking = snap
    now = model.state_dict()
    assert now.keys() == state.keys()
    for k in state:
        assert torch.equal(now[k], state[k]), k
    assert [m.training for m in model.modules()] == training
    assert [p.requires_grad for p in model.parameters()] == requires_grad
    assert [getattr(m, "track_running_stats", None) for m in model.modules()] == tracking


def odd_flags(model: nn.Module) -> nn.Module:
    """Flags a careless reset would not restore: train mode and a frozen layer."""
    model.train()
    model.conv.weight.requires_grad_(False)
    return model


@pytest.mark.parametrize("name", sorted(TTA_METHODS))
@pytest.mark.parametrize("make_model", [SmallCNN, SmallMLP])
def test_every_method_predicts_and_resets(name, make_model):
    model = trained_like(make_model())
    if name == "bn2d" and make_model is SmallMLP:  # nothing image-level to adapt: say so
        with pytest.raises(ValueError, match="no BatchNorm2d layers"):
            make_tta(name, model)
        return
    snap = snapshot(model)
    tta = make_tta(name, model)
    x = target_batch()
    tta.prepare(x)  # the whole domain; a no-op for the per-batch methods
    logits = tta.predict(x)
    assert logits.shape == (32, {SmallCNN: 3, SmallMLP: 2}[make_model])
    assert not logits.requires_grad
    assert torch.isfinite(logits).all()
    assert tta.counters["batches_seen"] == 1
    tta.reset()
    assert_same_state(model, snap)


@pytest.mark.parametrize("name", ["bn", "adabn", "tent"])
def test_reset_restores_exact_state_after_adaptation(name):
    model = odd_flags(trained_like(SmallCNN()))
    snap = snapshot(model)
    tta = make_tta(name, model, **({"episodic": False, "steps": 3, "lr": 1e-2} if name == "tent" else {}))
    for seed in range(3):
        tta.prepare(target_batch(seed=seed))
        tta.predict(target_batch(seed=seed))
    if name == "adabn":
        assert not torch.equal(model.bn.running_mean, snap[0]["bn.running_mean"])  # it did adapt
    if name == "tent":
        assert not torch.equal(model.bn.weight, snap[0]["bn.weight"])  # it did adapt
        assert tta.optimizer.state  # Adam moments exist
    tta.reset()
    assert_same_state(model, snap)
    if name == "tent":
        assert not tta.optimizer.state


def test_none_equals_plain_eval_output():
    model = trained_like(SmallCNN())
    x = target_batch()
    with torch.no_grad():
        expected = model.eval()(x)
    model.train()  # the wrapper must switch to eval itself, and back
    logits = make_tta("none", model).predict(x)
    assert torch.equal(logits, expected)
    assert model.training


def test_bn_uses_batch_statistics_and_keeps_source_statistics():
    model = trained_like(SmallCNN())
    snap = snapshot(model)
    x = target_batch()
    logits = make_tta("bn", model).predict(x)

    with torch.no_grad():  # the same forward written out by hand, dropout off
        h = model.conv(x)
        mean, var = h.mean((0, 2, 3), keepdim=True), h.var((0, 2, 3), unbiased=False, keepdim=True)
        h = (h - mean) / torch.sqrt(var + model.bn.eps)
        h = h * model.bn.weight[None, :, None, None] + model.bn.bias[None, :, None, None]
        expected = model.fc(torch.relu(h).mean((2, 3)))
    torch.testing.assert_close(logits, expected)
    assert not torch.allclose(logits, make_tta("none", model).predict(x))  # the shift matters
    assert_same_state(model, snap)  # running stats untouched, even without reset()


class CNNWithEmbeddingBN(nn.Module):
    """Image BatchNorm2d in the encoder, BatchNorm1d over the embedding (as in HybridNet)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.embed = nn.Linear(4, 6)
        self.bn1d = nn.BatchNorm1d(6)
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x))).mean((2, 3))
        return self.fc(torch.relu(self.bn1d(self.embed(h))))


def test_bn2d_adapts_image_statistics_and_keeps_embedding_statistics():
    model = trained_like(CNNWithEmbeddingBN())
    snap = snapshot(model)
    x = target_batch()
    logits = make_tta("bn2d", model).predict(x)
    with torch.no_grad():  # batch statistics in the conv BN, source running statistics in the 1-D BN
        h = model.conv(x)
        mean, var = h.mean((0, 2, 3), keepdim=True), h.var((0, 2, 3), unbiased=False, keepdim=True)
        h = (h - mean) / torch.sqrt(var + model.bn.eps)
        h = torch.relu(h * model.bn.weight[None, :, None, None] + model.bn.bias[None, :, None, None]).mean((2, 3))
        expected = model.fc(torch.relu(model.bn1d.eval()(model.embed(h))))
    torch.testing.assert_close(logits, expected)
    assert not torch.allclose(logits, make_tta("bn", model).predict(x))
    assert_same_state(model, snap)


def test_bn_small_batch_falls_back_to_source_statistics():
    model = trained_like(SmallCNN())
    x = target_batch(n=4)
    tta = make_tta("bn", model, min_batch=8)
    assert torch.equal(tta.predict(x), make_tta("none", model).predict(x))
    assert tta.fallback_batches == 1 and tta.adapted_batches == 0
    mlp = trained_like(SmallMLP())  # BatchNorm1d cannot normalise a single sample at all
    assert make_tta("bn", mlp).predict(target_batch(n=1)).shape == (1, 2)


def test_adabn_normalises_with_the_whole_domains_statistics():
    model = trained_like(SmallCNN())
    x = target_batch(n=64)
    tta = make_tta("adabn", model, stats_batch_size=64)
    tta.prepare(x)
    with torch.no_grad():
        h = model.conv(x)
        torch.testing.assert_close(model.bn.running_mean, h.mean((0, 2, 3)))
        torch.testing.assert_close(model.bn.running_var, h.var((0, 2, 3), unbiased=True))
        mean, var = model.bn.running_mean[None, :, None, None], model.bn.running_var[None, :, None, None]
        h = (h[:10] - mean) / torch.sqrt(var + model.bn.eps)
        h = h * model.bn.weight[None, :, None, None] + model.bn.bias[None, :, None, None]
        expected = model.fc(torch.relu(h).mean((2, 3)))
    torch.testing.assert_close(tta.predict(x[:10]), expected)  # per sample, dropout off
    assert tta.counters["adapted_batches"] == 1


def test_adabn_scores_do_not_depend_on_batch_companions():
    from hybrid.inference import predict_probs

    model = trained_like(SmallCNN())
    snap = snapshot(model)
    x = target_batch(n=64)
    whole = predict_probs(model, x, "adabn", batch_size=64)
    torch.testing.assert_close(predict_probs(model, x, "adabn", batch_size=8), whole)
    # per-batch bn is what this fixes: the same images in batches of 8 get other scores
    assert not torch.allclose(torch.as_tensor(predict_probs(model, x, "bn", batch_size=8)),
                              torch.as_tensor(predict_probs(model, x, "bn", batch_size=64)))
    assert not torch.allclose(torch.as_tensor(whole), torch.as_tensor(predict_probs(model, x, "none")))
    # statistics from another image set: the same as preparing on that set by hand
    reference = 2.0 + target_batch(n=40, seed=5)
    by_hand = make_tta("adabn", model)
    by_hand.prepare(reference)
    expected = by_hand.predict(x).softmax(1)
    by_hand.reset()
    torch.testing.assert_close(torch.as_tensor(predict_probs(model, x, "adabn", 16, statistics_from=reference)),
                               expected)
    assert_same_state(model, snap)  # predict_probs puts the source statistics back


def test_adabn_prepares_each_domain_afresh_and_asks_for_it():
    model = trained_like(SmallCNN())
    first, second = target_batch(n=32, seed=1), 3.0 + target_batch(n=32, seed=2)
    fresh = make_tta("adabn", model)
    fresh.prepare(second)
    expected = fresh.predict(second)
    fresh.reset()
    tta = make_tta("adabn", model)
    with pytest.raises(RuntimeError, match="prepare"):
        tta.predict(first)
    tta.prepare(first)
    tta.prepare(second)  # the first domain's statistics are forgotten, not averaged in
    torch.testing.assert_close(tta.predict(second), expected)


def test_adabn_small_domain_keeps_source_statistics():
    model = trained_like(SmallCNN())
    x = target_batch(n=4)
    tta = make_tta("adabn", model, min_samples=8)
    tta.prepare(x)
    assert torch.equal(tta.predict(x), make_tta("none", model).predict(x))
    assert tta.fallback_batches == 1 and tta.adapted_batches == 0


def test_adabn_collects_hybrid_net_statistics_without_running_the_quantum_layer():
    from hybrid.config import ModelConfig
    from hybrid.model import HybridNet

    torch.manual_seed(0)
    model = HybridNet(ModelConfig(width_mult=0.35, embed_dim=16), in_channels=1, n_classes=2).eval()
    x = torch.rand(24, 1, 28, 28)
    calls = []
    model.quantum.register_forward_hook(lambda *_: calls.append(1))
    via_front = make_tta("adabn", model)
    via_front.prepare(x)  # HybridNet declares batchnorm_forward, so adabn uses it by default
    assert isinstance(model, BatchNormForward)
    assert not calls  # a remote quantum layer would have been sent jobs for nothing
    stats_front = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    via_front.reset()
    via_model = make_tta("adabn", model)
    via_model.prepare(x, model)  # the whole model: the same statistics, so the front holds every BN layer
    assert calls
    for k, v in model.state_dict().items():
        if "running" in k:
            torch.testing.assert_close(v, stats_front[k], msg=k)
    via_model.reset()


def test_tent_updates_only_bn_affine_and_lowers_entropy():
    model = trained_like(SmallCNN())
    snap = snapshot(model)
    x = target_batch()
    before = make_tta("bn", model).predict(x)  # tent's starting point: batch statistics
    tta = make_tta("tent", model, lr=1e-2, steps=5, episodic=False)
    after = tta.predict(x)

    state = snap[0]
    for k, v in model.state_dict().items():
        if k in ("bn.weight", "bn.bias"):
            assert not torch.equal(v, state[k]), k
        else:  # conv, linear and the BN running statistics stay as they were
            assert torch.equal(v, state[k]), k
    assert softmax_entropy(after).mean() < softmax_entropy(before).mean()
    assert tta.adapted_steps == 5 and tta.adapted_batches == 1
    assert [p.requires_grad for p in model.parameters()] == snap[2]  # flags put back
    assert not model.training


def test_episodic_tent_is_independent_of_history():
    model = trained_like(SmallCNN())
    snap = snapshot(model)
    x = target_batch()
    tta = make_tta("tent", model, lr=1e-2, steps=3)  # episodic by default
    first = tta.predict(x)
    tta.predict(target_batch(seed=7))
    assert torch.equal(tta.predict(x), first)
    assert_same_state(model, snap)  # episodic leaves the model as it found it

    continual = make_tta("tent", model, lr=1e-2, steps=3, episodic=False)
    assert torch.equal(continual.predict(x), first)
    assert not torch.equal(continual.predict(x), first)  # continues from the adapted model


def collapse_prone_model(x: torch.Tensor) -> nn.Module:
    """Two classes decided by one pooled BN feature, with the boundary at its batch median.

    Entropy can be driven to zero by shifting that feature past the boundary for every
    sample, which a large learning rate does within a few steps.
    """
    model = SmallCNN(n_classes=2)
    with torch.no_grad():
        model.conv.weight.zero_()
        model.conv.weight[:, :, 1, 1] = 1.0
        model.conv.bias.zero_()
        model.train()
        model(x)
        model.eval()
        feature = torch.relu(model.bn(model.conv(x))).mean((2, 3))[:, 0]
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        model.fc.weight[1, 0] = 3.0
        model.fc.bias[1] = -3.0 * feature.median()
    return model


def test_collapse_guard_reverts_collapsing_step():
    g = torch.Generator().manual_seed(0)
    x = torch.linspace(-1, 1, 32)[:, None, None, None] + 0.1 * torch.randn(32, 1, 8, 8, generator=g)
    model = collapse_prone_model(x)
    start = make_tta("bn", model).predict(x).argmax(1)
    assert torch.bincount(start, minlength=2).max() <= 20  # a mixed batch to begin with

    unguarded = make_tta("tent", model, lr=10.0, steps=10, collapse_fraction=1.0)
    collapsed = unguarded.predict(x).argmax(1)
    assert torch.bincount(collapsed, minlength=2).max() > 0.95 * 32  # the situation is real
    assert unguarded.collapse_events == 0

    guarded = make_tta("tent", model, lr=10.0, steps=10)
    pred = guarded.predict(x).argmax(1)
    assert guarded.collapse_events == 1
    assert guarded.adapted_steps < 10  # stopped at the collapsing step
    assert torch.bincount(pred, minlength=2).max() <= 0.95 * 32
    assert pred.unique().numel() == 2


def test_collapse_guard_ignores_batches_that_start_one_class():
    """A single-class domain legitimately predicts one class; that is not a collapse."""
    x = target_batch()
    model = trained_like(SmallCNN())
    with torch.no_grad():
        model.fc.bias.copy_(torch.tensor([20.0, 0.0, 0.0]))  # everything is class 0
    tta = make_tta("tent", model, lr=1e-2, steps=3)
    assert (tta.predict(x).argmax(1) == 0).all()
    assert tta.collapse_events == 0 and tta.adapted_steps == 3


def test_tent_sgd_and_bad_arguments():
    model = trained_like(SmallCNN())
    tta = make_tta("tent", model, optimizer="sgd", lr=1e-2, episodic=False)
    tta.predict(target_batch())
    assert isinstance(tta.optimizer, torch.optim.SGD) and tta.adapted_steps == 1
    with pytest.raises(ValueError, match="adam, sgd"):
        make_tta("tent", model, optimizer="rmsprop")
    with pytest.raises(ValueError, match="steps"):
        make_tta("tent", model, steps=0)


def test_unknown_method_lists_valid_names():
    with pytest.raises(ValueError, match="bn, bn2d, none, tent"):
        make_tta("memo", SmallCNN())


def test_models_tent_cannot_adapt_fail_loudly():
    no_bn = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    with pytest.raises(ValueError, match="no BatchNorm"):
        make_tta("tent", no_bn)
    with pytest.raises(ValueError, match="no BatchNorm"):
        make_tta("bn", no_bn)
    no_affine = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8, affine=False), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="affine"):
        make_tta("tent", no_affine)
    assert make_tta("bn", no_affine.eval()).predict(target_batch(n=16)).shape == (16, 2)


def test_methods_declare_whether_they_need_gradients():
    assert TTA_METHODS["tent"].needs_gradients
    assert not any(cls.needs_gradients for name, cls in TTA_METHODS.items() if name != "tent")


def test_adabn_and_precise_bn_share_one_statistics_estimate():
    """Both are `estimate_batchnorm_statistics`: equal-weight chunk averages of the batch statistics."""
    from hybrid.fit import recalibrate_batchnorm

    torch.manual_seed(0)
    bn = torch.nn.BatchNorm1d(3)
    x = torch.randn(10, 3) * 2 + 1
    recalibrate_batchnorm(bn, x, batch_size=4)  # chunks of 4, 4, 2
    chunks = [x[:4], x[4:8], x[8:]]
    torch.testing.assert_close(bn.running_mean, torch.stack([c.mean(0) for c in chunks]).mean(0))
    torch.testing.assert_close(bn.running_var, torch.stack([c.var(0) for c in chunks]).mean(0))
    assert bn.momentum == 0.1  # restored
    model = torch.nn.Sequential(bn).eval()
    adabn = make_tta("adabn", model, stats_batch_size=4, min_samples=2)
    before = bn.running_mean.clone()
    adabn.prepare(x + 5)
    torch.testing.assert_close(bn.running_mean, before + 5)
    adabn.reset()
    torch.testing.assert_close(bn.running_mean, before)
