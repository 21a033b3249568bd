"""Train the hybrid model on one dataset and evaluate it on unseen centers.

    python -m hybrid.train --backend aer                       # PneumoniaMNIST, all components
    python -m hybrid.train --no-quantum --algorithm erm --out runs/erm
    python -m hybrid.train --dataset ham10000_sources_64.npz --label-field malignant \\
        --center-field source_ids --train-centers vidir_molemax,vidir_modern,vienna_dias \\
        --test-centers rosendahl

The run directory gets config.json, centers.json, metrics.jsonl (one line per epoch),
last.pt / best.pt (written atomically), report.json, report.md, results.jsonl and figures.
Model selection and the decision threshold use source validation data only.

The pipeline: data -> shifts (`hybrid.domains`) -> algorithm (`hybrid.algorithms`) trained by
`hybrid.fit` -> TTA and metrics on the unseen domains (`hybrid.inference`) -> report.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import socket
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from hybrid.algorithms import ALGORITHMS, check_algorithm, make_algorithm
from hybrid.checkpoints import load_checkpoint
from hybrid.config import ENVIRONMENT_FIELDS, TrainConfig, refits_head, unused_options
from hybrid.data import DataError, DatasetBundle, Split, resolve_data_root
from hybrid.device_noise import attach_noise_channel, with_device_attenuation
from hybrid.devices import resolve_device
from hybrid.distributed import Distributed
from hybrid.domains import (DomainSampler, build_eval_domains, first_samples, is_unseen, load_bundle,
                            split_to_tensors, uses_colour_shifts)
from hybrid.fit import TrainingData, fit
from hybrid.inference import evaluate_domains, predict_probs, source_threshold
from hybrid.metrics import domain_metrics, summarize, threshold_from_probs
from hybrid.model import HybridNet
from hybrid.reporting import format_table
from hybrid.rundir import (atomic_save, check_out_dir, clear_run, initialise_from, refuse_study_dir, replace_result,
                           write_json)
from hybrid.runtime import torch_settings
from hybrid.shifts import make_target_centers

log = logging.getLogger("hybrid.train")


def _subsample(bundle: DatasetBundle, n: int | None, seed: int) -> None:
    if n and n < len(bundle.train):
        keep = np.sort(np.random.default_rng(seed).choice(len(bundle.train), n, replace=False))
        centers = bundle.train.centers[keep] if bundle.train.centers is not None else None
        bundle.train = Split(bundle.train.images[keep], bundle.train.labels[keep], centers)


def prepare_data(cfg: TrainConfig, root) -> tuple[DatasetBundle, TrainingData]:
    """The dataset, its training tensors, and source validation under the source centers."""
    bundle = load_bundle(cfg, root)
    _subsample(bundle, cfg.max_train_samples, cfg.seed)
    check_splits(bundle)
    x_train, y_train = split_to_tensors(bundle.train, cfg.input_size, bundle.n_channels)
    x_val, y_val = split_to_tensors(bundle.val, cfg.input_size, bundle.n_channels)
    sampler = DomainSampler(cfg, bundle.train.centers, bundle.n_channels)
    # model selection data: source validation images under the source centers, noise fixed once
    gen_val = torch.Generator().manual_seed(cfg.seed + 1)
    if cfg.shift:  # real-center ids index the training set; unshifted validation needs no ids
        x_val = sampler.shift(x_val, sampler.draw(torch.arange(len(y_val)), gen_val), gen_val)
    return bundle, TrainingData(x_train, y_train, x_val, y_val, bundle.positive_class, sampler)


def source_validation_threshold(model, cfg: TrainConfig, data_root: str | None, tta: str, positive_class: int) -> float:
    """The decision threshold of `model` on the run's source validation (rebuilt as training builds it) under
    `tta`: for a network whose head was refitted, or for a TTA other than the one training chose it under."""
    _, data = prepare_data(cfg, resolve_data_root(data_root or cfg.data_root))
    return source_threshold(model, data.x_val, data.y_val, tta=tta, positive_class=positive_class,
                            batch_size=cfg.eval_batch_size)


def check_splits(bundle: DatasetBundle) -> None:
    """Refuse splits a run cannot learn or select from, before any work; warn about a one-class training split."""
    if len(bundle.train) < 2:
        raise DataError(f"{bundle.name}: the training split has {len(bundle.train)} image(s); training needs at "
                        "least 2 (BatchNorm); add data or lower the validation/test fractions")
    val_classes = np.unique(bundle.val.labels)
    if not len(val_classes):
        raise DataError(f"{bundle.name}: the validation split holds no image (of the chosen classes); model "
                        "selection and the decision threshold need images of at least two classes there: add data")
    if len(val_classes) < 2:
        raise DataError(f"{bundle.name}: the validation split ({len(bundle.val)} images) holds only class "
                        f"{bundle.class_names[int(val_classes[0])]!r}; model selection and the decision threshold "
                        "need at least two classes there: add data")
    train_classes = np.unique(bundle.train.labels)
    if len(train_classes) < 2:
        log.warning("%s: the training split holds only class %r; the model cannot learn to tell classes apart",
                    bundle.name, bundle.class_names[int(train_classes[0])])


def resolve_algorithm(cfg: TrainConfig, n_domains: int) -> str:
    """The configured algorithm, or ERM where it needs domains and training has only one."""
    if ALGORITHMS[cfg.algorithm].needs_domains and n_domains < 2:
        log.warning("%s needs at least two training domains (virtual centers or real centers); training with "
                    "erm instead", cfg.algorithm)
        return "erm"
    return cfg.algorithm


def evaluate_best(network, cfg: TrainConfig, bundle: DatasetBundle, data: TrainingData, best_path: Path,
                  progress: bool) -> dict:
    """The selected epoch on every unseen domain, with the run's TTA and without; the threshold
    comes from source validation and is stored in best.pt."""
    ckpt = load_checkpoint(best_path, "checkpoint", ("model", "epoch"))
    network.load_network_state(ckpt["model"])  # a best.pt of an older resumed run holds discriminator keys
    network.eval()
    val_probs = predict_probs(network, data.x_val, cfg.tta, cfg.eval_batch_size)
    threshold = threshold_from_probs(data.y_val.numpy(), val_probs, bundle.positive_class)
    atomic_save(ckpt | {"threshold": threshold}, best_path)
    domains = first_samples(build_eval_domains(cfg, bundle, bundle.n_channels), cfg.eval_max_samples)
    n_images = sum(len(y) for _, y in domains.values())
    log.info("final evaluation: %d domains, %d images, with TTA %s%s and %d bootstrap resamples (fewer with "
             "--eval-max-samples / --n-bootstrap)", len(domains), n_images, cfg.tta,
             " and without" if cfg.tta != "none" else "", cfg.n_bootstrap)
    kwargs = dict(threshold=threshold, positive_class=bundle.positive_class, batch_size=cfg.eval_batch_size,
                  n_bootstrap=cfg.n_bootstrap, seed=cfg.seed, progress=progress)
    per_domain, raw = evaluate_domains(network, domains, tta=cfg.tta, **kwargs)
    unseen = [k for k in per_domain if is_unseen(k)]
    no_tta = None
    if cfg.tta != "none":
        no_tta_threshold = source_threshold(network, data.x_val, data.y_val, tta="none",
                                            positive_class=bundle.positive_class, batch_size=cfg.eval_batch_size)
        no_tta, _ = evaluate_domains(network, domains, tta="none",
                                     **(kwargs | {"threshold": no_tta_threshold}))
    source_val = domain_metrics(data.y_val.numpy(), val_probs, threshold=threshold,
                                positive_class=bundle.positive_class, n_bootstrap=0)
    return {"threshold": threshold, "positive_class": bundle.positive_class, "tta": cfg.tta,
            "domains": per_domain, "unseen": unseen, "summary": summarize(per_domain, unseen),
            "domains_no_tta": no_tta, "summary_no_tta": summarize(no_tta, unseen) if no_tta else None,
            "source_val": source_val, "raw": raw, "best_epoch": ckpt["epoch"]}


def train(cfg: TrainConfig, out_dir: Path, *, progress: bool = True, resume: bool = False,
          command: str | None = None, on_epoch_end=None, overwrite: bool = False) -> dict | None:
    """Train, select the best epoch on source validation, evaluate on unseen centers; returns the report
    (None on the ranks other than 0 of a torchrun launch, which only train).

    A run directory that holds a run is refused unless `resume` (continue it) or `overwrite`
    (its earlier outputs are deleted once the new run's data has loaded)."""
    with torch_settings(cfg.threads, cfg.seed):
        return _train(cfg, Path(out_dir), progress, resume, command, on_epoch_end, overwrite)


def _train(cfg: TrainConfig, out_dir: Path, progress: bool, resume: bool, command, on_epoch_end,
           overwrite: bool = False) -> dict:
    from backends import EXACT_BY_DEFAULT, get_backend

    started = time.perf_counter()
    check_out_dir(out_dir, resume=resume, overwrite=overwrite)
    check_algorithm(cfg)
    for flag, why in unused_options(cfg).items():
        log.warning("%s is ignored: %s", flag, why)
    if refits_head(cfg) and not cfg.init_from:
        raise ValueError("--head-grad-scale 0 --aux-weight 0 with ERM trains nothing but the head, on a fixed encoder: "
                         "name the trained network to refit with --init-from RUN (e.g. runs/study/variant/seed{seed})")
    device = resolve_device(cfg.device)
    # refused before it is built: ibm_runtime would first look for an account and advise options train lacks
    backend = get_backend(cfg.backend) if cfg.backend in EXACT_BY_DEFAULT else None
    if backend is None or not backend.exact:
        raise ValueError(f"training needs an exact backend ({', '.join(EXACT_BY_DEFAULT)}); {cfg.backend!r} samples "
                         "or is noisy (train with aer, then evaluate with `python -m hybrid.evaluate --backend ...`)")
    cfg = with_device_attenuation(cfg)  # --q-noise-device: fitted once, saved in config.json below
    bundle, data = prepare_data(cfg, resolve_data_root(cfg.data_root))  # bad data fails before any file is written
    ddp = Distributed.from_env(device)  # torchrun: one process per rank, rank 0 writes
    device = ddp.device(device)
    progress = progress and ddp.is_main
    # built before the run directory is: a missing --weights-path or --init-from run leaves no half-made run
    network = HybridNet(cfg.model_config(), bundle.n_channels, bundle.n_classes, layer_kwargs=backend.layer_kwargs())
    if cfg.init_from:
        source = initialise_from(network, cfg.init_from, cfg.seed, bundle.n_channels, bundle.n_classes)
        log.info("network initialised from %s", source)
    out_dir.mkdir(parents=True, exist_ok=True)
    if overwrite and not resume and ddp.is_main:
        removed = clear_run(out_dir)
        if removed:
            log.warning("--overwrite: removed the earlier run's %s from %s", ", ".join(removed), out_dir)
    if ddp.is_main:
        write_json(cfg.to_dict(), out_dir / "config.json")
    algorithm_name = resolve_algorithm(cfg, data.sampler.n_domains)
    n_domains = data.sampler.n_domains if ALGORITHMS[algorithm_name].needs_domains else 1
    target_centers = make_target_centers(rgb=uses_colour_shifts(cfg, bundle.n_channels))
    if ddp.is_main:
        write_json({"source": [c.to_dict() for c in data.sampler.centers],
                    "target": [c.to_dict() for c in target_centers], "data": bundle.describe()}, out_dir / "centers.json")

    network.to(device)
    attach_noise_channel(network, cfg)  # --q-noise-channel density: training runs the device's noise model
    steps = cfg.epochs * math.ceil(len(data.y_train) / cfg.batch_size)
    # ERM in place of a method that lacked domains: that method's hyperparameters are not ERM's
    hparams = cfg if algorithm_name == cfg.algorithm else replace(cfg, algorithm_hparams="")
    algorithm = make_algorithm(algorithm_name, network, hparams, n_domains=n_domains, total_steps=steps)
    meta = {"in_channels": bundle.n_channels, "n_classes": bundle.n_classes, "n_domains": n_domains,
            "positive_class": bundle.positive_class, "class_names": bundle.class_names, "threshold": None,
            "class_ids": bundle.class_ids,
            "algorithm": algorithm_name}
    fit(algorithm, data, cfg, out_dir, meta=meta, progress=progress, resume=resume, on_epoch_end=on_epoch_end, ddp=ddp)
    ddp.close()  # evaluation is rank 0's alone
    if not ddp.is_main:
        return None
    train_seconds = time.perf_counter() - started
    evaluation = evaluate_best(network, cfg, bundle, data, out_dir / "best.pt", progress)
    raw = evaluation.pop("raw")
    report = {"run": {"name": out_dir.name, "dataset": cfg.dataset, "backend": backend.description,
                      "algorithm": algorithm_name, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command,
                      "seconds": time.perf_counter() - started, "train_seconds": train_seconds,
                      "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "best_epoch": evaluation.pop("best_epoch"), "threads": torch.get_num_threads(),
                      "device": str(device), "processes": ddp.world_size, "host": socket.gethostname(),
                      # which input normalisation the network used (pretrained RGB: per channel since 2026-12-07)
                      "input_statistics": {"mean": network.pixel_mean.flatten().tolist(),
                                           "std": network.pixel_std.flatten().tolist()}},
              "config": cfg.to_dict(), "parameters": network.parameter_counts()} | evaluation | {"data": bundle.describe()}
    report["figures"] = (_figures(out_dir, report, raw, data.x_train, data.sampler.centers, target_centers)
                         if cfg.figures else {})
    _write_report(out_dir, report)
    return report


def _write_report(out_dir: Path, report: dict) -> None:
    from hybrid.reporting import write_markdown_report

    # report.json marks the run finished (a study skips it from then on), so it is written last: a kill
    # before it leaves a run that resumes, and replace_result keeps its training logged once.
    replace_result(out_dir, {"kind": "train"} | {k: report[k] for k in (
        "run", "config", "threshold", "tta", "domains", "unseen", "summary", "domains_no_tta", "summary_no_tta")})
    write_markdown_report(report, out_dir / "report.md")
    write_json(report, out_dir / "report.json")


def _figures(out_dir: Path, report: dict, raw: dict, x_train, source_centers, target_centers) -> dict:
    from hybrid.reporting import plot_domain_auc, plot_roc_curves, plot_training_curves, save_center_grid

    figures = {}
    try:
        plot_roc_curves(raw, out_dir / "roc_curves.png", positive_class=report["positive_class"])
        figures["roc"] = "roc_curves.png"
        plot_domain_auc(report["domains"], out_dir / "domain_auc.png")
        figures["domain_auc"] = "domain_auc.png"
        history = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line]
        plot_training_curves(history, out_dir / "training_curves.png")
        figures["training"] = "training_curves.png"
        if len(x_train):
            save_center_grid(x_train[0], list(source_centers) + list(target_centers), out_dir / "centers.png")
            figures["centers"] = "centers.png"
    except Exception as exc:  # a figure must never cost the run its results
        log.warning("could not draw a figure: %s", exc)
    return figures


def summary_line(report: dict, out_dir: Path) -> str:
    s = report["summary"]["auc"]
    return (f"unseen-center AUC: mean {s['mean']:.4f}, worst {s['worst']:.4f} ({s['worst_domain']}), "
            f"spread (std) {s['std']:.4f}; {report['run']['seconds'] / 60:.1f} min; report: {out_dir / 'report.md'}")


RESUME_MAY_DIFFER = ENVIRONMENT_FIELDS


def check_resume(cfg: TrainConfig, out_dir: Path) -> None:
    """Refuse a --resume that would silently start afresh or turn the run into another one."""
    refuse_study_dir(out_dir)
    last = out_dir / "last.pt"
    if not last.is_file():
        raise ValueError(f"--resume: {last} does not exist, so there is nothing to resume; "
                         "train without --resume, or into another --out")
    saved_path = out_dir / "config.json"
    if not saved_path.is_file():
        return
    try:
        saved = TrainConfig.load(saved_path)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"--resume: {saved_path} could not be read ({exc}); restore it, or train into another "
                         "--out") from None
    differ = [f"{name} ({old!r} saved, {new!r} given)"
              for name, old, new in saved.differences(cfg, ignore=RESUME_MAY_DIFFER)]
    if differ:
        raise ValueError(f"--resume with options that differ from {saved_path}: {'; '.join(differ)}; resume with "
                         "the saved options, or train into another --out")


def resumed_config(cfg: TrainConfig, out_dir: Path, given: set[str]) -> TrainConfig:
    """With --resume, the options not given on the command line are the run's own (config.json), so
    `--resume --out RUN` alone continues it; where the run runs (threads, data root, device) keeps today's
    defaults. A config.json that cannot be read is left for `check_resume` to refuse."""
    try:
        saved = TrainConfig.load(out_dir / "config.json")
    except (OSError, ValueError, TypeError):
        return cfg
    if given & {"dann", "algorithm"}:
        given = given | {"algorithm"}
    keep = {k: v for k, v in cfg.to_dict().items() if k in given or k in RESUME_MAY_DIFFER}
    return TrainConfig.from_dict(saved.to_dict() | keep)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from hybrid.cli import add_config_arguments, command_line, config_from_args, given_config_fields, run_cli

    parser = argparse.ArgumentParser(prog="python -m hybrid.train", description=__doc__.split("\n")[0])
    add_config_arguments(parser)
    parser.add_argument("--out", default=None, help="run directory (default: runs/<dataset>-<time>)")
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run already in --out (its outputs are deleted once the new data has loaded)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    chosen: dict[str, Path] = {}  # the run directory, once known (a default one is named by the time it starts)

    def body() -> int:
        cfg = config_from_args(args)
        if args.resume and not args.out:  # the default run directory is named by the time, so it never exists
            raise ValueError("--resume continues a run: name its directory with --out RUN_DIR")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not args.out:
            raise ValueError("under torchrun, give --out: every process must write into the same run directory")
        out = chosen["out"] = Path(args.out or f"runs/{Path(cfg.dataset).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
        if args.resume:
            cfg = resumed_config(cfg, out, given_config_fields(parser, argv))
            check_resume(cfg, out)  # before anything is written into the run directory
        report = train(cfg, out, progress=not args.quiet, resume=args.resume, overwrite=args.overwrite,
                       command=command_line("python -m hybrid.train", argv))
        if report is None:  # a torchrun rank other than 0: rank 0 prints the report
            return 0
        print(format_table(report["domains"], report["summary"]))
        print("\n" + summary_line(report, out))
        return 0

    def how_to_continue() -> str:
        out = chosen.get("out")
        if out is None or not (out / "last.pt").is_file():
            return "no epoch had finished, so nothing is saved; run the command again"
        again = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--overwrite"]
        again += [] if args.out else ["--out", str(out)]  # the default directory is named by the time: keep it
        return (f"the finished epochs are saved in {out / 'last.pt'}; continue with: "
                f"{command_line('python -m hybrid.train', again)}" + ("" if args.resume else " --resume"))

    return run_cli(body, extra_errors=(RuntimeError,), on_interrupt=how_to_continue)


if __name__ == "__main__":
    sys.exit(main())
