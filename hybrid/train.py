"""Train the hybrid model on one dataset and evaluate it on unseen centers.

    python -m hybrid.train --backend aer                       # PneumoniaMNIST, all components
    python -m hybrid.train --no-quantum --no-dann --out runs/erm
    python -m hybrid.train --dataset ham10000_sources_64.npz --label-field malignant \\
        --center-field source_ids --train-centers vidir_molemax,vidir_modern,vienna_dias \\
        --test-centers rosendahl

The run directory gets config.json, centers.json, metrics.jsonl (one line per epoch),
last.pt / best.pt (written atomically), report.json, report.md, results.jsonl and figures.
Model selection and the decision threshold use source validation data only.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hybrid.config import TrainConfig, add_config_arguments, config_from_args
from hybrid.data import DataError, DatasetBundle, load_dataset, resolve_data_root
from hybrid.evaluate import (evaluate_domains, make_target_domains, predict_probs, source_threshold,
                             split_to_tensors, summarize, threshold_from_probs)
from hybrid.metrics import domain_metrics
from hybrid.model import HybridNet, dann_lambda, domain_loss
from hybrid.shifts import CENTER_SETS, VirtualCenter, apply_centers, make_source_centers, make_target_centers

log = logging.getLogger("hybrid.train")
CLEAN = VirtualCenter("clean", ())


def atomic_save(obj, path: Path) -> None:
    """Write to a temporary file and rename, so a crash never leaves a half-written checkpoint."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_bundle(cfg: TrainConfig, root) -> DatasetBundle:
    """The run's dataset; center options only reach files that can have centers."""
    multicenter = {}
    if cfg.dataset.endswith(".npz"):
        multicenter = dict(label_field=cfg.label_field, center_field=cfg.center_field,
                           train_centers=cfg.train_centers, test_centers=cfg.test_centers)
    return load_dataset(cfg.dataset, root=root, size=cfg.size, seed=cfg.seed, **multicenter)


def build_eval_domains(cfg: TrainConfig, bundle: DatasetBundle, channels: int, center_set: str = "target") -> dict:
    """Clean test split, every unseen virtual center of `center_set`, and the real held-out centers.

    `validation` swaps the reported target centers for the design-validation centers, which are
    for comparing method variants without looking at the reported ones.
    """
    x, y = split_to_tensors(bundle.test, cfg.input_size, channels)
    centers = CENTER_SETS[center_set]()
    domains = make_target_domains(x, y, centers, cfg.seed) if len(y) else {}
    for name, split in bundle.test_domains.items():
        domains[f"real:{name}"] = split_to_tensors(split, cfg.input_size, channels)
    return domains


def _translate(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Per-sample random translation by up to `max_shift` pixels (one grid_sample call)."""
    b, _, h, w = x.shape
    shift = (torch.rand(b, 2, generator=generator) * 2 - 1) * max_shift
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0, 2] = shift[:, 0] * 2 / w
    theta[:, 1, 2] = shift[:, 1] * 2 / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


class DomainSampler:
    """Assigns each training sample a center: a virtual source center, or its real center."""

    def __init__(self, cfg: TrainConfig, real_centers: np.ndarray | None):
        self.cfg = cfg
        self.centers = make_source_centers(cfg.n_source_centers, cfg.seed, cfg.source_sampling) if cfg.shift else []
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


@torch.no_grad()
def recalibrate_batchnorm(model, x: torch.Tensor, batch_size: int) -> None:
    """Precise BN: replace running statistics with exact averages over `x` under current weights.

    With few steps per epoch and a high learning rate, the exponential running averages lag
    far behind the weights, and eval-mode predictions collapse; one forward pass over a
    sample of (shifted) training images fixes that for the cost of a fraction of an epoch.
    """
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in layers]
    was_training = model.training
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    model.train()
    for start in range(0, len(x), batch_size):
        if len(x) - start > 1:
            model(x[start:start + batch_size])
    for m, momentum in zip(layers, momenta):
        m.momentum = momentum
    model.train(was_training)


def _val_auc(model, x, y, positive_class, batch_size) -> tuple[float, float]:
    probs = predict_probs(model, x, "none", batch_size)
    loss = float(F.nll_loss(torch.log(torch.as_tensor(probs).clamp_min(1e-12)), y))
    m = domain_metrics(y.numpy(), probs, positive_class=positive_class, n_bootstrap=0)
    return m["auc"], loss


def train(cfg: TrainConfig, out_dir: Path, *, progress: bool = True, resume: bool = False,
          command: str | None = None, on_epoch_end=None) -> dict:
    """Train, select the best epoch on source validation, evaluate on unseen centers."""
    from tqdm import tqdm

    from backends import get_backend
    from hybrid.reporting import format_table

    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    cfg.save(out_dir / "config.json")
    backend = get_backend(cfg.backend)
    if not backend.exact:
        raise ValueError(f"training needs an exact backend; {cfg.backend!r} samples or is noisy "
                         "(train with aer, then evaluate with `python -m hybrid.evaluate --backend ...`)")

    root = resolve_data_root(cfg.data_root)
    bundle = load_bundle(cfg, root)
    channels = bundle.n_channels
    if cfg.max_train_samples and cfg.max_train_samples < len(bundle.train):
        keep = np.random.default_rng(cfg.seed).choice(len(bundle.train), cfg.max_train_samples, replace=False)
        keep.sort()
        centers = bundle.train.centers[keep] if bundle.train.centers is not None else None
        bundle.train = type(bundle.train)(bundle.train.images[keep], bundle.train.labels[keep], centers)
    x_train, y_train = split_to_tensors(bundle.train, cfg.input_size, channels)
    x_val, y_val = split_to_tensors(bundle.val, cfg.input_size, channels)
    sampler = DomainSampler(cfg, bundle.train.centers)
    use_dann = cfg.dann and sampler.n_domains > 1
    if cfg.dann and not use_dann:
        log.warning("DANN needs at least two training domains (virtual centers or real centers); it is off")
    target_centers = make_target_centers()
    (out_dir / "centers.json").write_text(json.dumps({
        "source": [c.to_dict() for c in sampler.centers], "target": [c.to_dict() for c in target_centers],
        "data": bundle.describe()}, indent=2) + "\n")
    # model selection data: source validation images under the source centers, noise fixed once
    gen_val = torch.Generator().manual_seed(cfg.seed + 1)
    if cfg.shift:  # real-center ids index the training set; unshifted validation needs no ids
        x_val = sampler.shift(x_val, sampler.draw(torch.arange(len(y_val)), gen_val), gen_val)

    model = HybridNet(cfg, channels, bundle.n_classes, sampler.n_domains if use_dann else 1,
                      layer_kwargs=backend.layer_kwargs())
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(y_train) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total_steps,
                                                    pct_start=0.15)
    generator = torch.Generator().manual_seed(cfg.seed)
    start_epoch, best = 0, {"auc": -1.0, "loss": math.inf, "epoch": -1}
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    meta = {"in_channels": channels, "n_classes": bundle.n_classes,
            "n_domains": sampler.n_domains if use_dann else 1, "positive_class": bundle.positive_class,
            "class_names": bundle.class_names, "threshold": None}
    if resume and last_path.is_file():
        state = torch.load(last_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        start_epoch, best = state["epoch"] + 1, state["best"]
        log.info("resuming from epoch %d", start_epoch)
    metrics_path = out_dir / "metrics.jsonl"
    if start_epoch == 0:
        metrics_path.write_text("")

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        t0 = time.perf_counter()
        order = torch.randperm(len(y_train), generator=generator)
        sums = {"loss": 0.0, "cls": 0.0, "dom": 0.0, "dom_acc": 0.0, "n": 0}
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress,
                   leave=False, unit="batch")
        for step in bar:
            idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            if len(idx) < 2:
                continue  # BatchNorm needs two samples
            xb, yb = x_train[idx], y_train[idx]
            domains = sampler.draw(idx, generator)
            xb = sampler.shift(xb, domains, generator)
            if cfg.augment:
                xb = _translate(xb, 2, generator)
            lam = dann_lambda((epoch * steps_per_epoch + step) / total_steps, cfg.dann_max_lambda)
            logits, domain_logits = model.forward_train(xb, lam)
            cls_loss = F.cross_entropy(logits, yb)
            dom_loss = domain_loss(domain_logits, domains) if use_dann else torch.zeros(())
            loss = cls_loss + cfg.dann_weight * dom_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            n = len(idx)
            sums["n"] += n
            sums["loss"] += loss.item() * n
            sums["cls"] += cls_loss.item() * n
            sums["dom"] += dom_loss.item() * n
            if domain_logits is not None:
                sums["dom_acc"] += float((domain_logits.argmax(1) == domains).float().mean()) * n
            bar.set_postfix(loss=f"{sums['loss'] / sums['n']:.3f}", lam=f"{lam:.2f}")
        calib = order[: min(len(order), 8 * cfg.batch_size)]
        recalibrate_batchnorm(model, sampler.shift(x_train[calib], sampler.draw(calib, generator), generator),
                              cfg.batch_size)
        val_auc, val_loss = _val_auc(model, x_val, y_val, bundle.positive_class, cfg.eval_batch_size)
        record = {
            "epoch": epoch + 1, "train_loss": sums["loss"] / sums["n"], "cls_loss": sums["cls"] / sums["n"],
            "domain_loss": sums["dom"] / sums["n"] if use_dann else None,
            "domain_acc": sums["dom_acc"] / sums["n"] if use_dann else None,
            "lambda": lam if use_dann else None, "lr": scheduler.get_last_lr()[0],
            "val_auc": val_auc, "val_loss": val_loss, "seconds": time.perf_counter() - t0,
        }
        with open(metrics_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        improved = val_auc > best["auc"] + 1e-6 or (abs(val_auc - best["auc"]) <= 1e-6 and val_loss < best["loss"])
        if improved:
            best = {"auc": val_auc, "loss": val_loss, "epoch": epoch + 1}
            atomic_save(meta | {"model": model.state_dict(), "epoch": epoch + 1, "val_auc": val_auc}, best_path)
        atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                     "epoch": epoch, "best": best}, last_path)
        if on_epoch_end is not None:
            on_epoch_end(record)
        log.info("epoch %d/%d  loss %.4f  val AUC %.4f%s  (%.0f s)", epoch + 1, cfg.epochs, record["train_loss"],
                 val_auc, "  *best*" if improved else "", record["seconds"])
    train_seconds = time.perf_counter() - started

    # evaluation with the best epoch; threshold from source validation, then frozen
    ckpt = torch.load(best_path, map_location="cpu", weights_only=True)
    model.load_state_dict(ckpt["model"])
    model.eval()
    val_probs = predict_probs(model, x_val, cfg.tta, cfg.eval_batch_size)
    threshold = threshold_from_probs(y_val.numpy(), val_probs, bundle.positive_class)
    ckpt["threshold"] = threshold
    atomic_save(ckpt, best_path)
    domains = build_eval_domains(cfg, bundle, channels)
    kwargs = dict(threshold=threshold, positive_class=bundle.positive_class, batch_size=cfg.eval_batch_size,
                  n_bootstrap=cfg.n_bootstrap, seed=cfg.seed, progress=progress)
    per_domain, raw = evaluate_domains(model, domains, tta=cfg.tta, **kwargs)
    unseen = [k for k in per_domain if k != "clean"]
    no_tta = None
    if cfg.tta != "none":
        no_tta_threshold = source_threshold(model, x_val, y_val, tta="none", positive_class=bundle.positive_class,
                                            batch_size=cfg.eval_batch_size)
        no_tta, _ = evaluate_domains(model, domains, tta="none", **(kwargs | {"threshold": no_tta_threshold,
                                                                               "progress": False}))
    source_val = domain_metrics(y_val.numpy(), val_probs, threshold=threshold,
                                positive_class=bundle.positive_class, n_bootstrap=0)
    report = {
        "run": {"name": out_dir.name, "dataset": cfg.dataset, "backend": backend.description,
                "created": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command,
                "seconds": time.perf_counter() - started, "train_seconds": train_seconds,
                "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "best_epoch": best["epoch"], "threads": torch.get_num_threads()},
        "config": cfg.to_dict(), "threshold": threshold, "positive_class": bundle.positive_class,
        "tta": cfg.tta, "domains": per_domain, "unseen": unseen, "summary": summarize(per_domain, unseen),
        "domains_no_tta": no_tta, "summary_no_tta": summarize(no_tta, unseen) if no_tta else None,
        "source_val": source_val, "data": bundle.describe(),
    }
    report["figures"] = _figures(out_dir, report, raw, x_train, sampler.centers, target_centers)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    from hybrid.reporting import write_markdown_report

    write_markdown_report(report, out_dir / "report.md")
    with open(out_dir / "results.jsonl", "a") as fh:
        fh.write(json.dumps({"kind": "train"} | {k: report[k] for k in
                            ("run", "config", "threshold", "tta", "domains", "unseen", "summary",
                             "domains_no_tta", "summary_no_tta")}) + "\n")
    print(format_table(per_domain, report["summary"]))
    s = report["summary"]["auc"]
    print(f"\nunseen-center AUC: mean {s['mean']:.4f}, worst {s['worst']:.4f} ({s['worst_domain']}), "
          f"spread (std) {s['std']:.4f}; {report['run']['seconds'] / 60:.1f} min; report: {out_dir / 'report.md'}")
    return report


def _figures(out_dir: Path, report: dict, raw: dict, x_train, source_centers, target_centers) -> dict:
    from hybrid.reporting import plot_domain_auc, plot_roc_curves, plot_training_curves
    from hybrid.shifts import save_center_grid

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


def main(argv: list[str] | None = None) -> int:
    from backends import BACKENDS

    parser = argparse.ArgumentParser(prog="python -m hybrid.train", description=__doc__.split("\n")[0])
    add_config_arguments(parser)
    parser.add_argument("--backend", default="aer", choices=sorted(BACKENDS),
                        help="where the quantum layer runs; exact backends train with the torch engine")
    parser.add_argument("--out", default=None, help="run directory (default: runs/<dataset>-<time>)")
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("hybrid").setLevel(logging.INFO)
    cfg = config_from_args(args)
    out = Path(args.out or f"runs/{Path(cfg.dataset).stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    command = "python -m hybrid.train " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    try:
        train(cfg, out, progress=not args.quiet, resume=args.resume, command=command)
    except (DataError, FileNotFoundError, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
