"""The shift functions: pure, batched, seeded perturbations of float images (B, C, H, W) in
[0, 1], registered by name with their family (train / heldout / validation) and modality (any
image, or colour images only). `hybrid.shifts` builds the virtual centers from them and
re-exports every name here, so `from hybrid.shifts import SHIFTS, gaussian_blur` keeps working.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

ShiftFn = Callable[[Tensor, float, "torch.Generator | None"], Tensor]
# train: builds source centers; heldout: reported unseen centers; validation: design-validation
# centers for choosing between method variants, disjoint in family from both of the others.
FAMILIES = ("train", "heldout", "validation")


MODALITIES = ("any", "rgb")  # any: every image type; rgb: used for colour images only


@dataclass(frozen=True)
class ShiftSpec:
    name: str
    fn: ShiftFn
    family: str  # one of FAMILIES
    modality: str = "any"  # one of MODALITIES


SHIFTS: dict[str, ShiftSpec] = {}


def register_shift(name: str, *, family: str, modality: str = "any") -> Callable[[ShiftFn], ShiftFn]:
    """Decorator adding a shift function to ``SHIFTS`` under ``name``."""
    if family not in FAMILIES:
        raise ValueError(f"shift family must be one of {FAMILIES}, got {family!r}")
    if modality not in MODALITIES:
        raise ValueError(f"shift modality must be one of {MODALITIES}, got {modality!r}")

    def deco(fn: ShiftFn) -> ShiftFn:
        if name in SHIFTS:
            raise ValueError(f"shift {name!r} is already registered")
        SHIFTS[name] = ShiftSpec(name=name, fn=fn, family=family, modality=modality)
        return fn

    return deco


def get_shift(name: str) -> ShiftSpec:
    if name not in SHIFTS:
        raise ValueError(f"unknown shift {name!r}; valid shifts are: {', '.join(sorted(SHIFTS))}")
    return SHIFTS[name]


def check_images(images: Tensor) -> None:
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(
            f"shifts expect a float tensor of shape (B, C, H, W), got {images.dtype} {tuple(images.shape)}"
        )


def _require(ok: bool, what: str, strength: float) -> None:
    if not ok:
        raise ValueError(f"{what}, got strength={strength}")


def _draw_device(images: Tensor, generator: torch.Generator | None) -> torch.device:
    # Draw on the generator's device so a CPU generator also seeds GPU batches.
    return generator.device if generator is not None else images.device


def _randn_like(images: Tensor, generator: torch.Generator | None) -> Tensor:
    device = _draw_device(images, generator)
    return torch.randn(images.shape, generator=generator, dtype=images.dtype, device=device).to(images.device)


def _rand_like(images: Tensor, generator: torch.Generator | None) -> Tensor:
    device = _draw_device(images, generator)
    return torch.rand(images.shape, generator=generator, dtype=images.dtype, device=device).to(images.device)


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur (sigma in pixels) with reflect padding, per channel."""
    b, c, h, w = images.shape
    # Reflect padding needs pad < size, so very small images get a truncated kernel.
    radius = min(max(1, math.ceil(3 * sigma)), h - 1, w - 1)
    if radius < 1:
        return images.clone()
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    flat = images.reshape(b * c, 1, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return flat.reshape(b, c, h, w)


@register_shift("brightness", family="train")
def brightness(images: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """Additive intensity offset (exposure / window level)."""
    check_images(images)
    return (images + strength).clamp(0.0, 1.0)


@register_shift("contrast", family="train")
def contrast(images: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """Scale around each image's own mean, so contrast changes without a brightness change."""
    check_images(images)
    _require(strength >= 0, "contrast factor must be >= 0", strength)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return (mean + strength * (images - mean)).clamp(0.0, 1.0)


@register_shift("sharpen", family="train")
def sharpen(images: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """Unsharp mask I + amount * (I - blur(I)), the usual vendor edge enhancement."""
    check_images(images)
    _require(strength >= 0, "sharpen amount must be >= 0", strength)
    if strength == 0:
        return images.clone()
    detail = images - gaussian_blur(images, sigma=1.0)
    return (images + strength * detail).clamp(0.0, 1.0)


@register_shift("gaussian_noise", family="train")
def gaussian_noise(images: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """Additive white Gaussian noise with standard deviation ``strength`` (detector read noise)."""
    check_images(images)
    _require(strength >= 0, "noise sigma must be >= 0", strength)
    return (images + strength * _randn_like(images, generator)).clamp(0.0, 1.0)


@register_shift("gamma", family="heldout")
def gamma(images: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """Nonlinear tone curve I**gamma (gamma > 1 darkens mid-tones, < 1 brightens them)."""
    check_images(images)
    _require(strength > 0, "gamma must be > 0", strength)
    return images.clamp(0.0, 1.0).pow(strength).clamp(0.0, 1.0)


@register_shift("blur", family="heldout")
def blur(images: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """Gaussian blur with sigma ``strength`` pixels (focal spot / reconstruction kernel)."""
    check_images(images)
    _require(strength >= 0, "blur sigma must be >= 0", strength)
    if strength == 0:
        return images.clone()
    return gaussian_blur(images, strength).clamp(0.0, 1.0)


@register_shift("speckle", family="heldout")
def speckle(images: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """Multiplicative noise I * (1 + sigma * n): noise that grows with intensity."""
    check_images(images)
    _require(strength >= 0, "speckle sigma must be >= 0", strength)
    return (images * (1 + strength * _randn_like(images, generator))).clamp(0.0, 1.0)


@register_shift("poisson", family="heldout")
def poisson(images: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """Photon-count noise Poisson(I * peak) / peak; ``strength`` is the peak photon count (low = noisy)."""
    check_images(images)
    _require(strength > 0, "poisson peak photon count must be > 0", strength)
    rate = (images.clamp(0.0, 1.0) * strength).to(_draw_device(images, generator))
    counts = torch.poisson(rate, generator=generator).to(images.device)
    return (counts / strength).clamp(0.0, 1.0)


@register_shift("resolution", family="heldout")
def resolution(images: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """Lower acquisition resolution: downsample by ``strength`` (>= 1), bilinear upsample back."""
    check_images(images)
    _require(strength >= 1, "resolution factor must be >= 1", strength)
    if strength == 1:
        return images.clone()
    h, w = images.shape[-2:]
    small = (max(1, round(h / strength)), max(1, round(w / strength)))
    # antialias=True so the downsample behaves like a coarser detector, not like aliasing.
    down = F.interpolate(images, size=small, mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(down, size=(h, w), mode="bilinear", align_corners=False).clamp(0.0, 1.0)


# Validation families: plausible acquisition artefacts that neither train nor the reported
# target centers use. They exist so that design choices (e.g. input smoothing) can be judged
# without looking at the reported unseen centers.
@register_shift("impulse", family="validation")
def impulse(images: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """Salt-and-pepper noise: a fraction ``strength`` of pixels stuck at 0 or 1 (dead/hot detector pixels)."""
    check_images(images)
    _require(0 <= strength <= 1, "impulse fraction must be in [0, 1]", strength)
    u = _rand_like(images, generator)
    out = images.clone()
    out[u < strength / 2] = 0.0
    out[(u >= strength / 2) & (u < strength)] = 1.0
    return out


@register_shift("rician", family="validation")
def rician(images: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """Magnitude of complex Gaussian noise, sqrt((I + s n1)^2 + (s n2)^2): MRI-style Rician noise."""
    check_images(images)
    _require(strength >= 0, "rician sigma must be >= 0", strength)
    real = images + strength * _randn_like(images, generator)
    imag = strength * _randn_like(images, generator)
    return torch.sqrt(real**2 + imag**2).clamp(0.0, 1.0)


@register_shift("grain", family="validation")
def grain(images: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """Spatially correlated additive noise (white noise blurred with sigma 1 px) of std ``strength``."""
    check_images(images)
    _require(strength >= 0, "grain std must be >= 0", strength)
    noise = gaussian_blur(_randn_like(images, generator), 1.0)
    noise = noise / noise.std().clamp_min(1e-12)
    return (images + strength * noise).clamp(0.0, 1.0)


@register_shift("vignette", family="validation")
def vignette(images: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """Radial exposure fall-off I * (1 - strength * r^2), r = 1 at the corners."""
    check_images(images)
    _require(0 <= strength <= 1, "vignette strength must be in [0, 1]", strength)
    h, w = images.shape[-2:]
    yy = torch.linspace(-1, 1, h, dtype=images.dtype, device=images.device).view(h, 1)
    xx = torch.linspace(-1, 1, w, dtype=images.dtype, device=images.device).view(1, w)
    r2 = (xx**2 + yy**2) / 2
    return (images * (1 - strength * r2)).clamp(0.0, 1.0)


def _check_rgb(images: Tensor) -> None:
    check_images(images)
    if images.shape[1] != 3:
        raise ValueError(f"colour shifts need RGB images (B, 3, H, W), got {tuple(images.shape)}")


def _luma(images: Tensor) -> Tensor:
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


@register_shift("white_balance", family="train", modality="rgb")
def white_balance(images: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """Channel gains exp(s), 1, exp(-s) on R, G, B: a warmer (s > 0) or cooler (s < 0) white point."""
    _check_rgb(images)
    gains = torch.tensor([math.exp(strength), 1.0, math.exp(-strength)], dtype=images.dtype, device=images.device)
    return (images * gains.view(1, 3, 1, 1)).clamp(0.0, 1.0)


@register_shift("saturation", family="train", modality="rgb")
def saturation(images: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """Colourfulness scaled by 1 + s around each pixel's luma (s = -1 gives grey)."""
    _check_rgb(images)
    _require(strength >= -1, "saturation change must be >= -1", strength)
    luma = _luma(images)
    return (luma + (1 + strength) * (images - luma)).clamp(0.0, 1.0)


# YIQ: luma plus two chroma axes; a hue shift is a rotation in the chroma plane
_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


@register_shift("hue", family="train", modality="rgb")
def hue(images: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """Hue rotated by ``strength`` turns about the grey axis (a rotation of YIQ's chroma plane)."""
    _check_rgb(images)
    to_yiq = torch.tensor(_YIQ, dtype=torch.float64)
    c, s = math.cos(2 * math.pi * strength), math.sin(2 * math.pi * strength)
    rotate = torch.tensor([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]], dtype=torch.float64)
    matrix = (torch.linalg.inv(to_yiq) @ rotate @ to_yiq).to(images.dtype).to(images.device)
    return torch.einsum("ij,bjhw->bihw", matrix, images).clamp(0.0, 1.0)


@register_shift("illumination_gradient", family="heldout", modality="rgb")
def illumination_gradient(images: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """Uneven lighting: exposure falling linearly across the image from 1 + s/2 (left) to 1 - s/2 (right)."""
    check_images(images)
    _require(0 <= strength <= 2, "illumination gradient must be in [0, 2]", strength)
    w = images.shape[-1]
    ramp = 1 + strength * torch.linspace(0.5, -0.5, w, dtype=images.dtype, device=images.device)
    return (images * ramp.view(1, 1, 1, w)).clamp(0.0, 1.0)


@register_shift("jpeg", family="heldout", modality="rgb")
def jpeg(images: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """JPEG re-compression (a device or archive that stores lossy files) at quality round(100 - 90 s),
    s in [0, 1]; s = 0 leaves the images untouched."""
    check_images(images)
    _require(0 <= strength <= 1, "jpeg strength must be in [0, 1]", strength)
    if strength == 0:
        return images.clone()
    quality = int(round(100 - 90 * strength))
    pixels = (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    decoded = np.stack([_jpeg_round_trip(p, quality) for p in pixels])
    out = torch.from_numpy(decoded).permute(0, 3, 1, 2).to(images.device, images.dtype) / 255
    return out.clamp(0.0, 1.0)


def _jpeg_round_trip(pixels: np.ndarray, quality: int) -> np.ndarray:
    """One (H, W, C) uint8 image through PIL's JPEG encoder and decoder."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as im:
        out = np.asarray(im)
    return out[..., None] if out.ndim == 2 else out


def _names(family: str, modality: str) -> tuple[str, ...]:
    return tuple(n for n, s in SHIFTS.items() if s.family == family and s.modality == modality)


TRAIN_SHIFTS: tuple[str, ...] = _names("train", "any")
HELDOUT_SHIFTS: tuple[str, ...] = _names("heldout", "any")
VALIDATION_SHIFTS: tuple[str, ...] = _names("validation", "any")
RGB_TRAIN_SHIFTS: tuple[str, ...] = _names("train", "rgb")
RGB_HELDOUT_SHIFTS: tuple[str, ...] = _names("heldout", "rgb")
