"""Behaviour of the imaging-shift simulation: pure, seeded, in range, and disjoint target centers."""

from __future__ import annotations

import json

import pytest
import torch

from hybrid import shifts as S
from hybrid.reporting import save_center_grid
from hybrid.shifts import (
    HELDOUT_SHIFTS,
    SHIFTS,
    SOURCE_RANGES,
    TARGET_RANGES,
    TRAIN_SHIFTS,
    VALIDATION_SHIFTS,
    VirtualCenter,
    apply_center,
    apply_centers,
    get_shift,
    make_source_centers,
    make_target_centers,
    make_validation_centers,
    ranges_disjoint,
)

# A realistic, non-identity strength for every registered shift.
TYPICAL = {
    "brightness": 0.1,
    "contrast": 1.3,
    "sharpen": 1.0,
    "gaussian_noise": 0.05,
    "gamma": 1.5,
    "blur": 0.8,
    "speckle": 0.15,
    "poisson": 200.0,
    "resolution": 2.0,
    "impulse": 0.02,
    "rician": 0.05,
    "grain": 0.04,
    "vignette": 0.5,
    "white_balance": 0.2,
    "saturation": 0.4,
    "hue": 0.05,
    "illumination_gradient": 0.5,
    "jpeg": 0.8,
}
NEEDS_RGB = ("white_balance", "saturation", "hue")
NOISY = ("gaussian_noise", "speckle", "poisson", "impulse", "rician", "grain")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(b=6, c=1, h=28, w=28, dtype=torch.float32, seed=123) -> torch.Tensor:
    """Smooth phantom plus texture, kept away from 0 and 1 so shifts are not masked by clamping."""
    g = _gen(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    base = 0.35 + 0.3 * torch.sin(3 * xx) * torch.cos(2 * yy)
    x = base + 0.08 * torch.rand(b, c, h, w, generator=g)
    return x.clamp(0.05, 0.95).to(dtype)


def _high_freq_energy(x: torch.Tensor) -> float:
    dx = x[..., :, 1:] - x[..., :, :-1]
    dy = x[..., 1:, :] - x[..., :-1, :]
    return float(dx.pow(2).mean() + dy.pow(2).mean())


def test_registry_families():
    assert TRAIN_SHIFTS == ("brightness", "contrast", "sharpen", "gaussian_noise")
    assert set(HELDOUT_SHIFTS) == {"gamma", "blur", "speckle", "poisson", "resolution"}
    assert set(VALIDATION_SHIFTS) == {"impulse", "rician", "grain", "vignette"}
    assert set(TYPICAL) == set(SHIFTS), "add a typical strength for every new shift"
    assert tuple(SOURCE_RANGES) == TRAIN_SHIFTS


@pytest.mark.parametrize("name", sorted(SHIFTS))
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("hw", [(28, 28), (28, 31)])
def test_every_shift_is_pure_and_in_range(name, channels, dtype, hw):
    x = _images(c=channels, h=hw[0], w=hw[1], dtype=dtype)
    before = x.clone()
    if name in NEEDS_RGB and channels == 1:
        with pytest.raises(ValueError, match="RGB"):
            get_shift(name).fn(x, TYPICAL[name], _gen(0))
        return
    y = get_shift(name).fn(x, TYPICAL[name], _gen(0))
    assert torch.equal(x, before), "shift modified its input in place"
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= 0 and y.max() <= 1
    assert not torch.equal(y, x), "typical strength should change the image"
    assert y.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("name", sorted(SHIFTS))
def test_same_seed_same_output(name):
    x = _images(c=3)
    a = get_shift(name).fn(x, TYPICAL[name], _gen(7))
    b = get_shift(name).fn(x, TYPICAL[name], _gen(7))
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", NOISY)
def test_different_seed_different_noise(name):
    x = _images()
    a = get_shift(name).fn(x, TYPICAL[name], _gen(1))
    b = get_shift(name).fn(x, TYPICAL[name], _gen(2))
    assert not torch.equal(a, b)


@pytest.mark.parametrize(
    "name,strength",
    [("brightness", 0.0), ("contrast", 1.0), ("sharpen", 0.0), ("gaussian_noise", 0.0),
     ("gamma", 1.0), ("resolution", 1.0), ("blur", 0.0), ("speckle", 0.0), ("impulse", 0.0),
     ("grain", 0.0), ("vignette", 0.0)],
)
def test_identity_strengths(name, strength):
    x = _images(c=3, dtype=torch.float64)
    torch.testing.assert_close(get_shift(name).fn(x, strength, _gen(0)), x)


def test_brightness_raises_mean():
    x = _images()
    assert S.brightness(x, 0.1, None).mean() > x.mean() + 0.09


def test_contrast_below_one_lowers_std_keeps_mean():
    x = _images()
    y = S.contrast(x, 0.7, None)
    assert y.std() < 0.75 * x.std()
    torch.testing.assert_close(y.mean(), x.mean(), atol=1e-5, rtol=0)


def test_blur_lowers_high_frequency_energy_and_sharpen_raises_it():
    x = _images()
    assert _high_freq_energy(S.blur(x, 0.8, None)) < 0.5 * _high_freq_energy(x)
    assert _high_freq_energy(S.sharpen(x, 1.0, None)) > 1.5 * _high_freq_energy(x)
    assert _high_freq_energy(S.resolution(x, 2.0, None)) < _high_freq_energy(x)


def test_gamma_direction():
    x = _images()
    assert S.gamma(x, 1.5, None).mean() < x.mean() < S.gamma(x, 0.7, None).mean()


@pytest.mark.parametrize("name", NOISY)
def test_noise_raises_variance_of_residual(name):
    x = _images(b=16)
    weak = {"gaussian_noise": 0.01, "speckle": 0.02, "poisson": 5000.0, "impulse": 0.002, "rician": 0.01,
            "grain": 0.01}[name]
    strong = {"gaussian_noise": 0.05, "speckle": 0.15, "poisson": 100.0, "impulse": 0.05, "rician": 0.05,
              "grain": 0.05}[name]
    fn = get_shift(name).fn
    assert (fn(x, strong, _gen(0)) - x).var() > 4 * (fn(x, weak, _gen(0)) - x).var()


def test_gaussian_noise_sigma_is_measured_sigma():
    x = torch.full((8, 1, 28, 28), 0.5)
    residual = S.gaussian_noise(x, 0.03, _gen(0)) - x
    assert abs(residual.std().item() - 0.03) < 0.002


def test_bad_strengths_raise():
    x = _images()
    with pytest.raises(ValueError, match="resolution factor"):
        S.resolution(x, 0.5, None)
    with pytest.raises(ValueError, match="gamma"):
        S.gamma(x, 0.0, None)
    with pytest.raises(ValueError, match="sigma"):
        S.gaussian_noise(x, -0.1, None)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        S.brightness(x[0], 0.1, None)


def test_unknown_shift_lists_valid_names():
    with pytest.raises(ValueError) as err:
        get_shift("solarize")
    for name in SHIFTS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="brightness"):
        VirtualCenter("bad", (("solarize", 1.0),))


def test_source_centers_seeded_and_within_ranges():
    a, b = make_source_centers(4, seed=0), make_source_centers(4, seed=0)
    assert a == b
    assert make_source_centers(4, seed=1) != a
    assert [c.name for c in a] == ["src0", "src1", "src2", "src3"]
    assert len({c.shifts for c in a}) == 4, "centers should differ from each other"
    for c in a + make_source_centers(16, seed=3):
        assert [n for n, _ in c.shifts] == list(SOURCE_RANGES)
        for name, strength in c.shifts:
            lo, hi = SOURCE_RANGES[name]
            assert lo <= strength <= hi, (c.name, name, strength)


def test_stratified_source_centers_cover_every_stratum():
    for k, seed in ((4, 0), (7, 3)):
        centers = make_source_centers(k, seed=seed, sampling="stratified")
        assert centers == make_source_centers(k, seed=seed, sampling="stratified")
        for j, (name, (lo, hi)) in enumerate(SOURCE_RANGES.items()):
            values = [c.shifts[j][1] for c in centers]
            strata = sorted(min(int((v - lo) / (hi - lo) * k), k - 1) for v in values)
            assert strata == list(range(k)), (name, values)


def test_random_source_centers_unchanged_by_the_sampling_option():
    # earlier runs rebuild their centers from (k, seed); the default draw must not move
    assert make_source_centers(4, seed=0)[0].shifts == (
        ("brightness", 0.0274), ("contrast", 0.9214), ("sharpen", 0.041), ("gaussian_noise", 0.0005))
    with pytest.raises(ValueError, match="stratified"):
        make_source_centers(4, sampling="sobol")


def test_validation_centers_never_use_reported_target_families_or_ranges():
    target_families = {n for c in make_target_centers() for n, _ in c.shifts}
    centers = make_validation_centers()
    assert all(c.name.startswith("val_") for c in centers)
    assert {n for c in centers for n, _ in c.shifts} >= set(VALIDATION_SHIFTS)
    for c in centers:
        for name, strength in c.shifts:
            assert get_shift(name).family in ("validation", "train"), (c.name, name)
            if name in SOURCE_RANGES:  # a train family only at strengths no source or target center has
                lo, hi = SOURCE_RANGES[name]
                assert not lo <= strength <= hi
                assert not any(a <= strength <= b for a, b in TARGET_RANGES[name])
            else:
                assert name not in target_families


def test_impulse_fraction_and_values():
    x = _images(b=8, c=1, h=64, w=64)
    y = get_shift("impulse").fn(x, 0.1, _gen(0))
    changed = y != x
    assert abs(float(changed.float().mean()) - 0.1) < 0.01
    assert set(y[changed].unique().tolist()) <= {0.0, 1.0}


def test_grain_std_is_strength_and_spatially_correlated():
    x = torch.full((4, 1, 64, 64), 0.5)
    noise = get_shift("grain").fn(x, 0.04, _gen(0)) - x
    assert float(noise.std()) == pytest.approx(0.04, rel=0.02)
    lag1 = float((noise[..., 1:] * noise[..., :-1]).mean() / noise.var())
    assert lag1 > 0.5  # white noise would give ~0


def test_rician_noise_biases_dark_pixels_up():
    x = torch.full((4, 1, 32, 32), 0.02)
    y = get_shift("rician").fn(x, 0.05, _gen(0))
    assert float(y.mean()) > 0.05  # magnitude noise never averages out at low signal


def test_vignette_keeps_centre_and_darkens_corners():
    x = torch.full((1, 1, 33, 33), 0.8)
    y = get_shift("vignette").fn(x, 0.5, None)
    assert float(y[0, 0, 16, 16]) == pytest.approx(0.8)
    assert float(y[0, 0, 0, 0]) == pytest.approx(0.8 * 0.5)


def test_target_ranges_disjoint_from_source():
    assert ranges_disjoint()
    for name, intervals in TARGET_RANGES.items():
        assert name in SHIFTS
        if name in SOURCE_RANGES:
            s_lo, s_hi = SOURCE_RANGES[name]
            for lo, hi in intervals:
                assert hi < s_lo or lo > s_hi, (name, lo, hi)
    # The checker really detects an overlap.
    assert not ranges_disjoint(target={"contrast": ((1.2, 1.3),)})


def test_target_centers_fixed_and_inside_target_ranges():
    centers = make_target_centers()
    assert centers == make_target_centers()
    names = [c.name for c in centers]
    assert len(names) == len(set(names)) >= 8
    assert all(n.startswith("tgt_") for n in names)
    used = set()
    for c in centers:
        for name, strength in c.shifts:
            used.add(name)
            assert any(lo <= strength <= hi for lo, hi in TARGET_RANGES[name]), (c.name, name, strength)
    assert set(HELDOUT_SHIFTS) <= used, "every held-out family should appear in some target center"


def test_apply_center_is_pure_and_ordered():
    x = _images(c=3)
    before = x.clone()
    center = VirtualCenter("c", (("brightness", 0.1), ("gaussian_noise", 0.02)))
    y = apply_center(x, center, _gen(0))
    assert torch.equal(x, before)
    g = _gen(0)
    expected = S.gaussian_noise(S.brightness(x, 0.1, g), 0.02, g)
    assert torch.equal(y, expected)
    empty = apply_center(x, VirtualCenter("none", ()))
    assert torch.equal(empty, x) and empty.data_ptr() != x.data_ptr()


def test_apply_centers_matches_apply_center_per_group():
    x = _images(b=10, c=1)
    before = x.clone()
    centers = make_source_centers(3, seed=0)
    ids = torch.tensor([2, 0, 0, 1, 2, 2, 0, 1, 1, 0])
    out = apply_centers(x, ids, centers, _gen(5))
    assert torch.equal(x, before)
    g = _gen(5)  # groups are processed in increasing center id, sharing one generator
    for cid in range(3):
        mask = ids == cid
        assert torch.equal(out[mask], apply_center(x[mask], centers[cid], g))
    assert torch.equal(out, apply_centers(x, ids, centers, _gen(5)))


def test_apply_centers_rejects_bad_ids():
    x = _images(b=4)
    centers = make_source_centers(2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        apply_centers(x, torch.tensor([0, 1, 2, 0]), centers)
    with pytest.raises(ValueError, match="shape"):
        apply_centers(x, torch.tensor([0, 1]), centers)


def test_virtual_center_json_round_trip():
    for c in make_source_centers(2) + make_target_centers():
        back = VirtualCenter.from_dict(json.loads(json.dumps(c.to_dict())))
        assert back == c
        assert isinstance(back.shifts, tuple) and isinstance(back.shifts[0], tuple)


@pytest.mark.parametrize("channels", [1, 3])
def test_save_center_grid_writes_png(tmp_path, channels):
    image = _images(b=1, c=channels)[0]
    path = save_center_grid(image, make_source_centers(2) + make_target_centers(), tmp_path / "sub" / "grid.png")
    assert path.is_file()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- colour families (#13)

from hybrid.shifts import RGB_HELDOUT_SHIFTS, RGB_SOURCE_RANGES, RGB_TRAIN_SHIFTS  # noqa: E402

COLOUR = {name: TYPICAL[name] for name in ("white_balance", "saturation", "hue", "illumination_gradient", "jpeg")}


def _rgb(n: int = 4, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, size, size, generator=g) * 0.8 + 0.1


def test_colour_families_are_registered_for_rgb_only():
    assert RGB_TRAIN_SHIFTS == ("white_balance", "saturation", "hue")
    assert set(RGB_HELDOUT_SHIFTS) == {"illumination_gradient", "jpeg"}
    assert tuple(RGB_SOURCE_RANGES) == RGB_TRAIN_SHIFTS and ranges_disjoint()
    assert set(COLOUR) == set(RGB_TRAIN_SHIFTS + RGB_HELDOUT_SHIFTS)


@pytest.mark.parametrize("name", sorted(COLOUR))
def test_colour_shift_is_pure_batched_in_range_and_identity_at_zero(name):
    fn = SHIFTS[name].fn
    x = _rgb()
    kept = x.clone()
    out = fn(x, COLOUR[name], torch.Generator().manual_seed(0))
    assert torch.equal(x, kept)  # pure
    assert out.shape == x.shape and out.dtype == x.dtype and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, x, atol=1e-3)
    one_by_one = torch.cat([fn(x[i:i + 1], COLOUR[name], torch.Generator().manual_seed(0)) for i in range(len(x))])
    torch.testing.assert_close(out, one_by_one)  # each image on its own
    torch.testing.assert_close(fn(x, 0.0, None), x)
    torch.testing.assert_close(fn(x.double(), COLOUR[name], None).float(), out, atol=2e-2, rtol=0)


def test_colour_shifts_do_what_their_names_say():
    x = _rgb()
    warm = SHIFTS["white_balance"].fn(x * 0.8, 0.2, None)
    assert (warm[:, 0] / warm[:, 2]).mean() > ((x * 0.8)[:, 0] / (x * 0.8)[:, 2]).mean()
    grey = SHIFTS["saturation"].fn(x, -1.0, None)
    assert torch.allclose(grey[:, 0], grey[:, 1], atol=1e-6) and torch.allclose(grey[:, 1], grey[:, 2], atol=1e-6)
    mid = torch.full((1, 3, 4, 4), 0.5) + torch.tensor([0.1, 0.0, -0.1]).view(1, 3, 1, 1)
    turned = SHIFTS["hue"].fn(mid, 0.05, None)
    luma = lambda t: (t * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1)  # noqa: E731
    torch.testing.assert_close(luma(turned), luma(mid), atol=1e-5, rtol=0)  # hue turns, brightness stays
    lit = SHIFTS["illumination_gradient"].fn(torch.full((1, 3, 4, 8), 0.5), 0.5, None)
    assert lit[..., 0].mean() > lit[..., -1].mean()
    with pytest.raises(ValueError, match="RGB"):
        SHIFTS["white_balance"].fn(torch.rand(2, 1, 4, 4), 0.1, None)


def test_rgb_runs_get_colour_source_target_and_validation_centers():
    gray, colour = make_source_centers(4, seed=0, sampling="stratified"), make_source_centers(
        4, seed=0, sampling="stratified", rgb=True)
    assert all({n for n, _ in c.shifts} == set(SOURCE_RANGES) for c in gray)
    for center in colour:
        names = [n for n, _ in center.shifts]
        assert names[:3] == list(RGB_TRAIN_SHIFTS) and names[-1] == "gaussian_noise"  # noise stays last
        for name, strength in center.shifts:
            lo, hi = (RGB_SOURCE_RANGES | SOURCE_RANGES)[name]
            assert lo <= strength <= hi
    assert make_target_centers() == make_target_centers(rgb=False)  # grayscale runs are unchanged
    extra = make_target_centers(rgb=True)[len(make_target_centers()):]
    assert {n for c in extra for n, _ in c.shifts} == set(RGB_TRAIN_SHIFTS + RGB_HELDOUT_SHIFTS)
    for center in extra:
        for name, strength in center.shifts:
            assert any(lo <= strength <= hi for lo, hi in TARGET_RANGES[name]), center
    extra_val = make_validation_centers(rgb=True)[len(make_validation_centers()):]
    for center in extra_val:  # colour train families between their source and target ranges
        for name, strength in center.shifts:
            lo, hi = RGB_SOURCE_RANGES[name]
            assert not lo <= strength <= hi and not any(a <= strength <= b for a, b in TARGET_RANGES[name])


def test_an_rgb_run_trains_on_colour_centers_and_is_scored_on_colour_targets(multicenter_run):
    import json as _json

    from hybrid.config import TrainConfig

    report = _json.loads((multicenter_run / "report.json").read_text())
    assert report["data"]["n_channels"] == 3
    colour_targets = {c.name for c in make_target_centers(rgb=True)} - {c.name for c in make_target_centers()}
    assert colour_targets <= set(report["domains"]) and set(report["unseen"]) >= colour_targets
    centers = _json.loads((multicenter_run / "centers.json").read_text())
    assert all("white_balance" in {n for n, _ in c["shifts"]} for c in centers["source"] if c["name"] != "clean")
    old = {k: v for k, v in TrainConfig().to_dict().items() if k != "rgb_shifts"}
    assert TrainConfig.from_dict(old).rgb_shifts is False  # runs saved before colour centers keep theirs
