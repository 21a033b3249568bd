"""Data layer: real MedMNIST and HAM10000 files from `data_root`, synthetic files only for errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from hybrid import data as D
from hybrid.data import DataError

HAM = "ham10000_sources_64.npz"
VIENNA_SOURCES = ["vidir_molemax", "vidir_modern", "vienna_dias"]


def _rng_images(n, h=8, w=8, c=None, seed=0):
    shape = (n, h, w) if c is None else (n, h, w, c)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# ---------------------------------------------------------------- MedMNIST (real files)


def test_pneumoniamnist_real(data_root):
    b = D.load_medmnist("pneumoniamnist", data_root, download=False)
    assert (len(b.train), len(b.val), len(b.test)) == (4708, 524, 624)
    assert b.train.images.shape == (4708, 28, 28, 1) and b.train.images.dtype == np.uint8
    assert b.train.labels.dtype == np.int64 and b.train.labels.shape == (4708,)
    assert (b.n_classes, b.n_channels, b.positive_class) == (2, 1, 1)
    assert b.class_names == ["normal", "pneumonia"]
    assert D.class_counts(b.train.labels, 2) == [1214, 3494]
    assert b.test_domains == {}
    summary = json.loads(json.dumps(b.describe()))
    assert summary["splits"]["test"] == {"n": 624, "class_counts": [234, 390]}


def test_breastmnist_disease_label_is_zero(data_root):
    b = D.load_medmnist("BreastMNIST", data_root)
    assert b.positive_class == 0 and "malignant" in b.class_names[0]
    assert D.class_counts(b.train.labels, 2) == [147, 399]


def test_retinamnist_rgb_five_classes(data_root):
    b = D.load_dataset("retinamnist", data_root, seed=3, train_centers=None)  # CLI passes all options
    assert b.n_classes == 5 and b.n_channels == 3
    assert b.train.images.shape == (1080, 28, 28, 3)
    assert D.class_counts(b.test.labels, 5) == [174, 46, 92, 68, 20]


def test_present_file_is_never_downloaded(data_root, monkeypatch):
    import medmnist.dataset

    def no_network(self):
        raise AssertionError("download attempted although the file exists")

    monkeypatch.setattr(medmnist.dataset.MedMNIST, "download", no_network)
    assert len(D.load_medmnist("pneumoniamnist", data_root, download=True).test) == 624


def test_missing_medmnist_file_says_where_and_how(tmp_path):
    with pytest.raises(DataError, match="HYBRID_DATA_ROOT") as err:
        D.load_medmnist("pneumoniamnist", tmp_path, size=64, download=False)
    assert str(tmp_path / "pneumoniamnist_64.npz") in str(err.value)
    assert "zenodo" in str(err.value).lower()


@pytest.mark.parametrize(
    "name, match",
    [("nosuchmnist", "pneumoniamnist"), ("organmnist3d", "3D"), ("chestmnist", "multi-label")],
)
def test_unsupported_medmnist_names(name, match, tmp_path):
    with pytest.raises(DataError, match=match):
        D.load_medmnist(name, tmp_path, download=False)


def test_bad_medmnist_size(data_root):
    with pytest.raises(DataError, match="224"):
        D.load_medmnist("pneumoniamnist", data_root, size=32)


# ---------------------------------------------------------------- images_to_tensor


def test_images_to_tensor_range_shape_and_channels():
    gray = _rng_images(4, 28, 28)
    x = D.images_to_tensor(gray)
    assert x.shape == (4, 1, 28, 28) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert torch.allclose(x[:, 0] * 255, torch.from_numpy(gray).float())

    x3 = D.images_to_tensor(gray[..., None], size=16, channels=3)
    assert x3.shape == (4, 3, 16, 16) and torch.equal(x3[:, 0], x3[:, 2])
    assert 0.0 <= x3.min() and x3.max() <= 1.0

    rgb = _rng_images(2, 8, 8, 3)
    x1 = D.images_to_tensor(rgb, channels=1)
    assert x1.shape == (2, 1, 8, 8)
    assert torch.allclose(x1[:, 0], torch.from_numpy(rgb).float().mean(-1) / 255)

    up = D.images_to_tensor(np.full((1, 4, 4, 1), 200, np.uint8), size=32)
    assert up.shape == (1, 1, 32, 32) and torch.allclose(up, torch.full_like(up, 200 / 255))


def test_images_to_tensor_rejects_float_input():
    with pytest.raises(DataError, match="uint8"):
        D.images_to_tensor(np.zeros((2, 8, 8), np.float32))


# ---------------------------------------------------------------- plain .npz


def test_load_npz_medmnist_layout(tmp_path):
    path = tmp_path / "toy.npz"
    arrays = {}
    for i, (s, n) in enumerate([("train", 12), ("val", 4), ("test", 6)]):
        arrays[f"{s}_images"] = _rng_images(n, seed=i).astype(np.float32) / 255  # floats in [0, 1] are accepted
        arrays[f"{s}_labels"] = (np.arange(n) % 3).reshape(-1, 1)
    np.savez(path, **arrays, label_names=np.array(["a", "b", "c"]))
    b = D.load_npz(path)
    assert (len(b.train), len(b.val), len(b.test)) == (12, 4, 6)
    assert b.train.images.dtype == np.uint8 and b.train.images.shape == (12, 8, 8, 1)
    assert np.array_equal(b.val.images[..., 0], _rng_images(4, seed=1))
    assert b.n_classes == 3 and b.class_names == ["a", "b", "c"] and b.name == "toy"
    assert np.array_equal(D.load_dataset(str(path), seed=5).test.labels, b.test.labels)  # fixed splits kept



def test_only_center_options_a_user_set_are_named_as_ignored(tmp_path, caplog):
    """A single-center file gets the run's default label and center fields too; only a changed one is a mistake."""
    path = tmp_path / "plain.npz"
    np.savez(path, images=_rng_images(40), labels=np.arange(40) % 2)
    with caplog.at_level("WARNING", logger="hybrid.data"):
        D.load_dataset(str(path), label_field="labels", center_field="center_ids")
    assert "ignores" not in caplog.text
    with caplog.at_level("WARNING", logger="hybrid.data"):
        D.load_dataset(str(path), label_field="malignant", center_field="center_ids")
    assert "load_npz ignores ['label_field']" in caplog.text


def test_load_npz_plain_arrays_split_reproducibly(tmp_path):
    path = tmp_path / "plain.npz"
    labels = np.r_[np.zeros(70, int), np.ones(30, int)]
    np.savez(path, images=_rng_images(100, 6, 6, 3), labels=labels)

    def parts(seed):
        b = D.load_npz(path, seed=seed, val_fraction=0.1, test_fraction=0.2)
        # images are unique random noise, so their bytes identify the original sample
        return b, [{im.tobytes() for im in getattr(b, s).images} for s in D.SPLITS]

    b, (tr, va, te) = parts(0)
    assert (len(tr), len(va), len(te)) == (70, 10, 20)
    assert not (tr & va or tr & te or va & te) and len(tr | va | te) == 100
    assert D.class_counts(b.test.labels, 2) == [14, 6]  # stratified: 70/30 kept in the test split
    assert parts(0)[1] == [tr, va, te]
    assert parts(1)[1] != [tr, va, te]


# ---------------------------------------------------------------- multi-center (real HAM10000 subset)


def test_multicenter_leave_rosendahl_out(data_root):
    b = D.load_multicenter_npz(
        data_root / HAM, label_field="malignant", center_field="source_ids",
        train_centers=VIENNA_SOURCES, test_centers=["rosendahl"],
    )
    assert list(b.test_domains) == ["rosendahl"]
    rosendahl = b.test_domains["rosendahl"]
    assert len(rosendahl) == 1259 and int(rosendahl.labels.sum()) == 526
    assert len(b.train) + len(b.val) + len(b.test) == 4725
    assert set(np.unique(b.train.centers)) == {0, 1, 2}
    assert set(np.unique(b.val.centers)) <= {0, 1, 2} and set(np.unique(b.test.centers)) <= {0, 1, 2}
    assert (b.n_classes, b.n_channels, b.positive_class) == (2, 3, 1)
    assert b.class_names == ["benign", "malignant"]
    assert b.center_names == VIENNA_SOURCES + ["rosendahl"]
    again = D.load_multicenter_npz(data_root / HAM, label_field="malignant", center_field="source_ids",
                                   test_centers=["3"])  # id string; train defaults to the rest
    assert np.array_equal(again.val.images, b.val.images)
    json.dumps(b.describe())


def test_multicenter_by_center_name_prefix(data_root):
    b = D.load_dataset(HAM, root=data_root, center_field="center_ids",
                       train_centers=["Vienna"], test_centers=["Queensland"])
    assert b.n_classes == 7 and b.class_names[4] == "mel"
    [(name, dom)] = b.test_domains.items()
    assert name.startswith("Queensland") and len(dom) == 1259
    assert len(b.train) + len(b.val) + len(b.test) == 5984 - 1259
    assert set(np.unique(b.train.centers)) == {0}


@pytest.mark.parametrize(
    "centers, match", [(["Paris"], "rosendahl"), (["vidir"], "several"), (["7"], "Unknown")]
)
def test_multicenter_bad_center(data_root, centers, match):
    with pytest.raises(DataError, match=match):
        D.load_multicenter_npz(data_root / HAM, center_field="source_ids", test_centers=centers)


def test_multicenter_counts_classes_absent_from_training(tmp_path):
    path = tmp_path / "mc.npz"
    labels = np.r_[np.arange(40) % 2, np.full(10, 2)]  # class 2 only at the held-out center
    centers = np.r_[np.zeros(20, int), np.ones(20, int), np.full(10, 2)]
    np.savez(path, images=_rng_images(50), labels=labels, center_ids=centers)
    b = D.load_multicenter_npz(path)  # default: train on 0 and 1, hold out the last center
    assert b.n_classes == 3 and list(b.test_domains) == ["2"]
    assert D.class_counts(b.train.labels, 3)[2] == 0
    assert D.load_dataset(str(path)).n_classes == 3  # no train_images -> treated as multi-center


# ---------------------------------------------------------------- center folders


def _write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_load_center_folder(tmp_path):
    rng = np.random.default_rng(0)
    for center, n in [("centerA", 2), ("centerB", 1)]:
        for cls in ["normal", "pneumonia"]:
            for i in range(n):
                _write_png(tmp_path / center / cls / f"{i}.png", rng.integers(0, 256, (10, 12), dtype=np.uint8))
    (tmp_path / "centerA" / "notes.txt").write_text("ignored")
    out = D.load_center_folder(tmp_path)
    assert list(out) == ["centerA", "centerB"]
    assert out["centerA"].images.shape == (4, 10, 12, 1)
    assert out["centerA"].labels.tolist() == [0, 0, 1, 1]
    assert out["centerB"].centers.tolist() == [1, 1]

    _write_png(tmp_path / "centerC" / "pneumonia" / "x.png", rng.integers(0, 256, (10, 12, 3), dtype=np.uint8))
    out = D.load_center_folder(tmp_path)  # one colour image makes every center RGB
    assert out["centerA"].images.shape == (4, 10, 12, 3) and out["centerC"].labels.tolist() == [1]

    _write_png(tmp_path / "centerB" / "normal" / "big.png", np.zeros((20, 20), np.uint8))
    with pytest.raises(DataError, match="resize"):
        D.load_center_folder(tmp_path)


def test_center_folders_skip_what_the_operating_system_leaves_there(tmp_path):
    """Windows thumbnails, desktop.ini and a macOS zip's __MACOSX forks are not data: skipped like hidden files,
    while any other stray file in a class folder is still refused."""
    rng = np.random.default_rng(0)
    for center in ("a", "b"):
        for cls in ("benign", "malignant"):
            _write_png(tmp_path / center / cls / "0.png", rng.integers(0, 256, (8, 8), dtype=np.uint8))
            (tmp_path / center / cls / "Thumbs.db").write_bytes(b"\x00" * 16)
        (tmp_path / center / "desktop.ini").write_text("[.ShellClassInfo]")
    (tmp_path / "__MACOSX" / "a" / "benign").mkdir(parents=True)
    (tmp_path / "__MACOSX" / "a" / "benign" / "._0.png").write_bytes(b"\x00" * 16)
    out = D.load_center_folder(tmp_path)
    assert list(out) == ["a", "b"] and out["a"].labels.tolist() == [0, 1]
    (tmp_path / "a" / "benign" / "scan.dcm").write_bytes(b"\x00")
    with pytest.raises(DataError, match="scan.dcm is not a .png/.jpg image"):
        D.load_center_folder(tmp_path)


def test_load_dataset_rejects_folders(tmp_path):
    with pytest.raises(DataError, match="load_center_folder"):
        D.load_dataset(str(tmp_path))


# ---------------------------------------------------------------- errors a user can make


def _save(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_missing_file_mentions_path(tmp_path):
    with pytest.raises(DataError, match="not found") as err:
        D.load_npz(tmp_path / "nope.npz")
    assert str(tmp_path / "nope.npz") in str(err.value)


def test_corrupt_file(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(DataError, match="corrupt"):
        D.load_npz(path)
    with pytest.raises(DataError, match="corrupt"):
        D.load_dataset(str(path))


def test_missing_keys_lists_expected(tmp_path):
    path = _save(tmp_path / "x.npz", pixels=_rng_images(5), y=np.zeros(5, int))
    with pytest.raises(DataError, match="train_images") as err:
        D.load_npz(path)
    assert "pixels" in str(err.value) and "'labels'" in str(err.value)


@pytest.mark.parametrize(
    "images, labels, match",
    [
        (np.full((10, 4, 4), np.nan, np.float32), np.zeros(10, int), "NaN"),
        (_rng_images(10), np.zeros(9, int), "9 labels for 10 images"),
        (_rng_images(10), np.zeros((10, 2), int), "shape"),
        (_rng_images(10, c=2), np.zeros(10, int), "C = 1 or 3"),
        (_rng_images(10), np.full(10, 0.5), "whole numbers"),
        (_rng_images(10), -np.ones(10, int), "negative"),
        (np.full((10, 4, 4), 300.0), np.zeros(10, int), "rescale"),
        (_rng_images(10).astype(np.int16) * 4, np.zeros(10, int), "uint8"),
    ],
)
def test_bad_arrays(tmp_path, images, labels, match):
    with pytest.raises(DataError, match=match):
        D.load_npz(_save(tmp_path / "bad.npz", images=images, labels=labels))


def test_empty_split(tmp_path):
    arrays = {f"{s}_{k}": _rng_images(3) if k == "images" else np.zeros(3, int)
              for s in D.SPLITS for k in ("images", "labels")}
    arrays["val_images"], arrays["val_labels"] = np.zeros((0, 8, 8), np.uint8), np.zeros(0, int)
    with pytest.raises(DataError, match="empty"):
        D.load_npz(_save(tmp_path / "e.npz", **arrays))


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(DataError, match="pneumoniamnist") as err:
        D.load_dataset("pneumonia-xray")
    assert "breastmnist" in str(err.value)


def test_resolve_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("HYBRID_DATA_ROOT", str(tmp_path))
    assert D.resolve_data_root(None) == tmp_path
    assert D.resolve_data_root("/elsewhere") == D.Path("/elsewhere")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYBRID_DATA_ROOT", "../shared/data")  # relative: to the folder the process started in
    assert D.resolve_data_root(None) == tmp_path / ".." / "shared" / "data"
    monkeypatch.delenv("HYBRID_DATA_ROOT")
    assert D.resolve_data_root(None) is None


def test_a_failed_download_leaves_no_empty_data_folder_behind(tmp_path, monkeypatch):
    import medmnist.dataset

    def offline(self):
        raise OSError("no network")

    monkeypatch.setattr(medmnist.dataset.MedMNIST, "download", offline)
    missing = tmp_path / "mistyped" / "data"
    with pytest.raises(DataError, match="download failed"):
        D.load_medmnist("pneumoniamnist", missing)
    assert not (tmp_path / "mistyped").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(DataError, match="download failed"):
        D.load_medmnist("pneumoniamnist", existing)
    assert existing.is_dir()  # a folder the user made stays


def test_folder_classes_follow_the_runs_class_names_in_any_case(tmp_path):
    """`normal/Pneumonia` sorts case-sensitively as [Pneumonia, normal]: ids must come from the run's names."""
    rng = np.random.default_rng(0)
    for cls in ["normal", "Pneumonia"]:
        _write_png(tmp_path / "site" / cls / "0.png", rng.integers(0, 256, (8, 8), dtype=np.uint8))
    _write_png(tmp_path / "site2" / "1" / "0.png", rng.integers(0, 256, (8, 8), dtype=np.uint8))
    out = D.load_center_folder(tmp_path, ["normal", "pneumonia"])
    pneumonia = np.asarray(Image.open(tmp_path / "site" / "Pneumonia" / "0.png"))
    [row] = [i for i, image in enumerate(out["site"].images[..., 0]) if np.array_equal(image, pneumonia)]
    assert out["site"].labels[row] == 1 and sorted(out["site"].labels) == [0, 1]
    assert out["site2"].labels.tolist() == [1]
    with pytest.raises(DataError, match=r"match none of the run's classes.*'benign', 'malignant'"):
        D.load_center_folder(tmp_path, ["benign", "malignant"])


def test_16_bit_png_is_scaled_not_clipped_to_white(tmp_path):
    values = np.array([[0, 257 * 10], [257 * 128, 65535]], dtype=np.uint16)
    path = tmp_path / "site" / "normal" / "x.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")  # PIL keeps 16 bits
    image = D.load_center_folder(tmp_path)["site"].images[0, ..., 0]
    assert image.tolist() == [[0, 10], [128, 255]]


def test_12_bit_data_in_16_bit_pngs_is_warned_about_not_silently_darkened(tmp_path, caplog):
    """X-ray exports often hold 12-bit values in 16-bit files: scaled by 65535 they keep 17 grey levels."""
    rng = np.random.default_rng(0)
    for k in range(2):
        path = tmp_path / "site" / "normal" / f"{k}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 4096, (8, 8)).astype(np.uint16)).save(path)
    with caplog.at_level("WARNING", logger="hybrid"):
        image = D.load_center_folder(tmp_path)["site"].images
    assert image.max() <= 16  # the scale itself is unchanged (it must not depend on the images)
    (warning,) = [r.getMessage() for r in caplog.records if "16-bit images" in r.getMessage()]
    assert "the 2 16-bit images" in warning and "at most 12 bits" in warning and "times 16" in warning
    caplog.clear()
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(tmp_path / "site" / "normal" / "1.png")
    with caplog.at_level("WARNING", logger="hybrid"):
        D.load_center_folder(tmp_path)  # one image uses the 16 bits: no warning
    assert not [r for r in caplog.records if "16-bit images" in r.getMessage()]


def test_float_images_are_read_on_the_scale_they_use(tmp_path):
    from hybrid.images import as_images

    unit = np.linspace(0, 1, 64).reshape(1, 8, 8)
    assert as_images(unit, "t")[0, -1, -1, 0] == 255 and as_images(unit * 255, "t")[0, -1, -1, 0] == 255
    assert as_images(unit * 0.5, "t").max() == 128  # a dark 0-1 image stays 0-1
    overshoot = np.linspace(0, 1, 1024).reshape(1, 32, 32)
    overshoot[0, 0, 0] = 1.01  # one value in 1024 above 1: neither a 0-1 nor a 0-255 image
    with pytest.raises(DataError, match="ambiguous"):
        as_images(overshoot, "t")


def test_lazy_images_slice_like_the_converted_tensor():
    from hybrid.images import LazyImages

    images = np.random.default_rng(0).integers(0, 256, (10, 20, 20, 1), dtype=np.uint8)
    lazy = LazyImages(images, size=16, channels=3)
    whole = D.images_to_tensor(images, size=16, channels=3)
    assert len(lazy) == 10 and lazy.shape == tuple(whole.shape)
    assert torch.equal(torch.cat([lazy[0:4], lazy[4:10]]), whole) and torch.equal(lazy[8:20], whole[8:])
    with pytest.raises(TypeError, match="slices"):
        lazy[3]


def test_classes_keep_a_subset_relabelled_in_the_order_given(tmp_path):
    from hybrid.data import select_classes

    rng = np.random.default_rng(0)
    n = 120
    labels = np.arange(n) % 4
    np.savez(tmp_path / "dx.npz", images=rng.integers(0, 255, (n, 8, 8), dtype=np.uint8), labels=labels,
             label_names=np.array(["mel", "bcc", "nv", "bkl"]))
    bundle = D.load_dataset(str(tmp_path / "dx.npz"))
    chosen = select_classes(bundle, "MEL, nv")
    assert chosen.class_names == ["mel", "nv"] and chosen.n_classes == 2 and chosen.positive_class == 0
    assert chosen.class_ids == [0, 2]
    for name in ("train", "val", "test"):
        before, after = getattr(bundle, name), getattr(chosen, name)
        kept = np.isin(before.labels, [0, 2])
        assert len(after) == kept.sum() and set(after.labels.tolist()) == {0, 1}
        assert np.array_equal(after.labels, np.where(before.labels[kept] == 0, 0, 1))  # mel -> 0, nv -> 1
        assert np.array_equal(after.images, before.images[kept])
    assert select_classes(bundle, "2,0").class_names == ["nv", "mel"]  # ids work, order is the user's
    for spec, match in (("mel,scc", r"Unknown class 'scc'.*0=mel, 1=bcc, 2=nv, 3=bkl"), ("mel", "at least two"),
                        ("mel,MEL", "twice")):
        with pytest.raises(DataError, match=match):
            select_classes(bundle, spec)
