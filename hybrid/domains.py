"""Domains: the run's data as tensors, the virtual centers it trains on and the ones it is tested on.

`DomainSampler` gives every training sample a center (a virtual source center or its real
center); `build_eval_domains` makes the clean test split, one shifted copy per unseen virtual
center and the real held-out centers; `domains_from_data` reads external evaluation data
(an .npz, a multi-center .npz with every center its own domain, or a center folder).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from hybrid.config import TrainConfig
from hybrid.data import (DataError, DatasetBundle, Split, images_to_tensor, keep_classes, load_center_folder,
                         load_dataset, select_classes,
                         load_eval_npz, load_multicenter_domains, multicenter_fields, resolve_data_root,
                         resolve_dataset_path)
from hybrid.images import LazyImages
from hybrid.shifts import CENTER_SETS, VirtualCenter, apply_center, apply_centers, make_source_centers

log = logging.getLogger(__name__)

CLEAN = VirtualCenter("clean", ())
Domains = dict[str, tuple[torch.Tensor, torch.Tensor]]


def split_to_tensors(split: Split, input_size: int, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    return images_to_tensor(split.images, size=input_size, channels=channels), torch.as_tensor(split.labels)


def load_bundle(cfg: TrainConfig, root) -> DatasetBundle:
    """The run's dataset; center options only reach files that can have centers."""
    multicenter = {}
    if cfg.dataset.endswith(".npz"):
        multicenter = dict(label_field=cfg.label_field, center_field=cfg.center_field,
                           train_centers=cfg.train_centers, test_centers=cfg.test_centers)
    bundle = load_dataset(cfg.dataset, root=root, size=cfg.size, seed=cfg.seed, **multicenter)
    return select_classes(bundle, cfg.classes) if cfg.classes else bundle


def make_target_domains(x: torch.Tensor, y: torch.Tensor, centers: Iterable[VirtualCenter], seed: int) -> Domains:
    """The clean test split plus one shifted copy per unseen virtual center (fixed noise)."""
    domains = {"clean": (x, y)}
    for i, center in enumerate(centers):
        generator = torch.Generator().manual_seed(seed * 1000 + i)
        domains[center.name] = (apply_center(x, center, generator), y)
    return domains


def build_eval_domains(cfg: TrainConfig, bundle: DatasetBundle, channels: int, center_set: str = "target") -> Domains:
    """Clean test split, every unseen virtual center of `center_set`, and the real held-out centers.

    `validation` swaps the reported target centers for the design-validation centers, which are
    for comparing method variants without looking at the reported ones; the real held-out centers
    are reported ones, so that set leaves them out.
    """
    if center_set not in CENTER_SETS:
        raise ValueError(f"unknown center set {center_set!r}; valid sets are: {', '.join(CENTER_SETS)}")
    x, y = split_to_tensors(bundle.test, cfg.input_size, channels)
    centers = CENTER_SETS[center_set](rgb=uses_colour_shifts(cfg, channels))
    domains = make_target_domains(x, y, centers, cfg.seed) if len(y) else {}
    if center_set != "validation":
        for name, split in bundle.test_domains.items():
            domains[f"real:{name}"] = split_to_tensors(split, cfg.input_size, channels)
    return domains


def run_domains(cfg: TrainConfig, in_channels: int, data_root=None, center_set: str = "target") -> Domains:
    """The unseen domains a trained run is scored on: its dataset (under `data_root`, else the run's
    own root or $HYBRID_DATA_ROOT) through `build_eval_domains`."""
    bundle = load_bundle(cfg, resolve_data_root(data_root or cfg.data_root))
    return build_eval_domains(cfg, bundle, in_channels, center_set)


def first_samples(domains: Domains, n: int | None) -> Domains:
    """Each domain's first `n` images (all with None): what --eval-max-samples and --max-samples score."""
    return {k: (x[:n], y[:n]) for k, (x, y) in domains.items()} if n else domains


def check_labels(labels: np.ndarray, n_classes: int, where: str) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(
            f"{where} has labels {sorted(set(labels.tolist()))[:10]} but the model was trained on "
            f"{n_classes} classes (0..{n_classes - 1}); evaluate it on data with the same classes"
        )


def domains_from_data(spec: str, cfg: TrainConfig, in_channels: int, n_classes: int, root,
                      centers: str | None = None, class_names: list[str] | None = None,
                      class_ids: list[int] | None = None) -> Domains:
    """External evaluation data: each center of a multi-center file or folder is its own domain.

    A multi-center .npz is never split the way training splits it ("train on all but the last
    center"): the run did not train on it, so every center in it is scored, or those named in
    `centers` (comma-separated names or ids). For the run's own multi-center file the default is
    its held-out centers; a training center asked for by name is scored as `train:NAME`, which
    is not an unseen domain. A folder's class folders are matched to the run's `class_names`.
    A run trained on a class subset (`class_ids`, its original labels) scores the same subset of an
    .npz, whose labels are read in the training file's label space.
    """
    path = resolve_dataset_path(spec, root)
    if not path.exists() and (path.suffix or len(path.parts) > 1):
        raise DataError(f"--data {spec}: no such file or folder; give an .npz file, a folder laid out as "
                        "<center>/<class>/*.png, or a MedMNIST name")
    is_npz = path.suffix.lower() == ".npz" and path.is_file()
    fields = multicenter_fields(path, cfg.label_field, cfg.center_field) if is_npz else None
    trained: set[str] = set()
    if path.is_dir():
        splits = load_center_folder(path, class_names)
        prefix = ""
    elif fields:
        label_field, center_field = fields
        if path.resolve() == resolve_dataset_path(cfg.dataset, root).resolve():
            trained, held_out = _own_centers(cfg, root)
            centers = centers or held_out  # names, not one string: a name may hold a comma
        splits = load_multicenter_domains(path, label_field, center_field, centers)
        prefix = "real:"
    elif is_npz:
        splits = {path.stem: load_eval_npz(path)}
        prefix = ""
    else:
        bundle = load_dataset(spec, root=root, size=cfg.size)
        splits = {Path(spec).stem: bundle.test}
        prefix = ""
    if centers and prefix != "real:":
        raise DataError(f"--centers {centers} names centers of a multi-center .npz, and {spec} is not one")
    _warn_of_channel_conversion(splits, in_channels, spec)
    domains = {}
    for name, split in splits.items():
        if class_ids and not path.is_dir():  # a folder's classes are already the run's
            split = keep_classes(split, class_ids)
            if not len(split):
                raise DataError(f"{spec} center {name!r} has no image of the run's classes (original labels "
                                f"{class_ids}); check --data and the run's --classes")
        check_labels(split.labels, n_classes, f"{spec} center {name!r}")
        if name in trained:
            log.warning("center %s of %s was trained on; it is scored as train:%s, not as an unseen center",
                        name, path.name, name)
        # streamed: converted to model tensors one batch at a time (a large file stays uint8 in memory)
        domains[("train:" if name in trained else prefix) + name] = (
            LazyImages(split.images, cfg.input_size, in_channels), torch.as_tensor(split.labels))
    return domains


def _warn_of_channel_conversion(splits: dict, in_channels: int, spec: str) -> None:
    """Say so when the images are converted to the run's channels: scores of colour images averaged to grey (or
    of grey ones repeated on three channels) say nothing about how the run would do on what they show."""
    stored = {name: 3 if split.images.ndim == 4 and split.images.shape[-1] == 3 else 1
              for name, split in splits.items()}
    converted = [name for name, channels in stored.items() if channels != in_channels]
    if converted:
        how = ("colour images are averaged to grey: the run was trained on grayscale" if in_channels == 1 else
               "grayscale images are repeated on three channels: the run was trained on colour")
        log.warning("%s (%s): its %s", spec, ", ".join(converted), how)


def _own_centers(cfg: TrainConfig, root) -> tuple[set[str], list[str]]:
    """The centers a multi-center run trained on, and the ones it held out."""
    bundle = load_bundle(cfg, root)
    ids = np.unique(bundle.train.centers) if bundle.train.centers is not None else []
    return {bundle.center_names[int(c)] for c in ids}, list(bundle.test_domains)


def is_unseen(domain: str) -> bool:
    """Whether a domain name counts among the unseen centers (not the in-domain test split or a trained center)."""
    return domain != "clean" and not domain.startswith("train:")


def random_translate(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Per-sample random translation by up to `max_shift` pixels (one grid_sample call)."""
    b, _, h, w = x.shape
    shift = (torch.rand(b, 2, generator=generator) * 2 - 1) * max_shift
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0, 2] = shift[:, 0] * 2 / w
    theta[:, 1, 2] = shift[:, 1] * 2 / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def uses_colour_shifts(cfg: TrainConfig, channels: int) -> bool:
    """Whether a run simulates and is scored on colour differences: RGB images with `rgb_shifts`."""
    return cfg.rgb_shifts and channels == 3


class DomainSampler:
    """Assigns each training sample a center: a virtual source center, or its real center."""

    def __init__(self, cfg: TrainConfig, real_centers: np.ndarray | None, channels: int = 1):
        self.cfg = cfg
        self.centers = (make_source_centers(cfg.n_source_centers, cfg.seed, cfg.source_sampling,
                                            rgb=uses_colour_shifts(cfg, channels)) if cfg.shift else [])
        if cfg.shift and cfg.clean_fraction > 0:
            self.centers.append(CLEAN)
        self.real = None
        if not cfg.shift and real_centers is not None and len(np.unique(real_centers)) > 1:
            ids = np.unique(real_centers)
            self.real = torch.as_tensor(np.searchsorted(ids, real_centers))
            self.n_domains = len(ids)
        else:
            self.n_domains = len(self.centers) if cfg.shift else 1

    def draw(self, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.real is not None:
            return self.real[idx]
        if not self.cfg.shift:
            return torch.zeros(len(idx), dtype=torch.long)
        k = self.cfg.n_source_centers
        ids = torch.randint(0, k, (len(idx),), generator=generator)
        if self.cfg.clean_fraction > 0:
            clean = torch.rand(len(idx), generator=generator) < self.cfg.clean_fraction
            ids[clean] = k
        return ids

    def shift(self, x: torch.Tensor, ids: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return apply_centers(x, ids, self.centers, generator) if self.centers else x
