"""Image and label arrays: validation, evaluation inputs, and conversion to model tensors.

The base layer under `hybrid.data`, which re-exports the public names here: `DataError` and
`Split`, the checks that turn user arrays into uint8 NHWC images and int64 labels, reading
.npz archives, the evaluation inputs (`load_eval_npz`, `load_center_folder`), and
`images_to_tensor` for the model side.
"""

from __future__ import annotations

import logging
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

ENV_DATA_ROOT = "HYBRID_DATA_ROOT"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
# what file managers and archivers leave in folders (Windows thumbnails, macOS zip forks): not data, skipped
# like hidden files rather than refused
OS_METADATA = {"thumbs.db", "ehthumbs.db", "desktop.ini", "__macosx"}
_GRAY_MODES = {"1", "L", "I", "I;16", "I;16B", "I;16L", "F"}  # PIL modes with one intensity channel
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)
_INT_IDS = "store class ids as integers 0..K-1"
AMBIGUOUS_SHARE = 0.01  # float images with fewer values above 1 than this share are neither 0-1 nor 0-255


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
        if not (lo >= 0 and hi <= 255):
            raise DataError(f"{where}: float images range over [{lo:g}, {hi:g}]; "
                            "rescale them to [0, 1] or [0, 255].")
        above = int(np.count_nonzero(arr > 1))
        if 0 < above < AMBIGUOUS_SHARE * arr.size:  # [0, 1] images with a few overshoots, or nearly black 0-255?
            raise DataError(f"{where}: float images lie in [0, 1] except {above} of {arr.size} values (up to "
                            f"{hi:g}), so their scale is ambiguous; clip them with np.clip(images, 0, 1) if they "
                            "are 0-1 images, or save 0-255 images as uint8.")
        return np.rint(arr * 255 if hi <= 1 else arr).astype(np.uint8)
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
    except ValueError as e:
        if "pickle" not in str(e):
            raise DataError(f"Cannot read {path} as a NumPy .npz archive ({e}); the file is corrupt or not an "
                            ".npz, re-download it or re-save it with np.savez.") from None
        # NumPy read it as a pickle (or a text file); its message suggests unsafe loading: never pass that on
        raise DataError(f"{path} is not an .npz archive (it is neither a zip of arrays nor a NumPy array; perhaps "
                        "a pickle or a text file); re-save the data with np.savez(path, images=..., labels=...).") \
            from None
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


def load_center_folder(root, class_names: list[str] | None = None) -> dict[str, Split]:
    """Read root/<center>/<class>/*.png|jpg into one Split per center.

    With `class_names` (the run's), each class folder is matched to one of them, ignoring case,
    or by its id ("0", "1", ...); a folder it cannot match is refused with the expected names, so
    a folder never silently gets another class's id. Without them, ids follow the folder names
    sorted over all centers. If any image has colour every center is loaded as RGB, else grayscale.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Image folder {root} not found; expected a folder laid out as "
                        "root/<center>/<class>/*.png.")
    centers = sorted(p for p in _entries(root) if p.is_dir())
    folders = sorted({c.name for p in centers for c in _entries(p) if c.is_dir()})
    if not folders:
        raise DataError(f"No <center>/<class>/ subfolders under {root}; lay images out as "
                        "root/<center>/<class>/*.png.")
    class_ids = _class_ids(folders, class_names, root)
    loaded, wide_maxima = {}, []  # wide_maxima: the largest value of each 16/32-bit image, for the warning
    for center in centers:
        files = [(f, class_ids[c.name]) for c in _entries(center) if c.name in class_ids
                 for f in _class_files(c)]
        if not files:
            raise DataError(f"Center folder {center} holds no .png/.jpg images in class subfolders; "
                            f"add images under {center}/<class>/ or remove it.")
        arrays = [_read_image(f, wide_maxima) for f, _ in files]
        sizes = sorted({a.shape[:2] for a in arrays})
        if len(sizes) > 1:
            raise DataError(f"Images in {center} have different sizes {sizes[:4]}; resize them to one size "
                            "first (e.g. PIL Image.resize).")
        loaded[center.name] = (arrays, [k for _, k in files])
    _warn_if_few_bits(wide_maxima, root)
    return _stack_centers(loaded)


def _warn_if_few_bits(maxima: list[int], root: Path) -> None:
    """Say so when 16-bit files hold data of 12 bits or fewer (common for X-ray exports): scaled by the 16-bit
    range, as they must be for the scale not to depend on the images, they come out nearly black."""
    if not maxima or max(maxima) >= 4096:
        return
    largest = max(maxima)
    bits = max(largest.bit_length(), 1)
    log.warning("the %d 16-bit images under %s use at most %d bits (largest value %d of 65535), so they keep at most "
                "%d grey levels of 256; if they hold %d-bit data, rescale them to 16 bits (each value times %d) and "
                "load them again", len(maxima), root, bits, largest, round(largest * 255 / 65535) + 1, bits,
                2 ** (16 - bits))


def _class_ids(folders: list[str], class_names: list[str] | None, root: Path) -> dict[str, int]:
    """Class folder name -> class id: the run's class names (any case) or ids, else sorted order."""
    if class_names is None:
        return {name: k for k, name in enumerate(folders)}
    # a class named by a digit ("1") is that class before it is the id 1
    lookup = {str(k): k for k in range(len(class_names))} | {name.lower(): k for k, name in enumerate(class_names)}
    unknown = [name for name in folders if name.lower() not in lookup]
    if unknown:
        raise DataError(f"Class folders {unknown} under {root} match none of the run's classes; name each class "
                        f"folder after one of {list(class_names)} (any case) or its id 0..{len(class_names) - 1}.")
    return {name: lookup[name.lower()] for name in folders}


def _entries(folder: Path) -> list[Path]:
    """A folder's entries, sorted, without hidden files and what the operating system leaves there."""
    return sorted(f for f in folder.iterdir() if not f.name.startswith(".") and f.name.lower() not in OS_METADATA)


def _class_files(folder: Path) -> list[Path]:
    """The image files of one class folder; anything else there is refused rather than skipped."""
    files, other = [], []
    for f in _entries(folder):
        (files if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file() else other).append(f)
    if other:
        kind = "is not a regular file" if other[0].suffix.lower() in IMAGE_SUFFIXES else "is not a .png/.jpg image"
        raise DataError(f"{other[0]} {kind}; class folders may hold only images: move it out, or remove it.")
    if not files:
        raise DataError(f"Class folder {folder} is empty; add its images or remove the folder.")
    return files


def _read_image(path: Path, wide_maxima: list[int]) -> np.ndarray:
    """One image as uint8 (H, W) or (H, W, 3); 16-bit and float grayscale are scaled to 0-255, not clipped
    (a 16-bit image's largest value is appended to `wide_maxima`)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode == "LA":  # grey with an alpha channel: the grey alone (alpha is not an image channel)
                return np.asarray(im.convert("L"))
            if im.mode in _GRAY_MODES:
                return _gray_to_uint8(np.asarray(im), path, wide_maxima)
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"Cannot read image {path} ({e}); remove or replace the file.") from None


def _gray_to_uint8(arr: np.ndarray, path: Path, wide_maxima: list[int]) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):  # 16-bit PNG (I;16) or 32-bit ("I"): full range of 16 bits
        if arr.min() < 0 or arr.max() > 65535:
            raise DataError(f"{path}: integer pixel values range over [{arr.min()}, {arr.max()}], beyond 16 bits; "
                            "save it as an 8- or 16-bit image.")
        wide_maxima.append(int(arr.max()))
        return np.rint(arr.astype(np.float64) * (255 / 65535)).astype(np.uint8)
    return as_images(arr[None], str(path))[0, ..., 0]  # float ("F"): 0-1 or 0-255, as for arrays


def _stack_centers(loaded: dict[str, tuple[list[np.ndarray], list[int]]]) -> dict[str, Split]:
    """One Split per center; grayscale saved as RGB (equal channels) does not make the folder colour."""
    rgb = any(a.ndim == 3 and not (a == a[..., :1]).all() for arrays, _ in loaded.values() for a in arrays)
    gray = sum(a.ndim == 2 for arrays, _ in loaded.values() for a in arrays)
    if rgb and gray:
        log.warning("%d grayscale images among colour ones: their intensity is repeated on three channels", gray)
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


class LazyImages:
    """uint8 NHWC images that become model tensors one slice at a time, so evaluating a large file
    holds its uint8 pixels plus one batch of float tensors, not the whole file as floats.

    Takes the place of an image tensor where it is only measured (`len`) and sliced
    (`x[start:stop]` gives a float32 NCHW tensor, resized and with the model's channels).
    """

    def __init__(self, images: np.ndarray, size: int | None = None, channels: int | None = None):
        self.images, self.size, self.channels = images, size, channels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: slice) -> torch.Tensor:
        if not isinstance(index, slice):
            raise TypeError("LazyImages are read in slices, x[start:stop]")
        return images_to_tensor(self.images[index], self.size, self.channels)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        n, h, w, c = self.images.shape
        return n, self.channels or c, self.size or h, self.size or w
