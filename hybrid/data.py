"""Data loading: MedMNIST 2D, plain or multi-center .npz files, and per-center image folders.

Every loader returns uint8 NHWC images and int64 labels; the model side converts with
`images_to_tensor`. Anything a user can get wrong raises `DataError` with one sentence on
what is wrong and how to fix it, so a bad file fails at load time, not mid-training.
"""

from __future__ import annotations

import inspect
import logging
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

ENV_DATA_ROOT = "HYBRID_DATA_ROOT"
MEDMNIST_SIZES = (28, 64, 128, 224)
SPLITS = ("train", "val", "test")
MEDMNIST_KEYS = tuple(f"{s}_{k}" for s in SPLITS for k in ("images", "labels"))
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
CENTER_NAME_FIELDS = {"center_ids": "center_names", "source_ids": "source_names"}  # ids -> names array
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}  # PIL modes with one intensity channel
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)
_INT_IDS = "store class ids as integers 0..K-1"


class DataError(ValueError):
    """A data problem the user can fix; the message says what is wrong and how to fix it."""


@dataclass
class Split:
    images: np.ndarray  # uint8 (N, H, W, C), C = 1 or 3
    labels: np.ndarray  # int64 (N,)
    centers: np.ndarray | None = None  # int64 (N,) real center ids when known

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class DatasetBundle:
    name: str
    train: Split
    val: Split
    test: Split
    n_classes: int
    n_channels: int
    class_names: list[str]
    positive_class: int  # disease label for sensitivity/specificity (breastmnist: 0 = malignant)
    test_domains: dict[str, Split] = field(default_factory=dict)  # real held-out centers
    center_names: list[str] = field(default_factory=list)  # indexed by center id

    def describe(self) -> dict:
        """JSON-able summary: sizes and class counts per split and held-out domain."""

        def one(split: Split) -> dict:
            out = {"n": len(split), "class_counts": class_counts(split.labels, self.n_classes)}
            if split.centers is not None and len(split):
                ids, counts = np.unique(split.centers, return_counts=True)
                names = [self.center_names[i] if i < len(self.center_names) else str(i) for i in ids]
                out["centers"] = {n: int(c) for n, c in zip(names, counts)}
            return out

        return {
            "name": self.name,
            "n_classes": self.n_classes,
            "n_channels": self.n_channels,
            "image_shape": list(self.train.images.shape[1:]),
            "class_names": list(self.class_names),
            "positive_class": self.positive_class,
            "center_names": list(self.center_names),
            "splits": {s: one(getattr(self, s)) for s in SPLITS},
            "test_domains": {k: one(v) for k, v in self.test_domains.items()},
        }


# ---------------------------------------------------------------- validation helpers


def _as_images(arr, where: str) -> np.ndarray:
    """Validate images and return uint8 (N, H, W, C); floats in [0, 1] or [0, 255] are converted."""
    arr = np.asarray(arr)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise DataError(f"{where}: images have shape {arr.shape}; expected (N, H, W) or (N, H, W, C) "
                        "with C = 1 or 3.")
    if arr.size == 0:
        raise DataError(f"{where}: the split is empty; every split needs at least one image.")
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise DataError(f"{where}: images contain NaN or inf values; clean or drop those images first.")
        lo, hi = float(arr.min()), float(arr.max())
        if lo >= 0 and hi <= 255:
            return np.rint(arr * 255 if hi <= 1 else arr).astype(np.uint8)
        raise DataError(f"{where}: float images range over [{lo:g}, {hi:g}]; "
                        "rescale them to [0, 1] or [0, 255].")
    # Integers in 0..255 convert losslessly (e.g. images saved as int64 by accident).
    if np.issubdtype(arr.dtype, np.integer) and arr.min() >= 0 and arr.max() <= 255:
        return arr.astype(np.uint8)
    raise DataError(f"{where}: images have dtype {arr.dtype}; save them as uint8, "
                    "or as floats in [0, 1] or [0, 255].")


def _as_labels(arr, n: int, where: str) -> np.ndarray:
    """Validate one integer label per image and return int64 (N,)."""
    arr = np.asarray(arr)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DataError(f"{where}: labels have shape {arr.shape}; expected (N,) or (N, 1), one class id per "
                        "image (multi-label targets are not supported).")
    if len(arr) != n:
        raise DataError(f"{where}: {len(arr)} labels for {n} images; each image needs exactly one label.")
    if np.issubdtype(arr.dtype, np.floating):
        if not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
            raise DataError(f"{where}: labels are not whole numbers; {_INT_IDS}.")
    elif not (arr.dtype == bool or np.issubdtype(arr.dtype, np.integer)):
        raise DataError(f"{where}: labels have dtype {arr.dtype}; {_INT_IDS}.")
    if n and arr.min() < 0:
        raise DataError(f"{where}: labels contain negative values ({arr.min()}); {_INT_IDS}.")
    return arr.astype(np.int64)


def _make_split(images, labels, where: str) -> Split:
    images = _as_images(images, where)
    return Split(images, _as_labels(labels, len(images), where))


def _take(split: Split, idx: np.ndarray) -> Split:
    centers = None if split.centers is None else split.centers[idx]
    return Split(split.images[idx], split.labels[idx], centers)


def _open_npz(path: Path) -> np.lib.npyio.NpzFile:
    if not path.is_file():
        raise DataError(f"Data file {path} not found; check the path, or point --data-root / "
                        f"{ENV_DATA_ROOT} at the folder holding it.")
    try:
        npz = np.load(path, allow_pickle=False)
    except _READ_ERRORS as e:
        raise DataError(f"Cannot read {path} as a NumPy .npz archive ({e}); the file is corrupt or not an "
                        ".npz, re-download it or re-save it with np.savez.") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(f"{path} holds a single array, not an .npz archive of named arrays; "
                        "save it with np.savez(path, images=..., labels=...).")
    return npz


def _read(npz: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    try:  # members are decompressed lazily, so corruption can surface only here
        return npz[key]
    except _READ_ERRORS as e:
        raise DataError(f"Cannot read array '{key}' from {path} ({e}); the file is corrupt or holds pickled "
                        "objects, re-save it with plain NumPy arrays.") from None


def _read_medmnist_layout(npz, path: Path) -> dict[str, Split]:
    return {s: _make_split(_read(npz, f"{s}_images", path), _read(npz, f"{s}_labels", path),
                           f"{path.name} [{s}]") for s in SPLITS}


def load_eval_npz(path) -> Split:
    """All evaluation images of an .npz: its `test_*` arrays, or its `images`/`labels` arrays."""
    path = Path(path)
    npz = _open_npz(path)
    keys = set(npz.files)
    for images_key, labels_key in (("test_images", "test_labels"), ("images", "labels")):
        if {images_key, labels_key} <= keys:
            return _make_split(_read(npz, images_key, path), _read(npz, labels_key, path), path.name)
    raise DataError(f"{path} has keys {sorted(keys)}; an evaluation file needs test_images/test_labels "
                    "or images/labels.")


def _split_indices(strata: np.ndarray, seed: int, val_fraction: float, test_fraction: float, where: str):
    """Reproducible stratified (train, val, test) indices.

    Each stratum's members get evenly spaced sort keys in random order, so any prefix of the
    sorted order holds every stratum in proportion while the split sizes stay exactly as asked.
    """
    if not (0 < val_fraction and 0 < test_fraction and val_fraction + test_fraction < 1):
        raise DataError(f"{where}: val_fraction={val_fraction} and test_fraction={test_fraction} "
                        "must be positive and sum to less than 1.")
    n = len(strata)
    n_test, n_val = max(1, round(n * test_fraction)), max(1, round(n * val_fraction))
    if n - n_test - n_val < 1:
        raise DataError(f"{where}: only {n} samples, too few for train/val/test splits; "
                        "add data or lower val_fraction / test_fraction.")
    rng = np.random.default_rng(seed)
    key = np.empty(n)
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        key[idx] = (rng.permutation(len(idx)) + rng.random()) / len(idx)
    order = np.argsort(key, kind="stable")
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return np.sort(train), np.sort(val), np.sort(test)


def _bundle(name, splits, class_names, positive_class, test_domains=None, center_names=None,
            n_classes=0) -> DatasetBundle:
    """Assemble a bundle; n_classes covers labels seen anywhere, so classes absent from training count."""
    parts = [*splits.values(), *(test_domains or {}).values()]
    shapes = sorted({p.images.shape[1:] for p in parts})
    if len(shapes) > 1:
        raise DataError(f"{name}: splits have different image shapes {shapes}; resize all images to one size.")
    n_classes = max(n_classes, len(class_names or []), *(int(p.labels.max()) + 1 for p in parts))
    if n_classes < 2:
        raise DataError(f"{name}: every label is 0; a classifier needs at least two classes.")
    names = [str(c) for c in (class_names or [])]
    names += [str(i) for i in range(len(names), n_classes)]
    return DatasetBundle(name=name, **splits, n_classes=n_classes, n_channels=int(shapes[0][-1]),
                         class_names=names, positive_class=positive_class,
                         test_domains=dict(test_domains or {}), center_names=list(center_names or []))


# ---------------------------------------------------------------- loaders


def resolve_data_root(cli_value: str | None) -> Path | None:
    """--data-root, else $HYBRID_DATA_ROOT, else None (medmnist's default ~/.medmnist)."""
    value = cli_value or os.environ.get(ENV_DATA_ROOT)
    return Path(value).expanduser() if value else None


def medmnist_names() -> list[str]:
    """The MedMNIST datasets this project loads: 2D and single-label."""
    from medmnist import INFO

    return [k for k, v in INFO.items() if not k.endswith("3d") and not v["task"].startswith("multi-label")]


def load_medmnist(name: str, root: Path | None = None, size: int = 28, download: bool = True) -> DatasetBundle:
    """Load a MedMNIST 2D dataset from `root`, downloading only when the file is missing.

    Multi-label ChestMNIST is rejected: every model here predicts one class per image.
    """
    import medmnist
    from medmnist import INFO

    key, valid = name.strip().lower(), ", ".join(medmnist_names())
    if key not in INFO:
        raise DataError(f"Unknown dataset '{name}'; valid MedMNIST 2D names are {valid} "
                        "(or give a path to an .npz file).")
    info = INFO[key]
    if key.endswith("3d"):
        raise DataError(f"'{name}' is a 3D MedMNIST dataset, which is not supported; use a 2D one: {valid}.")
    if info["task"].startswith("multi-label"):
        raise DataError(f"'{name}' is a {info['task']} task, but models here predict one class per image; "
                        f"use a single-label dataset: {valid}.")
    if size not in MEDMNIST_SIZES:
        raise DataError(f"MedMNIST size {size} does not exist; choose one of {MEDMNIST_SIZES}.")
    root = Path(root or medmnist.info.DEFAULT_ROOT or Path.home() / ".medmnist").expanduser()
    flag = "" if size == 28 else f"_{size}"
    path = root / f"{key}{flag}.npz"
    if not path.is_file():
        how = (f"download it from Zenodo ({info['url' + flag]}) and copy it there, "
               f"or set --data-root / {ENV_DATA_ROOT} to the folder that holds it")
        if not download:
            raise DataError(f"MedMNIST file {path} not found and download=False; {how}.")
        try:
            root.mkdir(parents=True, exist_ok=True)
            # Only reached when the file is missing: an existing file is never re-fetched or re-hashed.
            getattr(medmnist, info["python_class"])(split="train", root=str(root), size=size, download=True)
        except Exception as e:  # no network, bad checksum, read-only folder: all need the same manual fix
            path.unlink(missing_ok=True)  # a partial download would later read as a corrupt file
            raise DataError(f"MedMNIST file {path} not found and the download failed "
                            f"({type(e).__name__}); {how}.") from None
    with _open_npz(path) as npz:
        if not set(MEDMNIST_KEYS) <= set(npz.files):
            raise DataError(f"{path} has keys {sorted(npz.files)} but a MedMNIST file needs "
                            f"{list(MEDMNIST_KEYS)}; re-download it from Zenodo.")
        splits = _read_medmnist_layout(npz, path)
    for s in SPLITS:
        if len(splits[s]) != info["n_samples"][s]:
            log.warning("%s: %s has %d images, the official release %d", path, s, len(splits[s]),
                        info["n_samples"][s])
    labels = info["label"]
    return _bundle(f"{key}{flag}", splits, [labels[str(i)] for i in range(len(labels))],
                   positive_class=0 if key == "breastmnist" else 1)


def load_npz(path, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2) -> DatasetBundle:
    """Load an .npz in MedMNIST layout ({train,val,test}_{images,labels}), or plain `images` and
    `labels` split reproducibly (stratified by label) from `seed`; `label_names` names classes."""
    path = Path(path)
    with _open_npz(path) as npz:
        keys = set(npz.files)
        if set(MEDMNIST_KEYS) <= keys:
            splits = _read_medmnist_layout(npz, path)
        elif {"images", "labels"} <= keys:
            full = _make_split(_read(npz, "images", path), _read(npz, "labels", path), path.name)
            idx = _split_indices(full.labels, seed, val_fraction, test_fraction, path.name)
            splits = {s: _take(full, i) for s, i in zip(SPLITS, idx)}
        else:
            raise DataError(f"{path} has keys {sorted(keys)} but needs either {list(MEDMNIST_KEYS)} "
                            "(MedMNIST layout) or 'images' and 'labels'; re-save it with those names.")
        names = [str(x) for x in _read(npz, "label_names", path)] if "label_names" in keys else None
    return _bundle(path.stem, splits, names, positive_class=1)


def _resolve_centers(selectors, names: list[str], what: str) -> list[int] | None:
    """Center names (case-insensitive, exact or unique prefix) or ids -> ids; strings may be comma-separated."""
    if selectors is None:
        return None
    if isinstance(selectors, (str, int, np.integer)):
        selectors = str(selectors).split(",")
    valid = ", ".join(f"{i}={n}" for i, n in enumerate(names))
    ids: list[int] = []
    for sel in selectors:
        s = str(sel).strip()
        low = s.lower()
        if s.isdigit():
            matches = [int(s)] if int(s) < len(names) else []
        else:
            matches = ([i for i, n in enumerate(names) if n.lower() == low]
                       or [i for i, n in enumerate(names) if n.lower().startswith(low)])
        if len(matches) > 1:
            raise DataError(f"{what} entry '{s}' matches several centers "
                            f"({', '.join(names[i] for i in matches)}); give a longer name or an id: {valid}.")
        if not matches:
            raise DataError(f"Unknown center '{s}' in {what}; valid centers (name, unique prefix or id) "
                            f"are: {valid}.")
        if matches[0] not in ids:
            ids.append(matches[0])
    return ids


def load_multicenter_npz(path, label_field: str = "labels", center_field: str = "center_ids",
                         train_centers=None, test_centers=None, seed: int = 0, val_fraction: float = 0.15,
                         test_fraction: float = 0.2) -> DatasetBundle:
    """Leave-centers-out loading of an .npz with `images`, a label array and a center-id array.

    Training centers are split into train/val/test (stratified by center and label); each held-out
    center becomes one `test_domains` entry with all its images. Default: train on every center but
    the last, test on the last. Every Split keeps its center ids for domain-aware training.
    """
    path = Path(path)
    with _open_npz(path) as npz:
        keys = sorted(npz.files)
        missing = [k for k in ("images", label_field, center_field) if k not in keys]
        if missing:
            raise DataError(f"{path} lacks {missing} (it has {keys}); set label_field / center_field to "
                            "arrays it holds, e.g. label_field='labels', center_field='center_ids'.")
        where = f"{path.name} [{label_field}]"
        full = _make_split(_read(npz, "images", path), _read(npz, label_field, path), where)
        full.centers = _as_labels(_read(npz, center_field, path), len(full), f"{path.name} [{center_field}]")
        names_key = CENTER_NAME_FIELDS.get(center_field, center_field.removesuffix("_ids") + "_names")
        center_names = [str(x) for x in _read(npz, names_key, path)] if names_key in keys else []
        class_names = None
        if label_field == "malignant" and full.labels.max() <= 1:
            class_names = ["benign", "malignant"]
        for k in (label_field.removesuffix("s") + "_names", label_field + "_names"):
            if class_names is None and k in keys:
                class_names = [str(x) for x in _read(npz, k, path)]
    center_names += [str(i) for i in range(len(center_names), int(full.centers.max()) + 1)]
    present = np.unique(full.centers).tolist()
    valid = [center_names[c] for c in present]
    train_ids = _resolve_centers(train_centers, center_names, "train_centers")
    test_ids = _resolve_centers(test_centers, center_names, "test_centers")
    if train_ids is None and test_ids is None:
        train_ids, test_ids = present[:-1], present[-1:]
    elif train_ids is None:
        train_ids = [c for c in present if c not in test_ids]
    elif test_ids is None:
        test_ids = [c for c in present if c not in train_ids]
    if set(train_ids) & set(test_ids):
        raise DataError(f"Centers {[center_names[c] for c in set(train_ids) & set(test_ids)]} are in both "
                        "train_centers and test_centers; a held-out center must not be trained on.")
    absent = [center_names[c] for c in [*train_ids, *test_ids] if c not in present]
    if absent:
        raise DataError(f"{path}: centers {absent} have no images; choose among {valid}.")
    if not train_ids:
        raise DataError(f"{path}: no center is left for training (centers present: {valid}); "
                        "pass train_centers, or use load_npz for single-center data.")
    pool = _take(full, np.flatnonzero(np.isin(full.centers, train_ids)))
    n_labels = int(full.labels.max()) + 1
    idx = _split_indices(pool.centers * n_labels + pool.labels, seed, val_fraction, test_fraction, path.name)
    splits = {s: _take(pool, i) for s, i in zip(SPLITS, idx)}
    domains = {center_names[c]: _take(full, np.flatnonzero(full.centers == c)) for c in test_ids}
    return _bundle(path.stem, splits, class_names, positive_class=1, test_domains=domains,
                   center_names=center_names, n_classes=n_labels)


def load_center_folder(root) -> dict[str, Split]:
    """Read root/<center>/<class>/*.png|jpg into one Split per center.

    Class ids follow the class folder names sorted over all centers, so a center missing a class
    keeps the same ids. If any image has colour every center is loaded as RGB, else grayscale.
    """
    from PIL import Image

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Image folder {root} not found; expected a folder laid out as "
                        "root/<center>/<class>/*.png.")
    centers = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = sorted({c.name for p in centers for c in p.iterdir()
                      if c.is_dir() and not c.name.startswith(".")})
    if not classes:
        raise DataError(f"No <center>/<class>/ subfolders under {root}; lay images out as "
                        "root/<center>/<class>/*.png.")
    loaded = {}
    for center in centers:
        files = [(f, k) for k, c in enumerate(classes) if (center / c).is_dir()
                 for f in sorted((center / c).iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise DataError(f"Center folder {center} holds no .png/.jpg images in class subfolders; "
                            f"add images under {center}/<class>/ or remove it.")
        arrays = []
        for f, _ in files:
            try:
                with Image.open(f) as im:
                    arrays.append(np.asarray(im.convert("L" if im.mode in _GRAY_MODES else "RGB")))
            except (OSError, ValueError) as e:
                raise DataError(f"Cannot read image {f} ({e}); remove or replace the file.") from None
        sizes = sorted({a.shape[:2] for a in arrays})
        if len(sizes) > 1:
            raise DataError(f"Images in {center} have different sizes {sizes[:4]}; resize them to one size "
                            "first (e.g. PIL Image.resize).")
        loaded[center.name] = (arrays, [k for _, k in files])
    # Grayscale saved as RGB (equal channels) does not make the folder colour.
    rgb = any(a.ndim == 3 and not (a == a[..., :1]).all() for arrays, _ in loaded.values() for a in arrays)
    out = {}
    for i, (name, (arrays, labels)) in enumerate(loaded.items()):
        if rgb:
            images = np.stack([a if a.ndim == 3 else np.repeat(a[..., None], 3, axis=-1) for a in arrays])
        else:
            images = np.stack([a if a.ndim == 2 else a[..., 0] for a in arrays])[..., None]
        out[name] = Split(images, np.asarray(labels, dtype=np.int64), np.full(len(labels), i, dtype=np.int64))
    return out


_MULTICENTER_KW = {"label_field", "center_field", "train_centers", "test_centers"}
_LOADER_KW = {"download", "seed", "val_fraction", "test_fraction", *_MULTICENTER_KW}


def _kw_for(fn, kw: dict) -> dict:
    """The keywords `fn` accepts; None means "loader default", so unset CLI flags pass straight through."""
    unknown = set(kw) - _LOADER_KW
    if unknown:
        raise TypeError(f"load_dataset() got unexpected keyword arguments {sorted(unknown)}")
    params = inspect.signature(fn).parameters
    # Seeds and fractions are meaningless for fixed splits; center options there are a likely mistake.
    ignored = sorted(k for k in _MULTICENTER_KW if kw.get(k) is not None and k not in params)
    if ignored:
        log.warning("%s ignores %s", fn.__name__, ignored)
    return {k: v for k, v in kw.items() if k in params and v is not None}


def resolve_dataset_path(spec, root: Path | None = None) -> Path:
    """A dataset file path as given, or under `root` when it is relative and only exists there."""
    path = Path(spec).expanduser()
    if not path.exists() and root is not None and not path.is_absolute() and (Path(root) / path).exists():
        path = Path(root) / path
    return path


def load_dataset(spec: str, root: Path | None = None, size: int = 28, **kw) -> DatasetBundle:
    """Load a MedMNIST 2D name or an .npz path (tried under `root` too when relative).

    An .npz is multi-center when it has center ids and either center options are given or it has
    no train_images. Folders are rejected: they are for evaluation via `load_center_folder`.
    """
    from medmnist import INFO

    if str(spec).strip().lower() in INFO:
        return load_medmnist(str(spec), root, size, **_kw_for(load_medmnist, kw))
    path = resolve_dataset_path(spec, root)
    if path.is_dir():
        raise DataError(f"{path} is a folder; image folders are for evaluation only, load them with "
                        "hybrid.data.load_center_folder (root/<center>/<class>/*.png).")
    if path.suffix.lower() != ".npz":
        raise DataError(f"Unknown dataset '{spec}'; give a MedMNIST 2D name ({', '.join(medmnist_names())}) "
                        "or a path to an .npz file.")
    with _open_npz(path) as npz:
        keys = set(npz.files)
    has_centers = bool({kw.get("center_field") or "center_ids", "source_ids"} & keys)
    if has_centers and (any(kw.get(k) is not None for k in _MULTICENTER_KW) or "train_images" not in keys):
        return load_multicenter_npz(path, **_kw_for(load_multicenter_npz, kw))
    return load_npz(path, **_kw_for(load_npz, kw))


def images_to_tensor(images: np.ndarray, size: int | None = None, channels: int | None = None) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [0, 1]; optional antialiased bilinear resize to size x size.

    channels=3 repeats grayscale, channels=1 averages RGB, None keeps the stored channels.
    """
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3) or arr.dtype != np.uint8:
        raise DataError(f"images_to_tensor expects uint8 (N, H, W[, C]) images with C = 1 or 3, got "
                        f"{arr.dtype} {arr.shape}; load them with hybrid.data first.")
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1, 3 or None, got {channels}.")
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float().div_(255.0)
    if channels == 1 and x.shape[1] == 3:
        x = x.mean(dim=1, keepdim=True)  # before resizing: a third of the work
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = x.clamp_(0, 1)
    if channels == 3 and x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    return x.contiguous()


def class_counts(labels, n_classes: int) -> list[int]:
    """Images per class, as plain ints (JSON-able)."""
    labels = np.asarray(labels, dtype=np.int64).ravel()
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(f"labels range over [{labels.min()}, {labels.max()}] but n_classes is {n_classes}; "
                        "check the label field.")
    return np.bincount(labels, minlength=n_classes).tolist()
