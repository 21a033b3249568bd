"""Data loading: MedMNIST 2D, plain or multi-center .npz files, as `DatasetBundle`s.

Every loader returns uint8 NHWC images and int64 labels; the model side converts with
`images_to_tensor`. Anything a user can get wrong raises `DataError` with one sentence on
what is wrong and how to fix it, so a bad file fails at load time, not mid-training.
Array validation, the evaluation inputs (`load_eval_npz`, `load_center_folder`) and
`images_to_tensor` live in `hybrid.images`; they are re-exported here.
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hybrid.images import (ENV_DATA_ROOT, IMAGE_SUFFIXES, DataError, Split, as_labels, images_to_tensor,
                           load_center_folder, load_eval_npz, make_split, open_npz, read_array)

__all__ = ["CENTER_NAME_FIELDS", "ENV_DATA_ROOT", "IMAGE_SUFFIXES", "MEDMNIST_KEYS", "MEDMNIST_SIZES", "SPLITS",
           "DataError", "DatasetBundle", "Split", "class_counts", "images_to_tensor", "keep_classes",
           "load_center_folder", "load_dataset", "load_eval_npz", "load_medmnist", "load_multicenter_domains",
           "load_multicenter_npz", "multicenter_fields", "load_npz", "medmnist_names", "resolve_centers",
           "resolve_classes", "resolve_data_root", "resolve_dataset_path", "select_classes"]

log = logging.getLogger(__name__)

MEDMNIST_SIZES = (28, 64, 128, 224)
SPLITS = ("train", "val", "test")
MEDMNIST_KEYS = tuple(f"{s}_{k}" for s in SPLITS for k in ("images", "labels"))
CENTER_NAME_FIELDS = {"center_ids": "center_names", "source_ids": "source_names"}  # ids -> names array


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
    class_ids: list[int] | None = None  # after select_classes: the original label of each class kept

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


# ---------------------------------------------------------------- class subsets


def resolve_classes(spec: str, names: list[str]) -> list[int]:
    """`--classes` (names in any case, or ids, comma-separated) -> original class ids, in order."""
    valid = ", ".join(f"{i}={n}" for i, n in enumerate(names))
    lookup = {n.lower(): i for i, n in enumerate(names)} | {str(i): i for i in range(len(names))}
    ids = []
    for entry in (e.strip() for e in str(spec).split(",") if e.strip()):
        if entry.lower() not in lookup:
            raise DataError(f"Unknown class '{entry}' in --classes; the dataset's classes are: {valid}.")
        if lookup[entry.lower()] in ids:
            raise DataError(f"--classes names class '{entry}' twice; give each class once.")
        ids.append(lookup[entry.lower()])
    if len(ids) < 2:
        raise DataError(f"--classes {spec!r} keeps {len(ids)} class; a classifier needs at least two (valid: {valid}).")
    return ids


def keep_classes(split: Split, ids: list[int]) -> Split:
    """The images of `split` whose label is in `ids`, relabelled 0..k-1 in the order of `ids`."""
    lookup = np.full(max(int(split.labels.max(initial=0)), *ids) + 1, -1, dtype=np.int64)
    lookup[ids] = np.arange(len(ids))
    mask = np.isin(split.labels, ids)
    centers = None if split.centers is None else split.centers[mask]
    return Split(split.images[mask], lookup[split.labels[mask]], centers)


def select_classes(bundle: "DatasetBundle", spec: str) -> "DatasetBundle":
    """The bundle restricted to the classes `spec` names (see `resolve_classes`); with two classes the
    first is the positive one, so `mel,nv` scores melanoma."""
    ids = resolve_classes(spec, bundle.class_names)
    empty = [name for name, split in bundle.test_domains.items() if not np.isin(split.labels, ids).any()]
    if empty:  # found now, not when the final evaluation scores it after all the training
        raise DataError(f"{bundle.name}: held-out center(s) {', '.join(empty)} hold no image of the classes {spec}; "
                        "choose other --classes or --test-centers")
    return DatasetBundle(
        name=bundle.name, train=keep_classes(bundle.train, ids), val=keep_classes(bundle.val, ids),
        test=keep_classes(bundle.test, ids), n_classes=len(ids), n_channels=bundle.n_channels,
        class_names=[bundle.class_names[i] for i in ids], positive_class=0,
        test_domains={k: keep_classes(v, ids) for k, v in bundle.test_domains.items()},
        center_names=bundle.center_names, class_ids=ids)


# ---------------------------------------------------------------- split helpers


def _take(split: Split, idx: np.ndarray) -> Split:
    centers = None if split.centers is None else split.centers[idx]
    return Split(split.images[idx], split.labels[idx], centers)


def _read_medmnist_layout(npz, path: Path) -> dict[str, Split]:
    return {s: make_split(read_array(npz, f"{s}_images", path), read_array(npz, f"{s}_labels", path),
                           f"{path.name} [{s}]") for s in SPLITS}


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
    seen = np.unique(np.concatenate([p.labels for p in parts]))
    if class_names and seen.max() >= len(class_names):
        raise DataError(f"{name}: labels {seen[seen >= len(class_names)].tolist()[:10]} lie outside the "
                        f"{len(class_names)} named classes {list(class_names)}; fix those labels or the class names.")
    n_classes = max(n_classes, len(class_names or []), int(seen.max()) + 1)
    if n_classes < 2 or len(seen) < 2:
        raise DataError(f"{name}: every label is {int(seen[0])}; a classifier needs at least two classes.")
    gaps = sorted(set(range(n_classes)) - set(seen.tolist()))
    if gaps and not class_names:
        raise DataError(f"{name}: labels take the values {seen.tolist()[:10]}, so classes {gaps[:10]} have no image; "
                        "store class ids as 0..K-1 without gaps, or name the classes (label_names).")
    names = [str(c) for c in (class_names or [])]
    names += [str(i) for i in range(len(names), n_classes)]
    return DatasetBundle(name=name, **splits, n_classes=n_classes, n_channels=int(shapes[0][-1]),
                         class_names=names, positive_class=positive_class,
                         test_domains=dict(test_domains or {}), center_names=list(center_names or []))


# ---------------------------------------------------------------- loaders


def resolve_data_root(cli_value: str | None) -> Path | None:
    """--data-root, else $HYBRID_DATA_ROOT, else None (~/.medmnist); absolute, so errors name the folder searched
    (a relative one is the process's folder: notebooks/ for a notebook)."""
    value = cli_value or os.environ.get(ENV_DATA_ROOT)
    return Path(value).expanduser().absolute() if value else None


def medmnist_names() -> list[str]:
    """The MedMNIST datasets this project loads: 2D and single-label."""
    from medmnist import INFO

    return [k for k, v in INFO.items() if not k.endswith("3d") and not v["task"].startswith("multi-label")]


def load_medmnist(name: str, root: Path | None = None, size: int = 28, download: bool = True) -> DatasetBundle:
    """Load a MedMNIST 2D dataset from `root`, downloading only when the file is missing. Multi-label ChestMNIST
    is rejected: every model here predicts one class per image."""
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
        created = next((p for p in reversed([root, *root.parents]) if not p.exists()), None)  # topmost new one
        try:
            root.mkdir(parents=True, exist_ok=True)
            # Only reached when the file is missing: an existing file is never re-fetched or re-hashed.
            getattr(medmnist, info["python_class"])(split="train", root=str(root), size=size, download=True)
        except Exception as e:  # no network, bad checksum, read-only folder: all need the same manual fix
            path.unlink(missing_ok=True)  # a partial download would later read as a corrupt file
            if created is not None and not any(p.is_file() for p in created.rglob("*")):
                shutil.rmtree(created, ignore_errors=True)  # a mistyped data folder must not stay, as if real
            raise DataError(f"MedMNIST file {path} not found and the download failed "
                            f"({type(e).__name__}); {how}.") from None
    with open_npz(path) as npz:
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
    with open_npz(path) as npz:
        keys = set(npz.files)
        if set(MEDMNIST_KEYS) <= keys:
            splits = _read_medmnist_layout(npz, path)
        elif {"images", "labels"} <= keys:
            full = make_split(read_array(npz, "images", path), read_array(npz, "labels", path), path.name)
            idx = _split_indices(full.labels, seed, val_fraction, test_fraction, path.name)
            splits = {s: _take(full, i) for s, i in zip(SPLITS, idx)}
        else:
            raise DataError(f"{path} has keys {sorted(keys)} but needs either {list(MEDMNIST_KEYS)} "
                            "(MedMNIST layout) or 'images' and 'labels'; re-save it with those names.")
        names = [str(x) for x in read_array(npz, "label_names", path)] if "label_names" in keys else None
    return _bundle(path.stem, splits, names, positive_class=1)


def resolve_centers(selectors, names: list[str], what: str) -> list[int] | None:
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


def _read_multicenter(path: Path, label_field: str, center_field: str) -> tuple[Split, list[str], list[str] | None]:
    """All images of a multi-center .npz with their labels and center ids; center and class names."""
    with open_npz(path) as npz:
        keys = sorted(npz.files)
        missing = [k for k in ("images", label_field, center_field) if k not in keys]
        if missing:
            raise DataError(f"{path} lacks {missing} (it has {keys}); set label_field / center_field to "
                            "arrays it holds, e.g. label_field='labels', center_field='center_ids'.")
        where = f"{path.name} [{label_field}]"
        full = make_split(read_array(npz, "images", path), read_array(npz, label_field, path), where)
        full.centers = as_labels(read_array(npz, center_field, path), len(full), f"{path.name} [{center_field}]")
        names_key = CENTER_NAME_FIELDS.get(center_field, center_field.removesuffix("_ids") + "_names")
        center_names = [str(x) for x in read_array(npz, names_key, path)] if names_key in keys else []
        class_names = None
        if label_field == "malignant" and full.labels.max() <= 1:
            class_names = ["benign", "malignant"]
        for k in (label_field.removesuffix("s") + "_names", label_field + "_names"):
            if class_names is None and k in keys:
                class_names = [str(x) for x in read_array(npz, k, path)]
    center_names += [str(i) for i in range(len(center_names), int(full.centers.max()) + 1)]
    return full, center_names, class_names


def multicenter_fields(path, label_field: str = "labels", center_field: str = "center_ids") -> tuple[str, str] | None:
    """(label field, center field) of a multi-center .npz, or None for a file without center ids.

    The given fields are used where the file has them; otherwise `labels` and whichever of
    `center_ids` / `source_ids` it holds.
    """
    with open_npz(Path(path)) as npz:
        keys = set(npz.files)
    centers = [f for f in (center_field, *CENTER_NAME_FIELDS) if f in keys]
    if not centers:
        return None
    if label_field not in keys:
        log.warning("%s has no %r array (the run's label field); scoring its 'labels' instead", Path(path).name,
                    label_field)
        label_field = "labels"
    return label_field, centers[0]


def load_multicenter_domains(path, label_field: str = "labels", center_field: str = "center_ids",
                             centers=None) -> dict[str, Split]:
    """Every center of a multi-center .npz as its own Split (or those named in `centers`), for
    evaluating a run on a file it was not trained on: nothing is split off for training."""
    path = Path(path)
    full, center_names, _ = _read_multicenter(path, label_field, center_field)
    present = np.unique(full.centers).tolist()
    ids = resolve_centers(centers, center_names, "--centers") or present
    absent = [center_names[c] for c in ids if c not in present]
    if absent:
        raise DataError(f"{path}: centers {absent} have no images; choose among "
                        f"{[center_names[c] for c in present]}.")
    return {center_names[c]: _take(full, np.flatnonzero(full.centers == c)) for c in ids}


def load_multicenter_npz(path, label_field: str = "labels", center_field: str = "center_ids",
                         train_centers=None, test_centers=None, seed: int = 0, val_fraction: float = 0.15,
                         test_fraction: float = 0.2) -> DatasetBundle:
    """Leave-centers-out loading of an .npz with `images`, a label array and a center-id array.

    Training centers are split into train/val/test (stratified by center and label); each held-out
    center becomes one `test_domains` entry with all its images. Default: train on every center but
    the last, test on the last. Every Split keeps its center ids for domain-aware training.
    """
    path = Path(path)
    full, center_names, class_names = _read_multicenter(path, label_field, center_field)
    present = np.unique(full.centers).tolist()
    valid = [center_names[c] for c in present]
    train_ids = resolve_centers(train_centers, center_names, "train_centers")
    test_ids = resolve_centers(test_centers, center_names, "test_centers")
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


_MULTICENTER_KW = {"label_field", "center_field", "train_centers", "test_centers"}
_LOADER_KW = {"download", "seed", "val_fraction", "test_fraction", *_MULTICENTER_KW}


def _kw_for(fn, kw: dict) -> dict:
    """The keywords `fn` accepts; None means "loader default", so unset CLI flags pass straight through."""
    unknown = set(kw) - _LOADER_KW
    if unknown:
        raise TypeError(f"load_dataset() got unexpected keyword arguments {sorted(unknown)}")
    params = inspect.signature(fn).parameters
    # Seeds and fractions are meaningless for fixed splits; center options there are a likely mistake.
    # a field left at its default (labels, center_ids) was not asked for: no warning for it
    defaults = {k: p.default for k, p in inspect.signature(load_multicenter_npz).parameters.items()}
    ignored = sorted(k for k in _MULTICENTER_KW if kw.get(k) not in (None, defaults[k]) and k not in params)
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
    with open_npz(path) as npz:
        keys = set(npz.files)
    has_centers = bool({kw.get("center_field") or "center_ids", "source_ids"} & keys)
    if has_centers and (any(kw.get(k) is not None for k in _MULTICENTER_KW) or "train_images" not in keys):
        return load_multicenter_npz(path, **_kw_for(load_multicenter_npz, kw))
    return load_npz(path, **_kw_for(load_npz, kw))


def class_counts(labels, n_classes: int) -> list[int]:
    """Images per class, as plain ints (JSON-able)."""
    labels = np.asarray(labels, dtype=np.int64).ravel()
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(f"labels range over [{labels.min()}, {labels.max()}] but n_classes is {n_classes}; "
                        "check the label field.")
    return np.bincount(labels, minlength=n_classes).tolist()
