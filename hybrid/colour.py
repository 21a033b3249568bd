"""Colour constancy for RGB images: remove the illuminant's tint before the encoder.

Dermatoscopes (and cameras) differ in white balance; Shades of Gray (Finlayson & Trezzi, 2004),
the usual preprocessing of ISIC challenge entries, estimates each image's illuminant and
divides it out. It is part of the network's input path (`HybridNet.features`), so training,
evaluation, TTA and every backend see exactly the same correction.
"""

from __future__ import annotations

import torch

EPS = 1e-6


def shades_of_gray(x: torch.Tensor, p: float) -> torch.Tensor:
    """Per-image Shades of Gray on (N, 3, H, W) images in [0, 1].

    The illuminant of channel c is the p-norm mean of its pixels, e_c = mean(x_c^p)^(1/p); each
    channel is scaled by mean(e) / e_c, so a uniform tint maps back to grey and the image keeps
    its brightness. p = 1 is grey world; a large p approaches max-RGB (white patch); p = 6 is the
    usual choice. Grayscale images (one channel) and p <= 0 return `x` unchanged. Each image is
    corrected on its own: the result never depends on the batch.
    """
    if p <= 0 or x.shape[1] != 3:
        return x
    illuminant = x.clamp_min(0).pow(p).mean(dim=(2, 3), keepdim=True).pow(1.0 / p)  # (N, 3, 1, 1)
    gain = illuminant.mean(dim=1, keepdim=True) / illuminant.clamp_min(EPS)
    return (x * gain).clamp(0, 1)
