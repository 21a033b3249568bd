"""Imaging-shift simulation: one dataset becomes several virtual acquisition centers.

Real multi-center data differ mostly in exposure, contrast, vendor post-processing
(sharpening), detector noise and resolution. We simulate those differences with pure,
batched, seeded functions on float images (B, C, H, W) in [0, 1]:

* **train** families (the four the method trains on): ``brightness``, ``contrast``,
  ``sharpen``, ``gaussian_noise``. Source centers draw their strengths from
  ``SOURCE_RANGES``.
* **heldout** families (evaluation only, never seen in training): ``gamma``, ``blur``,
  ``speckle``, ``poisson``, ``resolution``.

Colour images (dermoscopy) differ between devices in colour too, so RGB runs add the colour
families (``modality="rgb"``): ``white_balance``, ``saturation``, ``hue`` train (their source
ranges in ``RGB_SOURCE_RANGES``), ``illumination_gradient`` and ``jpeg`` are held out, and the
target and design-validation sets get colour centers (``make_target_centers(rgb=True)``).
Grayscale runs see exactly the centers they always did.

Target centers use strengths from ``TARGET_RANGES``, disjoint from ``SOURCE_RANGES``, so
evaluating on them measures generalization to unseen scanners, not interpolation.

    >>> centers = make_source_centers(k=4, seed=0)
    >>> x_shifted = apply_centers(x, center_ids, centers, generator=g)

``hybrid.reporting.save_center_grid`` draws one image under a list of centers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
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


def _check(images: Tensor) -> None:
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
    _check(images)
    return (images + strength).clamp(0.0, 1.0)


@register_shift("contrast", family="train")
def contrast(images: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """Scale around each image's own mean, so contrast changes without a brightness change."""
    _check(images)
    _require(strength >= 0, "contrast factor must be >= 0", strength)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return (mean + strength * (images - mean)).clamp(0.0, 1.0)


@register_shift("sharpen", family="train")
def sharpen(images: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """Unsharp mask I + amount * (I - blur(I)), the usual vendor edge enhancement."""
    _check(images)
    _require(strength >= 0, "sharpen amount must be >= 0", strength)
    if strength == 0:
        return images.clone()
    detail = images - gaussian_blur(images, sigma=1.0)
    return (images + strength * detail).clamp(0.0, 1.0)


@register_shift("gaussian_noise", family="train")
def gaussian_noise(images: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """Additive white Gaussian noise with standard deviation ``strength`` (detector read noise)."""
    _check(images)
    _require(strength >= 0, "noise sigma must be >= 0", strength)
    return (images + strength * _randn_like(images, generator)).clamp(0.0, 1.0)


@register_shift("gamma", family="heldout")
def gamma(images: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """Nonlinear tone curve I**gamma (gamma > 1 darkens mid-tones, < 1 brightens them)."""
    _check(images)
    _require(strength > 0, "gamma must be > 0", strength)
    return images.clamp(0.0, 1.0).pow(strength).clamp(0.0, 1.0)


@register_shift("blur", family="heldout")
def blur(images: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """Gaussian blur with sigma ``strength`` pixels (focal spot / reconstruction kernel)."""
    _check(images)
    _require(strength >= 0, "blur sigma must be >= 0", strength)
    if strength == 0:
        return images.clone()
    return gaussian_blur(images, strength).clamp(0.0, 1.0)


@register_shift("speckle", family="heldout")
def speckle(images: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """Multiplicative noise I * (1 + sigma * n): noise that grows with intensity."""
    _check(images)
    _require(strength >= 0, "speckle sigma must be >= 0", strength)
    return (images * (1 + strength * _randn_like(images, generator))).clamp(0.0, 1.0)


@register_shift("poisson", family="heldout")
def poisson(images: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """Photon-count noise Poisson(I * peak) / peak; ``strength`` is the peak photon count (low = noisy)."""
    _check(images)
    _require(strength > 0, "poisson peak photon count must be > 0", strength)
    rate = (images.clamp(0.0, 1.0) * strength).to(_draw_device(images, generator))
    counts = torch.poisson(rate, generator=generator).to(images.device)
    return (counts / strength).clamp(0.0, 1.0)


@register_shift("resolution", family="heldout")
def resolution(images: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """Lower acquisition resolution: downsample by ``strength`` (>= 1), bilinear upsample back."""
    _check(images)
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
    _check(images)
    _require(0 <= strength <= 1, "impulse fraction must be in [0, 1]", strength)
    u = _rand_like(images, generator)
    out = images.clone()
    out[u < strength / 2] = 0.0
    out[(u >= strength / 2) & (u < strength)] = 1.0
    return out


@register_shift("rician", family="validation")
def rician(images: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """Magnitude of complex Gaussian noise, sqrt((I + s n1)^2 + (s n2)^2): MRI-style Rician noise."""
    _check(images)
    _require(strength >= 0, "rician sigma must be >= 0", strength)
    real = images + strength * _randn_like(images, generator)
    imag = strength * _randn_like(images, generator)
    return torch.sqrt(real**2 + imag**2).clamp(0.0, 1.0)


@register_shift("grain", family="validation")
def grain(images: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """Spatially correlated additive noise (white noise blurred with sigma 1 px) of std ``strength``."""
    _check(images)
    _require(strength >= 0, "grain std must be >= 0", strength)
    noise = gaussian_blur(_randn_like(images, generator), 1.0)
    noise = noise / noise.std().clamp_min(1e-12)
    return (images + strength * noise).clamp(0.0, 1.0)


@register_shift("vignette", family="validation")
def vignette(images: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """Radial exposure fall-off I * (1 - strength * r^2), r = 1 at the corners."""
    _check(images)
    _require(0 <= strength <= 1, "vignette strength must be in [0, 1]", strength)
    h, w = images.shape[-2:]
    yy = torch.linspace(-1, 1, h, dtype=images.dtype, device=images.device).view(h, 1)
    xx = torch.linspace(-1, 1, w, dtype=images.dtype, device=images.device).view(1, w)
    r2 = (xx**2 + yy**2) / 2
    return (images * (1 - strength * r2)).clamp(0.0, 1.0)


def _check_rgb(images: Tensor) -> None:
    _check(images)
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
    _check(images)
    _require(0 <= strength <= 2, "illumination gradient must be in [0, 2]", strength)
    w = images.shape[-1]
    ramp = 1 + strength * torch.linspace(0.5, -0.5, w, dtype=images.dtype, device=images.device)
    return (images * ramp.view(1, 1, 1, w)).clamp(0.0, 1.0)


@register_shift("jpeg", family="heldout", modality="rgb")
def jpeg(images: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """JPEG re-compression (a device or archive that stores lossy files) at quality round(100 - 90 s),
    s in [0, 1]; s = 0 leaves the images untouched."""
    _check(images)
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


@dataclass(frozen=True)
class VirtualCenter:
    """A simulated acquisition site: shifts applied in order, each as (shift name, strength)."""

    name: str
    shifts: tuple[tuple[str, float], ...]

    def __post_init__(self) -> None:
        # Normalize lists (e.g. from JSON) to tuples and fail at construction on a bad name.
        shifts = tuple((str(n), float(s)) for n, s in self.shifts)
        for n, _ in shifts:
            get_shift(n)
        object.__setattr__(self, "shifts", shifts)

    def to_dict(self) -> dict:
        return {"name": self.name, "shifts": [[n, s] for n, s in self.shifts]}

    @classmethod
    def from_dict(cls, d: dict) -> VirtualCenter:
        return cls(name=d["name"], shifts=tuple((n, s) for n, s in d["shifts"]))


def apply_center(
    images: Tensor, center: VirtualCenter, generator: torch.Generator | None = None
) -> Tensor:
    """Apply a center's shifts in order; returns a new tensor."""
    out = images
    for name, strength in center.shifts:
        out = get_shift(name).fn(out, strength, generator)
    return out.clone() if out is images else out


def apply_centers(
    images: Tensor,
    center_ids: Tensor,
    centers: Sequence[VirtualCenter],
    generator: torch.Generator | None = None,
) -> Tensor:
    """Shift each sample by its own center; ``center_ids[i]`` indexes ``centers``.

    Loops over the centers present (in increasing id order, which fixes how the generator
    is consumed), not over samples, so a batch costs at most ``len(centers)`` calls.
    """
    _check(images)
    ids = center_ids.to(images.device).long()
    if ids.shape != images.shape[:1]:
        raise ValueError(f"center_ids must have shape ({images.shape[0]},), got {tuple(ids.shape)}")
    if ids.numel() and (ids.min() < 0 or ids.max() >= len(centers)):
        raise ValueError(f"center_ids must lie in [0, {len(centers) - 1}] for {len(centers)} centers")
    out = images.clone()
    for cid in torch.unique(ids).tolist():
        mask = ids == cid
        out[mask] = apply_center(images[mask], centers[cid], generator)
    return out


# Source acquisition variation: what the K training centers may differ by (inclusive ranges).
SOURCE_RANGES: dict[str, tuple[float, float]] = {
    "brightness": (-0.1, 0.1),  # additive offset
    "contrast": (0.8, 1.25),  # factor around the image mean (0.8 = 1 / 1.25)
    "sharpen": (0.0, 1.0),  # unsharp-mask amount
    "gaussian_noise": (0.0, 0.03),  # sigma; applied last so it is the sigma seen in the output
}

# Colour variation between the source centers of an RGB run (added to SOURCE_RANGES).
RGB_SOURCE_RANGES: dict[str, tuple[float, float]] = {
    "white_balance": (-0.1, 0.1),  # log red/blue gain
    "saturation": (-0.2, 0.2),  # relative change of colourfulness
    "hue": (-0.02, 0.02),  # turns
}

# Unseen target variation: allowed intervals per shift, disjoint from SOURCE_RANGES. Held-out
# families have no source range at all, so they are unseen by construction.
TARGET_RANGES: dict[str, tuple[tuple[float, float], ...]] = {
    "brightness": ((-0.2, -0.15), (0.15, 0.2)),
    "contrast": ((0.6, 0.7), (1.4, 1.5)),
    "sharpen": ((1.5, 2.0),),
    "gaussian_noise": ((0.05, 0.07),),
    "gamma": ((0.7, 0.7), (1.5, 1.5)),
    "blur": ((0.8, 0.8),),
    "speckle": ((0.15, 0.15),),
    "poisson": ((200.0, 200.0),),
    "resolution": ((1.5, 2.0),),
    "white_balance": ((-0.3, -0.25), (0.25, 0.3)),
    "saturation": ((-0.6, -0.5), (0.5, 0.6)),
    "hue": ((-0.06, -0.05), (0.05, 0.06)),
    "illumination_gradient": ((0.5, 0.5),),
    "jpeg": ((0.8, 0.8),),
}

_TARGET_CENTERS: tuple[VirtualCenter, ...] = (
    VirtualCenter("tgt_bright_lowcontrast", (("brightness", 0.18), ("contrast", 0.65))),
    VirtualCenter("tgt_dark_highcontrast", (("brightness", -0.18), ("contrast", 1.45))),
    VirtualCenter("tgt_oversharp_noisy", (("sharpen", 1.8), ("gaussian_noise", 0.06))),
    VirtualCenter("tgt_gamma_dark", (("gamma", 1.5),)),
    VirtualCenter("tgt_gamma_bright", (("gamma", 0.7),)),
    VirtualCenter("tgt_blur", (("blur", 0.8),)),
    VirtualCenter("tgt_speckle", (("speckle", 0.15),)),
    VirtualCenter("tgt_poisson", (("poisson", 200.0),)),
    VirtualCenter("tgt_lowres", (("resolution", 2.0),)),
)


# Colour target centers, added for RGB runs (strengths inside TARGET_RANGES).
_RGB_TARGET_CENTERS: tuple[VirtualCenter, ...] = (
    VirtualCenter("tgt_warm", (("white_balance", 0.28),)),
    VirtualCenter("tgt_cool", (("white_balance", -0.28),)),
    VirtualCenter("tgt_desaturated", (("saturation", -0.55),)),
    VirtualCenter("tgt_vivid", (("saturation", 0.55),)),
    VirtualCenter("tgt_hue", (("hue", 0.055),)),
    VirtualCenter("tgt_uneven_light", (("illumination_gradient", 0.5),)),
    VirtualCenter("tgt_jpeg", (("jpeg", 0.8),)),
)

# Design-validation centers: only validation-family shifts, or train families at strengths
# outside both SOURCE_RANGES and TARGET_RANGES. Fixed before any method variant was compared.
_VALIDATION_CENTERS: tuple[VirtualCenter, ...] = (
    VirtualCenter("val_impulse", (("impulse", 0.02),)),
    VirtualCenter("val_rician", (("rician", 0.05),)),
    VirtualCenter("val_grain", (("grain", 0.04),)),
    VirtualCenter("val_vignette", (("vignette", 0.5),)),
    VirtualCenter("val_lowcontrast_grain", (("contrast", 0.75), ("grain", 0.03))),
)

# Colour design-validation centers for RGB runs: colour train families at strengths between their
# source and target ranges, so RGB method variants are chosen without the reported colour centers.
_RGB_VALIDATION_CENTERS: tuple[VirtualCenter, ...] = (
    VirtualCenter("val_warmish", (("white_balance", 0.18),)),
    VirtualCenter("val_muted", (("saturation", -0.35),)),
    VirtualCenter("val_hue", (("hue", -0.035),)),
)


def ranges_disjoint(
    source: dict[str, tuple[float, float]] | None = None,
    target: dict[str, tuple[tuple[float, float], ...]] | None = None,
) -> bool:
    """True if no target interval overlaps the source interval of the same shift."""
    source = SOURCE_RANGES | RGB_SOURCE_RANGES if source is None else source
    target = TARGET_RANGES if target is None else target
    for name, intervals in target.items():
        if name not in source:
            continue
        s_lo, s_hi = source[name]
        if any(lo <= s_hi and s_lo <= hi for lo, hi in intervals):
            return False
    return True


SOURCE_SAMPLINGS = ("random", "stratified")


def make_source_centers(k: int = 4, seed: int = 0, sampling: str = "random", rgb: bool = False) -> list[VirtualCenter]:
    """K training centers ``src0..src{k-1}``, each drawing every train family from SOURCE_RANGES
    (and, with ``rgb``, every colour family from RGB_SOURCE_RANGES, applied before them).

    ``random`` draws every strength uniformly from its range. ``stratified`` (Latin hypercube)
    splits each range into K equal strata and gives every center a different stratum per shift,
    so the K centers span the whole range: with K=4 random draws can leave, e.g., every center's
    noise near zero.
    """
    if k < 1:
        raise ValueError(f"need at least one source center, got k={k}")
    if sampling not in SOURCE_SAMPLINGS:
        raise ValueError(f"source sampling must be one of {SOURCE_SAMPLINGS}, got {sampling!r}")
    rng = np.random.default_rng(seed)
    ranges = RGB_SOURCE_RANGES | SOURCE_RANGES if rgb else SOURCE_RANGES  # colour first: noise stays last
    names = list(ranges)
    if sampling == "random":  # draw order (center by center) kept so earlier runs reproduce
        u = np.array([[rng.uniform(0.0, 1.0) for _ in names] for _ in range(k)])
    else:
        u = np.stack([(rng.permutation(k) + rng.uniform(0.0, 1.0, size=k)) / k for _ in names], axis=1)
    centers = []
    for i in range(k):
        # Rounded so saved configs stay readable; clipped so rounding stays inside the ranges.
        shifts = []
        for j, name in enumerate(names):
            lo, hi = ranges[name]
            shifts.append((name, float(np.clip(round(float(lo + u[i, j] * (hi - lo)), 4), lo, hi))))
        shifts = tuple(shifts)
        centers.append(VirtualCenter(f"src{i}", shifts))
    return centers


def make_target_centers(rgb: bool = False) -> list[VirtualCenter]:
    """The fixed unseen evaluation centers (strengths inside TARGET_RANGES); colour ones too with ``rgb``."""
    return list(_TARGET_CENTERS) + (list(_RGB_TARGET_CENTERS) if rgb else [])


def make_validation_centers(rgb: bool = False) -> list[VirtualCenter]:
    """Design-validation centers: for comparing method variants, never reported as results."""
    return list(_VALIDATION_CENTERS) + (list(_RGB_VALIDATION_CENTERS) if rgb else [])


# Named sets of unseen centers for evaluation: the reported ones and the design-validation ones.
CENTER_SETS: dict[str, Callable[[], list[VirtualCenter]]] = {
    "target": make_target_centers,
    "validation": make_validation_centers,
}

