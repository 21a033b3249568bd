"""Shades of Gray colour constancy (#13): a tint is undone, grey and grayscale are left alone, and
the network applies it identically wherever it runs."""

from __future__ import annotations

import pytest
import torch

from hybrid.colour import shades_of_gray


def _scene(n: int = 4, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    grey = torch.rand(n, 1, size, size, generator=g) * 0.6 + 0.1
    return grey.repeat(1, 3, 1, 1)


@pytest.mark.parametrize("p", [1.0, 6.0, 50.0])
def test_a_uniformly_tinted_image_maps_back_to_grey(p):
    grey = _scene()
    tinted = grey * torch.tensor([1.3, 1.0, 0.6]).view(1, 3, 1, 1)  # warm illuminant, no clipping
    out = shades_of_gray(tinted, p)
    assert torch.allclose(out[:, 0], out[:, 1], atol=1e-5) and torch.allclose(out[:, 1], out[:, 2], atol=1e-5)
    assert (out.max(dim=1).values - out.min(dim=1).values).max() < 1e-5 < (tinted.max(1).values -
                                                                           tinted.min(1).values).max()


def test_grey_grayscale_and_off_are_unchanged():
    grey = _scene()
    assert torch.allclose(shades_of_gray(grey, 6.0), grey, atol=1e-6)
    single = grey[:, :1]
    assert shades_of_gray(single, 6.0) is single
    tinted = grey * torch.tensor([1.2, 1.0, 0.8]).view(1, 3, 1, 1)
    assert shades_of_gray(tinted, 0.0) is tinted


def test_each_image_is_corrected_on_its_own_and_stays_in_range():
    g = torch.Generator().manual_seed(1)
    batch = torch.rand(6, 3, 12, 12, generator=g)
    whole = shades_of_gray(batch, 6.0)
    assert torch.allclose(whole[2:3], shades_of_gray(batch[2:3], 6.0))
    assert whole.min() >= 0 and whole.max() <= 1 and whole.dtype == batch.dtype


def test_the_network_applies_it_in_its_input_path():
    from hybrid.config import TrainConfig
    from hybrid.model import HybridNet

    torch.manual_seed(0)
    cfg = TrainConfig(width_mult=0.1, stem_stride=2, embed_dim=8, quantum=False, colour_constancy=6.0,
                      input_smoothing=0.0)
    net = HybridNet(cfg.model_config(), 3, 2).eval()
    grey = _scene(2)
    tinted = grey * torch.tensor([1.3, 1.0, 0.6]).view(1, 3, 1, 1)
    # the same scene under another illuminant reaches the encoder as (nearly) the same image
    assert torch.allclose(net(tinted), net(shades_of_gray(grey, 6.0)), atol=1e-4)
    with pytest.raises(ValueError, match="--colour-constancy"):
        TrainConfig(colour_constancy=-1.0)
