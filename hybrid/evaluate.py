"""Evaluate a trained run on unseen centers: `python -m hybrid.evaluate --run RUN_DIR`.

    python -m hybrid.evaluate --run runs/default                       # its own dataset, virtual target centers
    python -m hybrid.evaluate --run runs/default --data other.npz      # test_* arrays, or images/labels
    python -m hybrid.evaluate --run runs/default --data hospitals/     # root/<center>/<class>/*.png
    python -m hybrid.evaluate --run runs/default --tta bn --backend aer --shots 1000
    python -m hybrid.evaluate --run runs/default --backend aer_noisy --noise-model fake_brisbane
    python -m hybrid.evaluate --run runs/default --backend ibm_runtime --ibm-backend ibm_brisbane \\
        --max-samples 200 [--resume]

Writes `eval_<name>.json` and `eval_<name>.md` into the run directory and appends a JSON line
to its `results.jsonl`. On a sampling, noisy or remote backend only the quantum layer leaves
the machine: one job per batch; each finished batch is saved to `partial_<name>.jsonl`, so
a failed job loses nothing and `--resume` continues. The report's `quantum_execution` block
counts jobs, circuits, shots, wall time and QPU seconds.
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
from hybrid.shifts import CENTER_SETS, VirtualCenter, apply_center
from hybrid.tta import TTA_METHODS, make_tta

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


def predict_probs(model: torch.nn.Module, x: torch.Tensor, tta: str = "none", batch_size: int = 256,
                  progress: bool = False, desc: str = "", partial=None,
                  statistics_from: torch.Tensor | None = None) -> np.ndarray:
    """Class probabilities, adapting per batch with `tta` and restoring the model afterwards.

    With `partial` (a `backends.partial.PartialResults`), batches saved earlier under the key
    `desc` are reused and each new batch is saved as soon as it is done. A domain-level method
    (adabn) takes its statistics from `statistics_from` if given, else from `x` itself.
    """
    method = make_tta(tta, model)
    method.prepare(x if statistics_from is None else statistics_from, getattr(model, "batchnorm_forward", None))
    out = []
    batches = range(0, len(x), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=desc, leave=False, unit="batch")
    try:
        for start in batches:
            saved = partial.get(desc, start) if partial is not None else None
            if saved is not None:
                out.append(saved)
                continue
            logits = method.predict(x[start:start + batch_size])
            out.append(torch.softmax(logits.float(), dim=1).numpy())
            if partial is not None:
                partial.add(desc, start, out[-1])
    finally:
        method.reset()
    return np.concatenate(out) if out else np.zeros((0, 0))


def evaluate_domains(model, domains: dict[str, tuple[torch.Tensor, torch.Tensor]], *, threshold: float,
                     positive_class: int, tta: str, batch_size: int = 256, n_bootstrap: int = 1000,
                     seed: int = 0, progress: bool = True, partial=None) -> tuple[dict, dict]:
    """Per-domain metrics and the raw (labels, probs) for ROC curves."""
    per_domain, raw = {}, {}
    for name, (x, y) in domains.items():
        probs = predict_probs(model, x, tta, batch_size, progress, desc=name, partial=partial)
        labels = y.numpy()
        per_domain[name] = domain_metrics(labels, probs, threshold=threshold, positive_class=positive_class,
                                          n_bootstrap=n_bootstrap, seed=seed)
        raw[name] = (labels, probs)
    return per_domain, raw


def source_threshold(model, x_val, y_val, *, tta: str, positive_class: int, batch_size: int) -> float:
    """Decision threshold from SOURCE validation data only (never from a target domain)."""
    return threshold_from_probs(y_val, predict_probs(model, x_val, tta, batch_size), positive_class)


def threshold_from_probs(y_val, probs: np.ndarray, positive_class: int) -> float:
    """Youden threshold on the positive-class probability; 0.5 (unused) for multi-class argmax."""
    if probs.shape[1] != 2:
        return 0.5
    return choose_threshold(np.asarray(y_val), probs[:, positive_class], positive_class)


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


BACKEND_FLAGS = ("shots", "precision", "seed", "noise_model", "depolarizing", "readout_error", "ibm_backend",
                 "resilience_level", "dd", "twirling", "batch_mode")


class Interrupted(RuntimeError):
    """A backend job failed or timed out; finished batches are saved for --resume."""


def main(argv: list[str] | None = None) -> int:
    from backends import BACKENDS

    parser = argparse.ArgumentParser(prog="python -m hybrid.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="run directory written by hybrid.train")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data", help=".npz (MedMNIST layout, images/labels, or multi-center) or a center folder")
    source.add_argument("--dataset", help="MedMNIST name: its test split under the virtual target centers")
    parser.add_argument("--data-root", help="folder with MedMNIST files (default: $HYBRID_DATA_ROOT)")
    parser.add_argument("--centers", choices=tuple(CENTER_SETS), default="target",
                        help="virtual centers for --dataset or the run's own data: the reported unseen target "
                             "centers, or the design-validation centers for comparing method variants")
    parser.add_argument("--tta", choices=tuple(TTA_METHODS), help="default: the run's setting")
    parser.add_argument("--backend", choices=sorted(BACKENDS), help="default: the run's backend")
    parser.add_argument("--max-samples", type=int, help="evaluate at most this many samples per domain")
    parser.add_argument("--batch-size", type=int, help="samples per batch, i.e. per job (default: the run's)")
    parser.add_argument("--name", help="name of the evaluation files (default: from the data and backend)")
    parser.add_argument("--resume", action="store_true", help="reuse the batches saved by an interrupted evaluation")
    q = parser.add_argument_group("backend options (those that apply to the chosen --backend)")
    q.add_argument("--shots", type=int, help="shots per circuit (aer, aer_noisy, ibm_runtime)")
    q.add_argument("--precision", type=float, help="target precision instead of shots")
    q.add_argument("--seed", type=int, help="simulator and transpiler seed")
    q.add_argument("--noise-model", help="aer_noisy: fake device, e.g. fake_brisbane, fake_manila")
    q.add_argument("--depolarizing", help="aer_noisy: depolarizing rate P, or P1,P2 for 1- and 2-qubit gates")
    q.add_argument("--readout-error", type=float, help="aer_noisy: symmetric readout error probability")
    q.add_argument("--ibm-backend", help="ibm_runtime: device (default: least busy); fake_* runs locally")
    q.add_argument("--resilience-level", type=int, choices=(0, 1, 2), help="ibm_runtime: error mitigation level")
    q.add_argument("--dd", action=argparse.BooleanOptionalAction, default=None,
                   help="ibm_runtime: dynamical decoupling")
    q.add_argument("--twirling", action=argparse.BooleanOptionalAction, default=None,
                   help="ibm_runtime: gate and measurement twirling")
    mode = q.add_mutually_exclusive_group()
    mode.add_argument("--batch-mode", dest="batch_mode", action="store_const", const=True,
                      help="ibm_runtime: submit the jobs in a Runtime batch (default)")
    mode.add_argument("--job-mode", dest="batch_mode", action="store_const", const=False,
                      help="ibm_runtime: submit plain jobs")
    q.add_argument("--job-timeout", type=float, help="seconds to wait for one job before stopping")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("hybrid").setLevel(logging.INFO)
    try:
        return _run(args)
    except Interrupted as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except (DataError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args) -> int:
    run_dir = Path(args.run)
    options = {k: getattr(args, k) for k in BACKEND_FLAGS if getattr(args, k) is not None}
    cfg, model, ckpt, backend = load_run(run_dir, args.backend, job_timeout=args.job_timeout, **options)
    try:
        return _evaluate(args, run_dir, cfg, model, ckpt, backend)
    finally:
        backend.close()


def _evaluate(args, run_dir: Path, cfg: TrainConfig, model, ckpt: dict, backend) -> int:
    from backends import JobError
    from backends.partial import PartialResults
    from hybrid.data import resolve_data_root
    from hybrid.reporting import format_table
    from hybrid.train import build_eval_domains, load_bundle

    tta = args.tta or cfg.tta
    if tta == "tent" and not backend.exact:
        raise ValueError(f"TTA 'tent' needs gradients through the quantum layer, which {backend.name} does not "
                         "give at inference; use --tta adabn, bn or none")
    batch_size = args.batch_size or cfg.eval_batch_size
    root = resolve_data_root(args.data_root or cfg.data_root)
    started = time.perf_counter()
    if args.data and args.centers != "target":
        raise ValueError("--centers picks virtual centers for --dataset or the run's own data; --data files are "
                         "evaluated as they are")
    if args.data:
        domains = _domains_from_data(args.data, cfg, ckpt, root)
        name = Path(args.data).stem
    else:
        dataset = args.dataset or cfg.dataset
        bundle = load_bundle(replace(cfg, dataset=dataset), root)
        domains = build_eval_domains(cfg, bundle, ckpt["in_channels"], args.centers)
        name = Path(dataset).stem + ("" if args.centers == "target" else f"_{args.centers}")
    if backend.label != cfg.backend or not backend.exact:
        name = f"{name}_{backend.label}"  # results on another backend do not overwrite the run's own
    name = args.name or name
    if args.max_samples:
        domains = {k: (x[: args.max_samples], y[: args.max_samples]) for k, (x, y) in domains.items()}
    partial = None
    if not backend.exact:
        settings = {"backend": backend.label, "options": backend.options, "tta": tta, "batch_size": batch_size,
                    "data": args.data or args.dataset or cfg.dataset, "max_samples": args.max_samples,
                    "checkpoint_epoch": ckpt.get("epoch"), "domains": {k: len(y) for k, (_, y) in domains.items()}}
        partial = PartialResults(run_dir / f"partial_{name}.jsonl", settings, backend.stats, resume=args.resume)
        if partial.records:
            log.info("resuming: %d samples already evaluated in %s", partial.n_samples, partial.path)
    try:
        per_domain, _ = evaluate_domains(
            model, domains, threshold=ckpt["threshold"], positive_class=ckpt["positive_class"], tta=tta,
            batch_size=batch_size, n_bootstrap=cfg.n_bootstrap, seed=cfg.seed, partial=partial,
        )
    except JobError as exc:
        raise Interrupted(f"{exc}; {partial.n_samples} samples are saved in {partial.path}; rerun the same "
                          "command with --resume to continue") from None
    unseen = [k for k in per_domain if k != "clean"]
    n_samples = sum(len(y) for _, y in domains.values())
    if partial is None:
        execution = {"engine": "statevector (torch, exact)", "jobs": 0, "circuits": 0, "shots": 0,
                     "samples": n_samples, "wall_seconds": None, "qpu_seconds": None}
    else:
        execution = {"engine": "estimator (one job per batch)"} | partial.totals() | {
            "batch_size": batch_size, "resumed_batches": partial.reused}
    result = {
        "kind": "evaluation", "name": name, "run": str(run_dir), "data": args.data or args.dataset or cfg.dataset,
        "backend": backend.name, "backend_description": backend.description, "backend_options": backend.options,
        "tta": tta, "threshold": ckpt["threshold"], "positive_class": ckpt["positive_class"],
        "domains": per_domain, "unseen": unseen, "summary": summarize(per_domain, unseen),
        "quantum_execution": execution, "seconds": time.perf_counter() - started, "config": cfg.to_dict(),
    }
    (run_dir / f"eval_{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    table = format_table(per_domain, result["summary"])
    (run_dir / f"eval_{name}.md").write_text(
        f"# Evaluation of {run_dir.name} on {result['data']}\n\nbackend: {backend.description}; "
        f"TTA: {tta}; threshold (source validation): {ckpt['threshold']:.4f}\n\n{table}\n"
    )
    with open(run_dir / "results.jsonl", "a") as fh:
        fh.write(json.dumps(result) + "\n")
    if partial is not None:
        partial.remove()
    print(table)
    if partial is not None:
        e = execution
        qpu = f"{e['qpu_seconds']:.1f} s" if e["qpu_seconds"] is not None else "not reported"
        print(f"\n{backend.description}: {e['jobs']} jobs, {e['circuits']} circuits, {e['shots']} shots, "
              f"{e['wall_seconds']:.1f} s waiting for jobs, QPU time {qpu}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
