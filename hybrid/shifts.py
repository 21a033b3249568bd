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

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from hybrid.shift_functions import (
    FAMILIES,
    HELDOUT_SHIFTS,
    MODALITIES,
    RGB_HELDOUT_SHIFTS,
    RGB_TRAIN_SHIFTS,
    SHIFTS,
    ShiftFn,
    TRAIN_SHIFTS,
    VALIDATION_SHIFTS,
    blur,
    brightness,
    contrast,
    gamma,
    gaussian_blur,
    gaussian_noise,
    get_shift,
    grain,
    hue,
    illumination_gradient,
    impulse,
    jpeg,
    poisson,
    register_shift,
    resolution,
    rician,
    saturation,
    sharpen,
    speckle,
    vignette,
    white_balance,
    check_images,
)


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
    check_images(images)
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

__all__ = [  # the shift library (hybrid.shift_functions, re-exported) and the centers built from it
    "FAMILIES", "HELDOUT_SHIFTS", "MODALITIES", "RGB_HELDOUT_SHIFTS", "RGB_TRAIN_SHIFTS", "SHIFTS", "ShiftFn",
    "TRAIN_SHIFTS", "VALIDATION_SHIFTS", "blur", "brightness", "contrast", "gamma", "gaussian_blur",
    "gaussian_noise", "get_shift", "grain", "hue", "illumination_gradient", "impulse", "jpeg", "poisson",
    "register_shift", "resolution", "rician", "saturation", "sharpen", "speckle", "vignette", "white_balance",
    "VirtualCenter", "apply_center", "apply_centers", "SOURCE_RANGES", "RGB_SOURCE_RANGES", "TARGET_RANGES",
    "ranges_disjoint", "SOURCE_SAMPLINGS", "make_source_centers", "make_target_centers",
    "make_validation_centers", "CENTER_SETS",
]
