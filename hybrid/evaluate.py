"""Evaluate a trained run on unseen centers: `python -m hybrid.evaluate --run RUN_DIR`.

    python -m hybrid.evaluate --run runs/default                       # its own dataset, virtual target centers
    python -m hybrid.evaluate --run runs/default --data other.npz      # test_* arrays, or images/labels
    python -m hybrid.evaluate --run runs/default --data hospitals/     # root/<center>/<class>/*.png
    python -m hybrid.evaluate --run runs/default --tta tent --backend aer --shots 1000

Writes `eval_<name>.json` and `eval_<name>.md` into the run directory and appends a JSON line
to its `results.jsonl`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from hybrid.config import TrainConfig
from hybrid.data import DataError, Split, images_to_tensor
from hybrid.metrics import choose_threshold, domain_metrics, summarize_domains
from hybrid.shifts import VirtualCenter, apply_center
from hybrid.tta import make_tta

log = logging.getLogger("hybrid.evaluate")

CHECKPOINT = "best.pt"


# --------------------------------------------------------------------------- core
def split_to_tensors(split: Split, input_size: int, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    return images_to_tensor(split.images, size=input_size, channels=channels), torch.as_tensor(split.labels)


def make_target_domains(x: torch.Tensor, y: torch.Tensor, centers: Iterable[VirtualCenter],
                        seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The clean test split plus one shifted copy per unseen virtual center (fixed noise)."""
    domains = {"clean": (x, y)}
    for i, center in enumerate(centers):
        generator = torch.Generator().manual_seed(seed * 1000 + i)
        domains[center.name] = (apply_center(x, center, generator), y)
    return domains


@torch.no_grad()
def _plain_predict(model, x):
    return model(x)


def predict_probs(model: torch.nn.Module, x: torch.Tensor, tta: str = "none", batch_size: int = 256,
                  progress: bool = False, desc: str = "") -> np.ndarray:
    """Class probabilities, adapting per batch with `tta` and restoring the model afterwards."""
    method = make_tta(tta, model)
    out = []
    batches = range(0, len(x), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=desc, leave=False, unit="batch")
    try:
        for start in batches:
            logits = method.predict(x[start:start + batch_size])
            out.append(torch.softmax(logits.float(), dim=1).numpy())
    finally:
        method.reset()
    return np.concatenate(out) if out else np.zeros((0, 0))


def evaluate_domains(model, domains: dict[str, tuple[torch.Tensor, torch.Tensor]], *, threshold: float,
                     positive_class: int, tta: str, batch_size: int = 256, n_bootstrap: int = 1000,
                     seed: int = 0, progress: bool = True) -> tuple[dict, dict]:
    """Per-domain metrics and the raw (labels, probs) for ROC curves."""
    per_domain, raw = {}, {}
    for name, (x, y) in domains.items():
        probs = predict_probs(model, x, tta, batch_size, progress, desc=name)
        labels = y.numpy()
        per_domain[name] = domain_metrics(labels, probs, threshold=threshold, positive_class=positive_class,
                                          n_bootstrap=n_bootstrap, seed=seed)
        raw[name] = (labels, probs)
    return per_domain, raw


def source_threshold(model, x_val, y_val, *, tta: str, positive_class: int, batch_size: int) -> float:
    """Decision threshold from SOURCE validation data only (never from a target domain)."""
    probs = predict_probs(model, x_val, tta, batch_size)
    if probs.shape[1] != 2:
        return 0.5
    return choose_threshold(y_val.numpy(), probs[:, positive_class], positive_class)


def summarize(per_domain: dict, unseen: list[str]) -> dict:
    return summarize_domains({k: v for k, v in per_domain.items() if k in unseen})


def check_labels(labels: np.ndarray, n_classes: int, where: str) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(
            f"{where} has labels {sorted(set(labels.tolist()))[:10]} but the model was trained on "
            f"{n_classes} classes (0..{n_classes - 1}); evaluate it on data with the same classes"
        )


# --------------------------------------------------------------------------- CLI
def load_run(run_dir: Path, backend_name: str | None = None, **backend_options):
    """Rebuild a trained model from `config.json` and its checkpoint (weights_only)."""
    from backends import get_backend
    from hybrid.model import HybridNet

    run_dir = Path(run_dir)
    cfg_path, ckpt_path = run_dir / "config.json", run_dir / CHECKPOINT
    for path in (cfg_path, ckpt_path):
        if not path.is_file():
            raise DataError(f"{path} is missing; is {run_dir} a run directory written by hybrid.train?")
    cfg = TrainConfig.load(cfg_path)
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"checkpoint {ckpt_path} could not be read ({exc}); retrain or restore it") from exc
    backend = get_backend(backend_name or cfg.backend, **backend_options)
    # the checkpoint carries its own architecture facts; weights need not be downloaded again
    cfg = replace(cfg, pretrained=False, weights_path=None)
    model = HybridNet(cfg, ckpt["in_channels"], ckpt["n_classes"], ckpt["n_domains"],
                      layer_kwargs=backend.layer_kwargs())
    model.load_state_dict(ckpt["model"])
    model.eval()
    return cfg, model, ckpt, backend


def _domains_from_data(spec: str, cfg: TrainConfig, ckpt: dict, root) -> dict[str, tuple]:
    from hybrid.data import load_center_folder, load_dataset, load_eval_npz

    path = Path(spec)
    channels = ckpt["in_channels"]
    if path.is_dir():
        centers = load_center_folder(path)
        out = {}
        for name, split in centers.items():
            check_labels(split.labels, ckpt["n_classes"], f"center folder {name!r}")
            out[name] = split_to_tensors(split, cfg.input_size, channels)
        return out
    if path.suffix == ".npz" and path.is_file():
        with np.load(path) as npz:
            multicenter = bool({"center_ids", "source_ids"} & set(npz.files))
        if not multicenter:
            split = load_eval_npz(path)
            check_labels(split.labels, ckpt["n_classes"], str(spec))
            return {path.stem: split_to_tensors(split, cfg.input_size, channels)}
    bundle = load_dataset(spec, root=root, size=cfg.size, label_field=cfg.label_field,
                          center_field=cfg.center_field, test_centers=cfg.test_centers)
    if not bundle.test_domains:
        check_labels(bundle.test.labels, ckpt["n_classes"], str(spec))
        return {path.stem: split_to_tensors(bundle.test, cfg.input_size, channels)}
    domains = {}
    for name, split in bundle.test_domains.items():
        check_labels(split.labels, ckpt["n_classes"], f"{spec} domain {name!r}")
        domains[f"real:{name}"] = split_to_tensors(split, cfg.input_size, channels)
    return domains


def main(argv: list[str] | None = None) -> int:
    from backends import BACKENDS

    parser = argparse.ArgumentParser(prog="python -m hybrid.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="run directory written by hybrid.train")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data", help=".npz (MedMNIST layout, images/labels, or multi-center) or a center folder")
    source.add_argument("--dataset", help="MedMNIST name: its test split under the virtual target centers")
    parser.add_argument("--data-root", help="folder with MedMNIST files (default: $HYBRID_DATA_ROOT)")
    parser.add_argument("--tta", choices=("bn", "tent", "none"), help="default: the run's setting")
    parser.add_argument("--backend", choices=sorted(BACKENDS), help="default: the run's backend")
    parser.add_argument("--shots", type=int, help="shots for sampling backends")
    parser.add_argument("--max-samples", type=int, help="evaluate at most this many samples per domain")
    parser.add_argument("--name", help="name of the evaluation files (default: from the data)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("hybrid").setLevel(logging.INFO)
    try:
        return _run(args)
    except (DataError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from hybrid.data import load_dataset, resolve_data_root
    from hybrid.reporting import format_table
    from hybrid.train import build_eval_domains

    run_dir = Path(args.run)
    cfg, model, ckpt, backend = load_run(run_dir, args.backend, shots=args.shots)
    tta = args.tta or cfg.tta
    root = resolve_data_root(args.data_root or cfg.data_root)
    started = time.perf_counter()
    if args.data:
        domains = _domains_from_data(args.data, cfg, ckpt, root)
        name = args.name or Path(args.data).stem
    else:
        dataset = args.dataset or cfg.dataset
        bundle = load_dataset(dataset, root=root, size=cfg.size)
        domains = build_eval_domains(cfg, bundle, ckpt["in_channels"])
        name = args.name or Path(dataset).stem
    if args.max_samples:
        domains = {k: (x[: args.max_samples], y[: args.max_samples]) for k, (x, y) in domains.items()}
    per_domain, _ = evaluate_domains(
        model, domains, threshold=ckpt["threshold"], positive_class=ckpt["positive_class"], tta=tta,
        batch_size=cfg.eval_batch_size, n_bootstrap=cfg.n_bootstrap, seed=cfg.seed,
    )
    unseen = [k for k in per_domain if k != "clean"]
    result = {
        "kind": "evaluation", "name": name, "run": str(run_dir), "data": args.data or args.dataset or cfg.dataset,
        "backend": backend.name, "backend_description": backend.description, "tta": tta,
        "threshold": ckpt["threshold"], "positive_class": ckpt["positive_class"],
        "domains": per_domain, "unseen": unseen, "summary": summarize(per_domain, unseen),
        "seconds": time.perf_counter() - started, "config": cfg.to_dict(),
    }
    (run_dir / f"eval_{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    table = format_table(per_domain, result["summary"])
    (run_dir / f"eval_{name}.md").write_text(
        f"# Evaluation of {run_dir.name} on {result['data']}\n\nbackend: {backend.description}; "
        f"TTA: {tta}; threshold (source validation): {ckpt['threshold']:.4f}\n\n{table}\n"
    )
    with open(run_dir / "results.jsonl", "a") as fh:
        fh.write(json.dumps(result) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
