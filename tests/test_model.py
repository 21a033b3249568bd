"""Model pieces: gradient reversal, DANN schedule, encoder variants, quantum head, pretrained file."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from hybrid.config import TrainConfig
from hybrid.model import HybridNet, build_encoder, dann_lambda, grad_reverse

SMALL = TrainConfig(width_mult=0.35, stem_stride=2, embed_dim=16, input_size=28)


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


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("quantum", [True, False])
def test_hybrid_net_shapes_and_gradients_reach_encoder(channels, quantum):
    torch.manual_seed(0)
    cfg = replace(SMALL, quantum=quantum)
    model = HybridNet(cfg, in_channels=channels, n_classes=3, n_domains=4)
    x = torch.rand(6, channels, 28, 28)
    logits, domain_logits = model.forward_train(x, lam=0.5)
    assert logits.shape == (6, 3) and domain_logits.shape == (6, 4)
    assert (model.quantum is not None) == quantum
    logits.sum().backward()
    stem = model.encoder[0][0][0]
    assert stem.weight.grad is not None and stem.weight.grad.abs().sum() > 0
    if quantum:
        assert model.quantum.weight.grad.abs().sum() > 0
        assert model.project.weight.grad.abs().sum() > 0


def test_discriminator_gradient_is_reversed_into_features():
    torch.manual_seed(0)
    model = HybridNet(SMALL, in_channels=1, n_classes=2, n_domains=3)
    model.eval()  # deterministic features (no dropout, running BN stats)
    x = torch.rand(4, 1, 28, 28)
    domains = torch.tensor([0, 1, 2, 0])

    def embed_grad(lam):
        model.zero_grad()
        _, d = model.forward_train(x, lam)
        torch.nn.functional.cross_entropy(d, domains).backward()
        return model.embed[0].weight.grad.clone()

    g_pos, g_neg = embed_grad(1.0), embed_grad(0.25)
    torch.testing.assert_close(g_neg, 0.25 * g_pos)  # scaled by lambda...
    model.zero_grad()
    f = model.features(x)
    torch.nn.functional.cross_entropy(model.discriminator(f), domains).backward()
    torch.testing.assert_close(model.embed[0].weight.grad, -g_pos)  # ...and reversed in sign


def test_no_quantum_model_has_no_quantum_parameters():
    model = HybridNet(replace(SMALL, quantum=False), 1, 2, 1)
    assert not any("quantum" in name for name, _ in model.named_parameters())
    assert model.discriminator is None


def test_input_smoothing_is_a_fixed_blur_in_front_of_the_same_network():
    from hybrid.shifts import gaussian_blur

    torch.manual_seed(0)
    plain = HybridNet(replace(SMALL, quantum=False), in_channels=1, n_classes=2, n_domains=1).eval()
    smooth = HybridNet(replace(SMALL, quantum=False, input_smoothing=0.8), in_channels=1, n_classes=2,
                       n_domains=1).eval()
    smooth.load_state_dict(plain.state_dict())  # no new parameters: the filter is fixed
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(smooth.features(x), plain.features(gaussian_blur(x, 0.8)))
    torch.testing.assert_close(smooth(x), plain(gaussian_blur(x, 0.8)))
    seen = []
    smooth.encoder.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    smooth(x)
    normalized = (gaussian_blur(x, 0.8) - smooth.pixel_mean) / smooth.pixel_std
    torch.testing.assert_close(seen[0], normalized)  # the encoder sees the low-passed image
    assert (seen[0] - (x - smooth.pixel_mean) / smooth.pixel_std).abs().max() > 0.1


def test_stem_stride_and_channels():
    enc, width = build_encoder(1, width_mult=0.35, stem_stride=1)
    assert enc[0][0][0].stride == (1, 1) and enc[0][0][0].in_channels == 1
    assert enc(torch.rand(2, 1, 28, 28)).shape == (2, width)
    with pytest.raises(ValueError, match="channels"):
        build_encoder(4)


def test_pretrained_weights_from_local_file(tmp_path):
    from torchvision.models import mobilenet_v2

    torch.manual_seed(1)
    reference = mobilenet_v2()
    path = tmp_path / "mobilenet_v2_imagenet.pth"
    torch.save(reference.state_dict(), path)
    enc, _ = build_encoder(3, stem_stride=2, pretrained=True, weights_path=str(path))
    torch.testing.assert_close(enc[0][5].conv[1][0].weight, reference.features[5].conv[1][0].weight)
    gray, _ = build_encoder(1, stem_stride=2, pretrained=True, weights_path=str(path))
    # grayscale stem = RGB filters summed, so a gray image gives the RGB model's response
    torch.testing.assert_close(gray[0][0][0].weight, reference.features[0][0].weight.sum(1, keepdim=True))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_encoder(3, pretrained=True, weights_path=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="width_mult"):
        build_encoder(3, width_mult=0.5, pretrained=True, weights_path=str(path))
