"""The one frozen run configuration, saved as `config.json` in every run directory.

This module imports nothing from the rest of the project: names (algorithm, TTA method,
feature map, ...) are validated by the registries that build them, and the CLI flags with
their choices are made in `hybrid.cli`.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any


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
    classes: str | None = None  # keep these classes (names or ids, comma-separated), remapped to 0..k-1 in this order
    # model
    width_mult: float = 1.0  # MobileNetV2 width multiplier
    stem_stride: int = 1  # stride of the first conv; 1 keeps detail on 28-32 px images
    pretrained: bool = False  # ImageNet weights (torchvision download or weights_path)
    weights_path: str | None = None  # local torchvision mobilenet_v2 state_dict for --pretrained
    input_smoothing: float = 1.0  # sigma (px) of a fixed Gaussian low-pass in front of the encoder; 0 = off
    colour_constancy: float = 0.0  # Shades of Gray p-norm on RGB inputs (6 is usual); 0 = off
    embed_dim: int = 128  # bottleneck features shared by classifier, projection and discriminator
    dropout: float = 0.2
    channels_last: bool = True  # encoder in NHWC memory format: oneDNN's faster CPU kernels (same maths)
    # the domain-generalization components; each ablation is one flag away
    algorithm: str = "dann"  # training algorithm from hybrid.algorithms.ALGORITHMS (erm, dann, ...)
    algorithm_hparams: str = ""  # "name=value,..." overrides of the algorithm's own HPARAMS defaults
    quantum: bool = True  # quantum feature-enhancement layer in the head
    shift: bool = True  # imaging-shift simulation: train on virtual source centers
    rgb_shifts: bool = True  # colour images: colour families in the source centers, colour target centers
    n_qubits: int = 4
    feature_map: str = "zz"
    q_feature_reps: int = 2  # repetitions of the feature map's encoding block
    q_reps: int = 2
    entanglement: str = "linear"
    q_precision: str = "float64"
    quantum_head: str = "concat"  # how the layer joins the network: concat, dressed or residual (hybrid.heads)
    quantum_layer: str = "pqc"  # pqc, or a control: separable, classical_twin, none
    q_reupload: int = 1  # data re-uploading: (feature map, ansatz) blocks, each with its own weights
    q_angle_norm: bool = False  # BatchNorm on the slot's inputs before the angle map (re-estimated by TTA)
    q_angle_map: str = "tanh"  # how the slot's inputs become angles in (0, pi): tanh, or arctan (saturates slower)
    q_input_dropout: bool = False  # the quantum slot reads dropout(f) (p = dropout), as concat's classifier does
    q_observables: str = "z"  # z (one per qubit), zz (neighbour pairs) or z+zz
    q_train_shots: int = 0  # noise-aware training: expectation values estimated from this many shots; 0 exact
    q_shot_noise: str = "binomial"  # binomial (a mean of ±1 outcomes), gaussian (same variance), pathwise, joint, marginal
    q_readout_error: float = 0.0  # training noise: probability that a measured bit flips
    q_depolarizing: float = 0.0  # training noise: global depolarizing strength (<O> -> (1 - λ) <O>)
    q_noise_device: str = ""  # training noise: fit each observable's attenuation on this backend ("" = none)
    q_attenuation: str = ""  # training noise: per-observable factors "a1,a2,..." (fitted from q_noise_device)
    q_noise_channel: str = "attenuation"  # how q_noise_device's noise is trained with: attenuation, or density
    q_noise_at_eval: bool = False  # keep the training noise at evaluation (off: evaluation is exact)
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
    init_from: str = ""  # start from this run directory's selected network ("{seed}" = this seed); "" = fresh
    q_lr_scale: float = 1.0  # learning rate of the quantum slot (circuit weights, or the twin) = lr x this
    label_smoothing: float = 0.0  # class targets: (1 - e) one-hot + e uniform (torch's); 0 = one-hot
    aux_weight: float = 0.0  # deep supervision: weight of a training-only linear classifier on the embedding; 0 = off
    head_grad_scale: float = 1.0  # share of the head's class-loss gradient that reaches the encoder; 0 = detached
    head_distill: float = 0.0  # weight of distilling the head towards the aux classifier's logits; 0 = off
    distill_temperature: float = 2.0  # temperature of that distillation (Hinton et al.'s T)
    ema_decay: float = 0.0  # validate, select and save an EMA of the weights with this decay per step; 0 = off
    selection: str = "auc"  # which epoch best.pt keeps: auc (best source-validation AUC) or last
    augment: bool = True  # small random translations
    seed: int = 0
    threads: int | None = None  # torch threads (None: torch default)
    device: str = "auto"  # auto (cuda when available, else cpu), cpu, cuda, cuda:N or mps
    amp: bool = False  # mixed precision in the encoder (float16 on CUDA, bfloat16 on CPU); quantum layer stays exact
    # evaluation
    tta: str = "adabn"  # test-time adaptation: adabn (whole-domain BN statistics), bn, bn2d, tent or none
    backend: str = "aer"  # backends registry name; exact backends train with the torch engine
    eval_batch_size: int = 256
    n_bootstrap: int = 1000
    eval_max_samples: int | None = None  # final evaluation: at most this many images per domain (quick runs)
    figures: bool = True  # draw the run's PNG figures (off: seconds saved per run in sweeps of tiny runs)

    def __post_init__(self) -> None:
        problems = [problem for problem in (check(self, name) for name in LIMITS) if problem]
        problems += [problem for problem in (check_attenuation(self.q_attenuation), check_noise_channel(self),
                                             check_head_gradient(self), check_distill(self),
                                             check_marginal_noise(self), check_weights_path(self)) if problem]
        problems += [problem for problem in (check_choice(self, name) for name in CHOICES) if problem]
        if problems:
            raise ValueError("; ".join(problems))

    def model_config(self) -> "ModelConfig":
        """The fields the network is built from (the rest is data, training and evaluation)."""
        return ModelConfig(**{f.name: getattr(self, f.name) for f in fields(ModelConfig)})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def differences(self, other: "TrainConfig", ignore=()) -> list[tuple[str, Any, Any]]:
        """(field, this value, other value) for every field but `ignore` where the two configs differ.

        The attenuation fitted from `q_noise_device` is derived: a config that names the device but has
        not fitted it yet matches one that has."""
        if self.q_noise_device == other.q_noise_device and "" in (self.q_attenuation, other.q_attenuation):
            ignore = (*ignore, "q_attenuation")
        return [(f.name, getattr(self, f.name), getattr(other, f.name)) for f in fields(self)
                if f.name not in ignore and getattr(self, f.name) != getattr(other, f.name)]

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "TrainConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """A saved config: a run saved before a field existed was made without that feature,
        whatever today's default (see ABSENT_MEANS), and renamed fields are mapped. Unknown
        fields and values of the wrong type are refused (a tampered or foreign file)."""
        if not isinstance(data, dict):
            raise ValueError(f"a config is a JSON object of fields, got {type(data).__name__}")
        values = upgrade_fields(data)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config fields {unknown} (written by another version of hybrid-qdg, or "
                             "edited by hand)")
        wrong = [f"{k}={v!r} (expected {type_name(k)})" for k, v in values.items() if not value_fits(k, v)]
        if wrong:
            raise ValueError(f"config values of the wrong type: {', '.join(wrong)}")
        return cls(**(ABSENT_MEANS | values))


@dataclass(frozen=True)
class ModelConfig:
    """What `HybridNet` is built from: the encoder, the embedding and the quantum layer."""

    width_mult: float = 1.0
    stem_stride: int = 1
    pretrained: bool = False
    weights_path: str | None = None
    input_smoothing: float = 1.0
    colour_constancy: float = 0.0
    embed_dim: int = 128
    dropout: float = 0.2
    channels_last: bool = True
    amp: bool = False
    quantum: bool = True
    n_qubits: int = 4
    feature_map: str = "zz"
    q_feature_reps: int = 2  # repetitions of the feature map's encoding block
    q_reps: int = 2
    entanglement: str = "linear"
    q_precision: str = "float64"
    quantum_head: str = "concat"  # how the layer joins the network: concat, dressed or residual (hybrid.heads)
    quantum_layer: str = "pqc"  # pqc, or a control: separable, classical_twin, none
    q_reupload: int = 1  # data re-uploading: (feature map, ansatz) blocks, each with its own weights
    q_angle_norm: bool = False  # BatchNorm on the slot's inputs before the angle map (re-estimated by TTA)
    q_angle_map: str = "tanh"  # how the slot's inputs become angles in (0, pi): tanh, or arctan (saturates slower)
    q_input_dropout: bool = False  # the quantum slot reads dropout(f) (p = dropout), as concat's classifier does
    q_observables: str = "z"  # z (one per qubit), zz (neighbour pairs) or z+zz
    q_train_shots: int = 0  # noise-aware training: expectation values estimated from this many shots; 0 exact
    q_shot_noise: str = "binomial"  # binomial (a mean of ±1 outcomes), gaussian (same variance), pathwise, joint, marginal
    q_readout_error: float = 0.0  # training noise: probability that a measured bit flips
    q_depolarizing: float = 0.0  # training noise: global depolarizing strength (<O> -> (1 - λ) <O>)
    q_attenuation: str = ""  # training noise: per-observable factors "a1,a2,..." (fitted from q_noise_device)
    q_noise_at_eval: bool = False  # keep the training noise at evaluation (off: evaluation is exact)
    seed: int = 0  # seeds the quantum layer's initial weights


# Where a run runs and whether it draws figures, not what it is (never its numbers): a resumed run or a study
# rerun may change these.
ENVIRONMENT_FIELDS = ("threads", "data_root", "device", "figures")

# Value of a field in configs saved before the field existed (the behaviour those runs had).
ABSENT_MEANS: dict[str, Any] = {"input_smoothing": 0.0, "source_sampling": "random", "channels_last": False,
                                 "rgb_shifts": False}


# Ranges a run can work with; each is checked when a config is made (CLI, API, saved file).
MAX_QUBITS = 16  # the exact engine holds 2**n complex amplitudes per image: 1 MiB at 16 qubits, per state
LIMITS: dict[str, tuple[float | None, float | None, str]] = {  # field: (lowest, highest, the rule in words)
    "epochs": (1, None, "at least 1"),
    "batch_size": (2, None, "at least 2 (BatchNorm needs two images in a training batch)"),
    "eval_batch_size": (1, None, "at least 1"),
    "lr": (1e-12, None, "above 0"),
    "weight_decay": (0, None, "0 or more"),
    "q_lr_scale": (1e-6, 1e4, "above 0 (a multiple of --lr, at most 10000)"),
    "label_smoothing": (0, 0.5, "between 0 and 0.5"),
    "aux_weight": (0, None, "0 (off) or more"),
    "head_grad_scale": (0, 1, "between 0 (the head learns on detached embeddings) and 1 (joint training)"),
    "head_distill": (0, None, "0 (off) or more"),
    "distill_temperature": (0.01, 100, "between 0.01 and 100"),
    "ema_decay": (0, 0.99999, "0 (off) or a decay per step below 1 (0.99 averages about the last 100 steps)"),
    "width_mult": (0.01, None, "above 0"),
    "embed_dim": (1, None, "at least 1"),
    "dropout": (0, 0.99, "at least 0 and below 1"),
    "clean_fraction": (0, 1, "between 0 and 1"),
    "n_source_centers": (1, None, "at least 1"),
    "n_qubits": (1, MAX_QUBITS, f"between 1 and {MAX_QUBITS} (the exact engine simulates 2**n amplitudes per image)"),
    "q_reps": (1, None, "at least 1"),
    "q_feature_reps": (1, None, "at least 1"),
    "q_reupload": (1, None, "at least 1"),
    "q_train_shots": (0, None, "0 (exact) or more"),
    "q_readout_error": (0, 0.5, "between 0 and 0.5"),
    "q_depolarizing": (0, 1, "between 0 and 1"),
    "input_size": (8, None, "at least 8 pixels (the encoder halves the image five times)"),
    "max_train_samples": (2, None, "at least 2"),
    "threads": (1, None, "at least 1"),
    "n_bootstrap": (0, None, "0 (no intervals) or more"),
    "eval_max_samples": (1, None, "at least 1"),
    "input_smoothing": (0, None, "0 (off) or more"),
    "colour_constancy": (0, 1000, "0 (off) or a p-norm up to 1000 (1 grey world, 6 Shades of Gray)"),
    "dann_max_lambda": (0, None, "0 or more"),
    "dann_weight": (0, None, "0 or more"),
}


def check(cfg: "TrainConfig", name: str) -> str | None:
    """What is wrong with one field's value, naming its flag, or None."""
    value, (low, high, why) = getattr(cfg, name), LIMITS[name]
    if value is None and optional(name):
        return None
    flag = "--" + name.replace("_", "-")
    if not value_fits(name, value) or (isinstance(value, float) and not math.isfinite(value)):
        return f"{flag} must be {type_name(name)}, got {value!r}"
    if (low is not None and value < low) or (high is not None and value > high):
        return f"{flag} must be {why}, got {value!r}"
    return None


def parse_attenuation(text: str) -> tuple[float, ...]:
    """`"0.9,0.74,..."` (one factor per observable, in (0, 1]) -> a tuple; `""` -> no attenuation."""
    if not text.strip():
        return ()
    try:
        factors = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"attenuation must be comma-separated numbers in (0, 1], got {text!r}") from None
    if not all(0.0 < a <= 1.0 for a in factors):
        raise ValueError(f"attenuation factors must be in (0, 1], got {text!r}")
    return factors


def check_attenuation(text: str) -> str | None:
    """What is wrong with a `--q-attenuation` value, or None."""
    if not isinstance(text, str):
        return f"--q-attenuation must be text, got {text!r}"
    try:
        parse_attenuation(text)
    except ValueError as exc:
        return f"--q-attenuation: {exc}"
    return None


ANGLE_MAPS = ("tanh", "arctan")  # the slot's inputs z -> angles: pi/2 (1 + tanh z), or pi/2 + arctan z
SELECTIONS = ("auc", "last")  # model selection: the best source-validation AUC, or the end of the schedule
# Fields whose value names one of a few fixed choices (registry names are checked where the registries live).
CHOICES = {"selection": SELECTIONS, "q_angle_map": ANGLE_MAPS}


def check_choice(cfg: "TrainConfig", name: str) -> str | None:
    """What is wrong with one of CHOICES' fields, naming its flag, or None."""
    value, allowed = getattr(cfg, name), CHOICES[name]
    if value in allowed:
        return None
    return f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}, got {value!r}"


def refits_head(cfg: "TrainConfig") -> bool:
    """Nothing reaches the encoder: a detached head, no aux classifier, ERM. The run refits the head of the trained
    network it starts from (--init-from), whose encoder stays exactly as it was (Mari et al.'s second stage)."""
    return cfg.head_grad_scale == 0 and cfg.aux_weight == 0 and cfg.algorithm == "erm"


def check_head_gradient(cfg: "TrainConfig") -> str | None:
    """A detached head leaves the encoder no class loss unless the auxiliary classifier gives it one; without one
    only a head refit makes sense, which ERM guarantees (other algorithms' own losses would move the encoder with no
    class loss to hold it). That a refit has a network to start from is checked when it trains."""
    if cfg.head_grad_scale != 0 or cfg.aux_weight != 0 or refits_head(cfg):
        return None
    return ("--head-grad-scale 0 trains the head on detached embeddings, so the encoder would learn no class at all; "
            "give it a class loss with --aux-weight (e.g. 1), or refit the head of a trained network with "
            "--init-from RUN --algorithm erm (the encoder then stays as it was)")


QUANTUM_FIELDS = ("n_qubits", "feature_map", "entanglement", "quantum_head", "quantum_layer")  # and every q_*
CENTER_FIELDS = ("label_field", "center_field", "train_centers", "test_centers")


def unused_options(cfg: "TrainConfig") -> dict[str, str]:
    """Flags given (away from their defaults) that this configuration never reads -> why, so a training run can
    say so rather than drop them silently."""
    defaults = TrainConfig()
    changed = [f.name for f in fields(cfg) if getattr(cfg, f.name) != getattr(defaults, f.name)]
    why = {}
    for name in changed:
        if not cfg.quantum and (name in QUANTUM_FIELDS or name.startswith("q_")):
            why[name] = "no quantum layer (--no-quantum)"
        elif cfg.algorithm != "dann" and name in ("dann_weight", "dann_max_lambda"):
            why[name] = f"--algorithm {cfg.algorithm}, not dann"
        elif not cfg.dataset.endswith(".npz") and name in CENTER_FIELDS:
            why[name] = f"{cfg.dataset} is not a multi-center .npz"
        elif name == "q_shot_noise" and cfg.q_train_shots == 0:
            why[name] = "no --q-train-shots (training is exact)"
    return {"--" + name.replace("_", "-"): reason for name, reason in why.items()}


def check_weights_path(cfg: "TrainConfig") -> str | None:
    """A weights file is only read with --pretrained: without it the run would silently train from scratch."""
    if cfg.weights_path is None or cfg.pretrained:
        return None
    return (f"--weights-path {cfg.weights_path} is read only with --pretrained; add --pretrained to start from it, "
            "or drop --weights-path to train from scratch")


def check_distill(cfg: "TrainConfig") -> str | None:
    """The head is distilled towards the training-only aux classifier, so there must be one."""
    if cfg.head_distill == 0 or cfg.aux_weight > 0:
        return None
    return ("--head-distill distils the head towards the auxiliary classifier on the embedding, which --aux-weight 0 "
            "leaves out: give it a weight (e.g. --aux-weight 1)")


NOISE_CHANNELS = ("attenuation", "density")  # fitted factors per observable, or the device's noise model itself


def check_marginal_noise(cfg: "TrainConfig") -> str | None:
    """--q-shot-noise marginal computes the shots' effect on logits read linearly from the circuit: the dressed
    head's, on the exact engine (a density channel draws from its own probabilities), for training only."""
    if cfg.q_shot_noise != "marginal" or cfg.q_train_shots == 0:
        return None
    if not cfg.quantum or cfg.quantum_head != "dressed" or cfg.quantum_layer not in ("pqc", "separable"):
        return ("--q-shot-noise marginal adds the shot variance of logits read from the circuit alone: it needs "
                "--quantum-head dressed with a circuit in the slot (pqc or separable)")
    if cfg.q_noise_channel == "density" or cfg.q_noise_at_eval:
        return ("--q-shot-noise marginal is a training objective on the exact engine: it draws nothing, so it cannot "
                "go with --q-noise-channel density or --q-noise-at-eval (use the joint kind there)")
    return None


def check_noise_channel(cfg: "TrainConfig") -> str | None:
    """What is wrong with `--q-noise-channel` beside the other noise flags, or None."""
    if cfg.q_noise_channel not in NOISE_CHANNELS:
        return f"--q-noise-channel must be one of {', '.join(NOISE_CHANNELS)}, got {cfg.q_noise_channel!r}"
    if cfg.q_noise_channel != "density":
        return None
    if not cfg.q_noise_device:
        return "--q-noise-channel density simulates a device's noise model: name it with --q-noise-device"
    doubled = [flag for flag, value in (("--q-readout-error", cfg.q_readout_error),
                                        ("--q-depolarizing", cfg.q_depolarizing),
                                        ("--q-attenuation", cfg.q_attenuation)) if value]
    if doubled:
        return (f"--q-noise-channel density already has the device's readout and gate errors; drop "
                f"{', '.join(doubled)}")
    return None


def type_name(name: str) -> str:
    kind = field_type(name)
    text = {int: "a whole number", float: "a number", bool: "true or false", str: "text"}[kind]
    return text + (" or null" if optional(name) else "")


@functools.cache
def _annotations() -> dict[str, str]:
    """Each TrainConfig field's annotation as text (`int | None`), computed once."""
    return {f.name: str(f.type) for f in fields(TrainConfig)}


def optional(name: str) -> bool:
    """Whether the field may be None (`int | None`)."""
    return "None" in _annotations()[name]


def value_fits(name: str, value) -> bool:
    """Whether `value` has the type of field `name` (JSON numbers: an int is a valid float)."""
    if name not in _annotations():
        return False
    if value is None:
        return optional(name)
    kind = field_type(name)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def field_type(name: str) -> type:
    """The scalar type of a TrainConfig field (`int | None` gives int), for parsing text values."""
    base = _annotations()[name].replace(" ", "").split("|")[0]
    return {"int": int, "float": float, "bool": bool, "str": str}[base]


def upgrade_fields(data: dict[str, Any]) -> dict[str, Any]:
    """Map fields of older configs to today's: `dann: bool` became `algorithm: str`."""
    data = dict(data)
    if "dann" in data:
        legacy = data.pop("dann")
        data.setdefault("algorithm", "dann" if legacy else "erm")
    return data

