"""Image and label arrays: validation, evaluation inputs, and conversion to model tensors.

The base layer under `hybrid.data`, which re-exports the public names here: `DataError` and
`Split`, the checks that turn user arrays into uint8 NHWC images and int64 labels, reading
.npz archives, the evaluation inputs (`load_eval_npz`, `load_center_folder`), and
`images_to_tensor` for the model side.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ENV_DATA_ROOT = "HYBRID_DATA_ROOT"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
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


# ---------------------------------------------------------------- validation and .npz reading


def as_images(arr, where: str) -> np.ndarray:
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


def as_labels(arr, n: int, where: str) -> np.ndarray:
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


def make_split(images, labels, where: str) -> Split:
    """Validated images and labels as one Split; `where` names the source in error messages."""
    images = as_images(images, where)
    return Split(images, as_labels(labels, len(images), where))


def open_npz(path: Path) -> np.lib.npyio.NpzFile:
    """An .npz archive of named arrays, or a DataError saying why the file cannot be one."""
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


def read_array(npz: np.lib.npyio.NpzFile, key: str, path: Path) -> np.ndarray:
    """One array of an open .npz; a corrupt or pickled member becomes a DataError."""
    try:  # members are decompressed lazily, so corruption can surface only here
        return npz[key]
    except _READ_ERRORS as e:
        raise DataError(f"Cannot read array '{key}' from {path} ({e}); the file is corrupt or holds pickled "
                        "objects, re-save it with plain NumPy arrays.") from None


# ---------------------------------------------------------------- evaluation inputs


def load_eval_npz(path) -> Split:
    """All evaluation images of an .npz: its `test_*` arrays, or its `images`/`labels` arrays."""
    path = Path(path)
    npz = open_npz(path)
    keys = set(npz.files)
    for images_key, labels_key in (("test_images", "test_labels"), ("images", "labels")):
        if {images_key, labels_key} <= keys:
            return make_split(read_array(npz, images_key, path), read_array(npz, labels_key, path), path.name)
    raise DataError(f"{path} has keys {sorted(keys)}; an evaluation file needs test_images/test_labels "
                    "or images/labels.")


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
