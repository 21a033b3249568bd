"""What every command-line tool shares: config flags with choices from the registries, logging,
and turning a user's mistake into one `error:` line and exit status 2 (no traceback)."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import shlex
import sys
import sysconfig
import traceback
from dataclasses import fields
from pathlib import Path
from typing import Callable

from hybrid.config import ANGLE_MAPS, NOISE_CHANNELS, SELECTIONS, TrainConfig, field_type

HELP = {
    "dataset": "MedMNIST name (pneumoniamnist, breastmnist, ...) or path to an .npz",
    "data_root": "folder with the MedMNIST .npz files (default: $HYBRID_DATA_ROOT)",
    "train_centers": "multi-center npz: centers to train on (names or ids, comma-separated)",
    "test_centers": "multi-center npz: held-out centers (names or ids, comma-separated)",
    "label_field": "multi-center npz: label array, e.g. malignant",
    "classes": "train and evaluate on these classes only (names, any case, or ids; comma-separated), relabelled "
               "0..k-1 in the order given; with two, the first is the positive class (e.g. mel,nv)",
    "pretrained": "start from ImageNet weights (torchvision, or --weights-path)",
    "weights_path": "with --pretrained: a local file holding torchvision's mobilenet_v2 ImageNet state_dict (no "
                    "download), e.g. saved with torch.save(model.state_dict(), path) for model = "
                    "mobilenet_v2(weights='IMAGENET1K_V1')",
    "algorithm": "domain-generalization training algorithm",
    "algorithm_hparams": "NAME=VALUE,... for the algorithm's own hyperparameters (an unknown NAME is answered with the list)",
    "tta": "test-time adaptation at evaluation",
    "figures": "draw the run's figures (ROC curves, AUC per domain, training curves, centers); --no-figures saves "
               "a few seconds per run, for sweeps of tiny runs (the numbers are the same)",
    "backend": "where the quantum layer runs; exact backends train with the torch engine",
    "colour_constancy": "Shades of Gray colour constancy on RGB images: the p-norm of the illuminant estimate "
                        "(6 is the usual choice, 1 grey world), applied in the network at training and evaluation; "
                        "0 = off",
    "rgb_shifts": "colour images: the virtual centers also differ in white balance, saturation and hue, and "
                  "evaluation adds colour target centers (grayscale data is unaffected)",
    "quantum_head": "how the quantum layer joins the network: concat (classifier sees embedding and layer), "
                    "dressed (classifier sees the layer only), residual (embedding + Linear(layer))",
    "quantum_layer": "pqc (the circuit), separable (its entangling gates removed), classical_twin (a classical "
                     "layer with the same parameter count), none (no layer: Linear -> Linear)",
    "feature_map": "how the angles enter the circuit: zz (Qiskit's ZZ feature map), angle (RY(x) RZ(x) per qubit; "
                   "the map that trains in the dressed head) or ry (RY(x) per qubit, as in Mari et al.'s dressed "
                   "circuit)",
    "q_feature_reps": "how many times the feature map encodes the angles; with the angle and ry maps fewer "
                      "encodings give outputs of lower frequency in each angle (a smoother function of the features)",
    "q_angle_norm": "BatchNorm (affine) on the projection in front of the quantum slot: the angles keep their "
                    "spread when a center shifts the features, and domain-level TTA (adabn) re-estimates it",
    "q_angle_map": "how the slot's inputs z become angles in (0, pi): tanh, pi/2 (1 + tanh z), or arctan, "
                   "pi/2 + arctan z, which saturates slower: with one RY its <Z> is -z/sqrt(1 + z^2), so images far "
                   "from the boundary keep their order instead of all reading -1 or +1",
    "q_input_dropout": "feed the quantum slot dropout(f) (p = --dropout) instead of the embedding f: the dressed "
                       "head otherwise trains with no dropout anywhere, where concat's classifier has it",
    "q_reupload": "data re-uploading: the feature map and a new ansatz block, repeated this many times",
    "q_observables": "what the circuit measures: z (Z on each qubit), zz (ZZ on neighbours) or z+zz",
    "q_train_shots": "noise-aware training: estimate each expectation value from this many shots (0: exact)",
    "q_shot_noise": "binomial (a mean of N ±1 outcomes) or gaussian (its normal approximation), both with the exact "
                    "value's gradient; pathwise: the normal approximation differentiated through its variance, so "
                    "training learns where shots disturb the outputs least; joint: every observable read from the "
                    "same bitstrings drawn from the state, as a device reads Z and ZZ (their errors correlate); "
                    "marginal (dressed head): no draws, the joint shots' expected extra loss added to the class "
                    "loss, differentiated through the state",
    "q_readout_error": "noise-aware training: each measured bit flips with this probability",
    "q_depolarizing": "noise-aware training: global depolarizing strength λ, <O> -> (1 - λ) <O>",
    "q_lr_scale": "the quantum slot's learning rate as a multiple of --lr (circuit weights are angles: at the "
                  "shared rate they move a few hundredths of a radian in a short run); the classical twin gets "
                  "the same multiple, so the controls stay fair",
    "label_smoothing": "label smoothing of the classification loss (0: one-hot targets); it bounds the margin "
                       "a training image is pushed to, so bounded outputs (the dressed circuit's) are not driven "
                       "to their ends",
    "aux_weight": "deep supervision: add this weight x the cross-entropy of a linear classifier on dropout(f) to the "
                  "class loss while training; the classifier belongs to the training algorithm, not the saved "
                  "network, so predictions still pass only through the head (0: off)",
    "head_grad_scale": "share of the head's class-loss gradient that reaches the encoder (1: joint training). 0 trains "
                       "the head (the quantum slot included) on detached embeddings while --aux-weight's linear "
                       "classifier and the algorithm's own losses shape the encoder: quantum transfer learning "
                       "(Mari et al., 2020) in one run; with --aux-weight 0 --algorithm erm --init-from RUN it refits "
                       "the head of a trained network whose encoder stays fixed (Mari et al.'s second stage)",
    "head_distill": "self-distillation: add this weight x T^2 x KL(teacher || head) at temperature T "
                    "(--distill-temperature) to the class loss, the teacher being --aux-weight's linear classifier on "
                    "the same embedding (detached, without dropout), so the head is trained towards the teacher's "
                    "graded ranking as well as the labels; needs --aux-weight > 0 (0: off)",
    "distill_temperature": "temperature T of --head-distill (higher: the head matches more of the teacher's "
                           "logit differences, less of its hard decisions)",
    "ema_decay": "weight averaging: validate, select and save an exponential moving average of the weights "
                 "(bias-corrected, this decay per optimizer step; 0.99 weighs about the last 100 steps) instead of "
                 "the last iterate; 0 = off",
    "selection": "which epoch's network best.pt keeps: auc (the highest source-validation AUC, a tie to the lower "
                 "loss) or last (the end of the one-cycle schedule; every epoch is still validated and logged)",
    "q_noise_device": "noise-aware training for a device: before training, run the circuit on this backend "
                      "(e.g. aer_noisy:fake_manila) with random inputs and weights, fit how much it shrinks each "
                      "expectation value, and train with those factors (saved as q_attenuation)",
    "q_attenuation": "noise-aware training: per-observable factors 'a1,a2,...' in (0, 1] that scale the exact "
                     "expectation values while training (filled in by --q-noise-device)",
    "q_noise_channel": "how --q-noise-device's noise is trained with: attenuation (fitted factors, the exact engine) "
                       "or density (a density-matrix simulation of the device's noise model on the transpiled "
                       "circuit, its readout errors and gate errors, while training; evaluation stays exact)",
    "init_from": "start from the network of this run directory (its best.pt; '{seed}' becomes this run's seed), "
                 "e.g. to fine-tune an exact-trained model for a device with --q-noise-device",
    "q_noise_at_eval": "keep the training noise in the exact engine at evaluation (imitates a device)",
    "input_smoothing": "sigma in pixels of a fixed Gaussian low-pass before the encoder, 0 = off",
    "source_sampling": "random: each source center draws its strengths uniformly; stratified: Latin hypercube",
    "device": "auto (CUDA when torch sees a GPU, else CPU), cpu, cuda, cuda:N or mps",
    "amp": "mixed precision in the encoder: float16 with a gradient scaler on CUDA, bfloat16 on CPU; the "
           "quantum layer keeps q_precision",
    "channels_last": "run the encoder in channels-last memory format (about 1.6x faster on CPUs with oneDNN; "
                     "rounds differently in the last bits, so --no-channels-last reproduces older runs exactly)",
}


def positive_int(text: str) -> int:
    """argparse type for counts that must be at least 1 (sample limits, batch sizes)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def names_list(text: str) -> list[str]:
    """argparse type for comma-separated names ("a,b"); an empty list is refused."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expects comma-separated names, got {text!r}")
    return names


def seeds_list(text: str) -> list[int]:
    """argparse type for comma-separated seeds ("3,4,5"), each a whole number of 0 or more."""
    try:
        seeds = [int(part) for part in names_list(text)]
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"expects comma-separated whole numbers, got {text!r}") from None
    if any(seed < 0 for seed in seeds):
        raise argparse.ArgumentTypeError(f"seeds are 0 or more, got {text!r}")
    return seeds


def config_choices() -> dict[str, tuple]:
    """CLI choices of the config fields that name registry entries."""
    from backends import BACKENDS
    from hybrid.algorithms import ALGORITHMS
    from hybrid.heads import QUANTUM_HEADS, QUANTUM_LAYERS
    from hybrid.quantum import ENTANGLEMENTS, FEATURE_MAPS, OBSERVABLE_SETS, PRECISIONS, SHOT_NOISE
    from hybrid.shifts import SOURCE_SAMPLINGS
    from hybrid.tta import TTA_METHODS

    return {"algorithm": tuple(ALGORITHMS), "feature_map": FEATURE_MAPS, "entanglement": ENTANGLEMENTS,
            "q_precision": tuple(PRECISIONS), "tta": tuple(TTA_METHODS), "stem_stride": (1, 2),
            "source_sampling": SOURCE_SAMPLINGS, "backend": tuple(sorted(BACKENDS)),
            "quantum_head": QUANTUM_HEADS, "quantum_layer": QUANTUM_LAYERS, "q_observables": OBSERVABLE_SETS,
            "q_shot_noise": SHOT_NOISE, "q_noise_channel": NOISE_CHANNELS, "selection": SELECTIONS,
            "q_angle_map": ANGLE_MAPS}


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One CLI flag per config field; booleans get --flag / --no-flag."""
    choices = config_choices()
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = HELP.get(f.name, "")
        help_text += "" if "(default:" in help_text else f" (default: {f.default})"
        kind = field_type(f.name)
        default = None if f.name == "algorithm" else f.default  # None: not given, so --dann may set it
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
            continue
        parser.add_argument(flag, type=kind, default=default, choices=choices.get(f.name), help=help_text)
    parser.add_argument("--dann", action=argparse.BooleanOptionalAction, default=None,
                        help="older spelling: --dann is --algorithm dann, --no-dann is --algorithm erm")


def config_from_args(args: argparse.Namespace, **overrides) -> TrainConfig:
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    if getattr(args, "dann", None) is not None:
        legacy = "dann" if args.dann else "erm"
        if values.get("algorithm") not in (None, legacy):
            raise ValueError(f"--{'' if args.dann else 'no-'}dann contradicts --algorithm {values['algorithm']}; "
                             "give one of them")
        values["algorithm"] = legacy
    if values.get("algorithm") is None:
        values["algorithm"] = TrainConfig.algorithm
    values.update(overrides)
    return TrainConfig(**values)


def given_config_fields(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The config fields (and --dann) named on the command line, as opposed to left at their defaults.

    argparse sets a default only where the namespace lacks the attribute, so a namespace whose every field
    holds a marker keeps the marker exactly where no flag was given."""
    names = [f.name for f in fields(TrainConfig)] + ["dann"]
    marker = object()
    namespace = argparse.Namespace(**dict.fromkeys(names, marker))
    parser.parse_known_args(argv, namespace=namespace)
    return {name for name in names if getattr(namespace, name) is not marker}


def command_line(prog: str, argv: list[str] | None) -> str:
    """The command as typed, for the run's report."""
    return prog + " " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))


def configure_logging(verbose: bool = True) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if verbose:
        logging.getLogger("hybrid").setLevel(logging.INFO)


def run_cli(body: Callable[[], int | None], *, verbose: bool = True,
            extra_errors: tuple[type[BaseException], ...] = (),
            exit_codes: dict[type[BaseException], int] | None = None,
            on_interrupt: Callable[[], str] | None = None) -> int:
    """Run a tool's body with the project's logging; user errors become one sentence on stderr.

    `DataError`, `FileNotFoundError` and `ValueError` (and `extra_errors`) exit with 2, or with
    the code `exit_codes` gives their type; an OSError (full disk, no permission) says what to do;
    Ctrl-C stops with exit status 130 and the line `on_interrupt` gives (how to continue); anything
    else is a bug and keeps its traceback. Such an error raised outside this project (a library's
    message, not one of ours, so possibly a bug) names where it was raised; $HYBRID_TRACEBACK=1 prints
    the whole traceback of every caught error.
    """
    configure_logging(verbose)
    codes = exit_codes or {}
    try:
        result = body()
    except KeyboardInterrupt:
        print(f"\ninterrupted{'; ' + on_interrupt() if on_interrupt else ''}", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, *extra_errors, *codes) as exc:
        _print_traceback_if_asked(exc)
        print(f"error: {exc}{raised_outside(exc)}", file=sys.stderr)
        return next((code for kind, code in codes.items() if isinstance(exc, kind)), 2)
    except OSError as exc:  # a full disk, a read-only folder: the environment, not the input
        _print_traceback_if_asked(exc)
        where = f" {exc.filename}" if exc.filename else ""
        print(f"error: cannot write or read{where}: {exc.strerror or exc}; "
              f"{OS_ADVICE.get(exc.errno, 'check the path and its permissions')}", file=sys.stderr)
        return 2
    return 0 if result is None else result


TRACEBACK_ENV = "HYBRID_TRACEBACK"
_STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()
_PROJECT_PACKAGES = tuple(Path(__file__).resolve().parent.parent / name
                          for name in ("hybrid", "backends", "benchmarks"))


def raised_outside(exc: BaseException) -> str:
    """' (raised in torch/nn/functional.py:2380, in conv2d; ...)' when the error comes from a library rather than
    this project's packages, else ''. Our own errors are sentences for the user; a library's may be a bug of ours
    whose one line alone would not say where to look. Standard-library frames (json, pathlib) are passed over:
    they only carry out what our code asked, and a missing file names itself."""
    if isinstance(exc, FileNotFoundError):
        return ""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        path = Path(frame.filename).resolve()
        if any(path.is_relative_to(package) for package in _PROJECT_PACKAGES):
            return ""
        parts = path.parts
        installed = next((k for k, part in enumerate(parts) if part in ("site-packages", "dist-packages")), None)
        if installed is None and path.is_relative_to(_STDLIB):
            continue
        short = Path(*parts[installed + 1:]) if installed is not None else path
        return f" (raised in {short}:{frame.lineno}, in {frame.name}; {TRACEBACK_ENV}=1 shows the whole traceback)"
    return ""


def _print_traceback_if_asked(exc: BaseException) -> None:
    if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
        traceback.print_exception(exc, file=sys.stderr)


OS_ADVICE = {
    errno.ENOSPC: "free some space and rerun (with --resume where the tool has it); files written before are intact",
    errno.EDQUOT: "free some of your quota and rerun (with --resume where the tool has it); files written before "
                  "are intact",
    errno.EACCES: "choose a folder you can write to",
    errno.EPERM: "choose a folder you can write to",
    errno.EROFS: "the file system is read-only; choose another folder",
}
