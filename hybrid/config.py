"""The one frozen run configuration, saved as `config.json` in every run directory."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from hybrid.quantum import ENTANGLEMENTS, FEATURE_MAPS, QuantumConfig
from hybrid.shifts import SOURCE_SAMPLINGS
from hybrid.tta import TTA_METHODS


@dataclass(frozen=True)
class TrainConfig:
    # data
    dataset: str = "pneumoniamnist"  # MedMNIST name or path to an .npz (MedMNIST layout or multi-center)
    data_root: str | None = None  # folder with MedMNIST files; else $HYBRID_DATA_ROOT, else ~/.medmnist
    size: int = 28  # MedMNIST image size to load (28, 64, 128, 224)
    input_size: int = 32  # images are resized to this before the encoder
    max_train_samples: int | None = None  # random training subset, for quick runs and tests
    label_field: str = "labels"  # multi-center npz: which label array (e.g. "malignant")
    center_field: str = "center_ids"  # multi-center npz: which center id array
    train_centers: str | None = None  # multi-center npz: comma-separated names/ids that train
    test_centers: str | None = None  # multi-center npz: held-out names/ids
    # model
    width_mult: float = 1.0  # MobileNetV2 width multiplier
    stem_stride: int = 1  # stride of the first conv; 1 keeps detail on 28-32 px images
    pretrained: bool = False  # ImageNet weights (torchvision download or weights_path)
    weights_path: str | None = None  # local torchvision mobilenet_v2 state_dict for --pretrained
    input_smoothing: float = 1.0  # sigma (px) of a fixed Gaussian low-pass in front of the encoder; 0 = off
    embed_dim: int = 128  # bottleneck features shared by classifier, projection and discriminator
    dropout: float = 0.2
    # the three domain-generalization components; each ablation is one flag away
    quantum: bool = True
    shift: bool = True
    dann: bool = True
    n_qubits: int = 4
    feature_map: str = "zz"
    q_reps: int = 2
    entanglement: str = "linear"
    q_precision: str = "float64"
    n_source_centers: int = 4  # virtual training centers drawn from the source range
    source_sampling: str = "stratified"  # how centers draw strengths: random, or stratified (Latin hypercube)
    clean_fraction: float = 0.2  # share of training samples left unshifted (domain label = K)
    dann_max_lambda: float = 0.3  # cap of the DANN schedule 2/(1+exp(-10p)) - 1
    dann_weight: float = 1.0  # weight of the domain loss
    # optimisation
    epochs: int = 12
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    augment: bool = True  # small random translations
    seed: int = 0
    threads: int | None = None  # torch threads (None: torch default)
    # evaluation
    tta: str = "adabn"  # test-time adaptation: adabn (whole-domain BN statistics), bn, bn2d, tent or none
    backend: str = "aer"  # backends registry name; exact backends train with the torch engine
    eval_batch_size: int = 256
    n_bootstrap: int = 1000

    def quantum_config(self) -> QuantumConfig:
        return QuantumConfig(
            n_qubits=self.n_qubits,
            feature_map=self.feature_map,
            reps=self.q_reps,
            entanglement=self.entanglement,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        # a run saved before a field existed was made without that feature, whatever today's default
        return cls(**(_ABSENT_MEANS | {k: v for k, v in data.items() if k in known}))


# Value of a field in configs saved before the field existed (the behaviour those runs had).
_ABSENT_MEANS: dict[str, Any] = {"input_smoothing": 0.0, "source_sampling": "random"}

_HELP = {
    "dataset": "MedMNIST name (pneumoniamnist, breastmnist, ...) or path to an .npz",
    "data_root": "folder with the MedMNIST .npz files (default: $HYBRID_DATA_ROOT)",
    "train_centers": "multi-center npz: centers to train on (names or ids, comma-separated)",
    "test_centers": "multi-center npz: held-out centers (names or ids, comma-separated)",
    "label_field": "multi-center npz: label array, e.g. malignant",
    "pretrained": "start from ImageNet weights (torchvision, or --weights-path)",
    "tta": "test-time adaptation at evaluation",
    "input_smoothing": "sigma in pixels of a fixed Gaussian low-pass before the encoder, 0 = off",
    "source_sampling": "random: each source center draws its strengths uniformly; stratified: Latin hypercube",
}
_CHOICES = {
    "feature_map": FEATURE_MAPS,
    "entanglement": ENTANGLEMENTS,
    "q_precision": ("float64", "float32"),
    "tta": tuple(TTA_METHODS),
    "stem_stride": (1, 2),
    "source_sampling": SOURCE_SAMPLINGS,
}
_SKIP = {"backend"}  # added by the entry point with choices from the registry


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One CLI flag per config field; booleans get --flag / --no-flag."""
    for f in fields(TrainConfig):
        if f.name in _SKIP:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        help_text = _HELP.get(f.name, "") + f" (default: {default})"
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
            continue
        kind = {int: int, float: float, str: str}.get(type(default), str)
        if f.name in ("threads", "max_train_samples"):
            kind = int
        parser.add_argument(flag, type=kind, default=default, choices=_CHOICES.get(f.name), help=help_text)


def config_from_args(args: argparse.Namespace, **overrides) -> TrainConfig:
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    values.update(overrides)
    return TrainConfig(**values)
