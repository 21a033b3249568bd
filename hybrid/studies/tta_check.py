"""Is test-time adaptation helping, or is it batching? `python -m hybrid.tta_check --run RUN_DIR`.

    python -m hybrid.tta_check --run runs/default                          # clean split + every center
    python -m hybrid.tta_check --run runs/ham --domains clean,real:rosendahl --batch-sizes 64,256

For each domain of a run (the clean test split, the virtual target centers, the real held-out
centers) this measures AUC under: no adaptation; per-batch BatchNorm (`bn`) at each batch size;
`bn` with the whole domain as one batch; `adabn` (whole-domain statistics); and, for a binary
target, `adabn` with statistics from a subset of the domain resampled to the source class mix.
Reading it: if `bn` moves with the batch size and the whole-domain `bn` matches `adabn`, the
per-batch loss is batching; if the prevalence-matched statistics recover what `adabn` loses,
the loss is the domain's class mix (label shift), otherwise its images. Writes
`tta_check.json` and `tta_check.md` into the run directory (or `--out`); with `--domains` or `--max-samples` the
names carry them (`tta_check_clean+real:c_max64.md`), so a quick look never replaces the full check.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from hybrid.cli import positive_int, run_cli
from hybrid.data import DataError, resolve_data_root
from hybrid.rundir import file_part, write_json, write_text
from hybrid.tta import MIN_BATCH
from hybrid.runtime import torch_settings

log = logging.getLogger("hybrid.tta_check")


def prevalence_matched(labels: np.ndarray, positive_class: int, prevalence: float,
                       rng: np.random.Generator) -> np.ndarray:
    """Indices of a subset whose positive rate is `prevalence`, as large as the domain allows."""
    pos, neg = np.flatnonzero(labels == positive_class), np.flatnonzero(labels != positive_class)
    if not 0 < prevalence < 1 or not len(pos) or not len(neg):
        raise DataError(f"cannot resample to a positive rate of {prevalence:.3f} from {len(pos)} positive and "
                        f"{len(neg)} negative images")
    k = int(round(prevalence / (1 - prevalence) * len(neg)))
    if k <= len(pos):
        return np.sort(np.concatenate([neg, rng.choice(pos, max(k, 1), replace=False)]))
    m = int(round((1 - prevalence) / prevalence * len(pos)))  # too few positives: drop negatives instead
    return np.sort(np.concatenate([pos, rng.choice(neg, max(m, 1), replace=False)]))


def _auc(labels: np.ndarray, probs: np.ndarray, positive_class: int) -> float:
    from hybrid.metrics import domain_metrics

    return float(domain_metrics(labels, probs, positive_class=positive_class, n_bootstrap=0)["auc"])


def check_domain(model, x: torch.Tensor, y: torch.Tensor, *, positive_class: int, batch_sizes: list[int],
                 source_prevalence: float | None, seed: int = 0) -> dict:
    """AUC of one domain under each way of (not) adapting; see the module docstring."""
    from hybrid.inference import predict_probs

    labels = y.numpy()
    row = {"n": len(labels), "positive_rate": float(np.mean(labels == positive_class)),
           "none": _auc(labels, predict_probs(model, x, "none"), positive_class)}
    for size in batch_sizes:
        row[f"bn_batch{size}"] = _auc(labels, predict_probs(model, x, "bn", size), positive_class)
    row["bn_whole_domain"] = _auc(labels, predict_probs(model, x, "bn", len(x)), positive_class)
    row["adabn"] = _auc(labels, predict_probs(model, x, "adabn"), positive_class)
    if source_prevalence is not None:
        subset = prevalence_matched(labels, positive_class, source_prevalence, np.random.default_rng(seed))
        probs = predict_probs(model, x, "adabn", statistics_from=x[subset])
        row["adabn_prevalence_matched"] = _auc(labels, probs, positive_class)
        row["prevalence_matched_n"] = len(subset)
    return row


def run_check(run_dir: Path, domains: list[str] | None, batch_sizes: list[int], root=None, seed: int = 0,
              max_samples: int | None = None) -> dict:
    """Every TTA control on each domain; with `max_samples` on each domain's first images only (a quick look)."""
    from hybrid.domains import build_eval_domains, first_samples, load_bundle
    from hybrid.rundir import load_run

    cfg, model, ckpt, backend = load_run(run_dir)
    backend.close()
    bundle = load_bundle(cfg, root or resolve_data_root(cfg.data_root))  # the class-mix control needs its labels
    available = first_samples(build_eval_domains(cfg, bundle, ckpt["in_channels"]), max_samples)
    chosen = domains or list(available)
    unknown = [d for d in chosen if d not in available]
    if unknown:
        raise DataError(f"{run_dir} has no domain {', '.join(map(repr, unknown))}; it has {', '.join(available)}")
    source_prevalence = None
    if bundle.n_classes == 2:
        source_prevalence = float(np.mean(np.asarray(bundle.train.labels) == bundle.positive_class))
    from tqdm.auto import tqdm

    rows = {}
    for name in tqdm(chosen, desc="domains", unit="domain"):
        x, y = available[name]
        rows[name] = check_domain(model, x, y, positive_class=bundle.positive_class, batch_sizes=batch_sizes,
                                  source_prevalence=source_prevalence, seed=seed)
    return {"run": str(run_dir), "source_positive_rate": source_prevalence, "batch_sizes": batch_sizes,
            "seed": seed, "max_samples": max_samples, "n_classes": bundle.n_classes,
            "positive_class": bundle.positive_class, "domains": rows}


def to_markdown(result: dict) -> str:
    columns = ["none", *(f"bn_batch{b}" for b in result["batch_sizes"]), "bn_whole_domain", "adabn"]
    if result["source_positive_rate"] is not None:
        columns.append("adabn_prevalence_matched")
    sample = f" (the first {result['max_samples']} images of each)" if result.get("max_samples") else ""
    # older results lack n_classes; the source positive rate was recorded for binary runs only
    binary = result["n_classes"] == 2 if "n_classes" in result else result["source_positive_rate"] is not None
    rate = "positive rate" if binary else f"share of class {result.get('positive_class', 1)}"
    lines = [f"# TTA check of {result['run']}", "",
             f"AUC per domain{sample}{'' if binary else ' (macro over the classes)'}. bn_batchN: per-batch BatchNorm statistics in batches of N; bn_whole_domain: the "
             "whole domain as one batch; adabn: whole-domain statistics, prediction per image; "
             "adabn_prevalence_matched: statistics from a subset resampled to the source positive rate"
             + (f" ({result['source_positive_rate']:.3f})." if result["source_positive_rate"] is not None else "."),
             "", f"| domain | n | {rate} | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 3)]
    marked = False
    for name, row in result["domains"].items():
        # a batch as large as the domain is the whole domain: such a bn_batchN cell is marked
        whole = {f"bn_batch{b}" for b in result["batch_sizes"] if b >= row["n"]}
        marked |= bool(whole)
        cells = [name, str(row["n"]), f"{row['positive_rate']:.3f}",
                 *(f"{row[c]:.3f}" + ("*" if c in whole else "") for c in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    if marked:
        lines += ["", "\\* the batch size is at least the domain's n: one batch of the whole domain, as "
                  "bn_whole_domain."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hybrid.tta_check", description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="run directory written by hybrid.train")
    parser.add_argument("--domains", help="comma-separated domains (default: all; e.g. clean,real:rosendahl)")
    parser.add_argument("--batch-sizes", default="64,256", help="per-batch bn batch sizes to try (default: 64,256)")
    parser.add_argument("--data-root", help="folder holding the run's data (default: $HYBRID_DATA_ROOT)")
    parser.add_argument("--out", help="folder for tta_check.json/.md (default: the run directory)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prevalence-matched subset")
    parser.add_argument("--max-samples", type=positive_int,
                        help="score only each domain's first N images (a quick look, as hybrid.evaluate's)")
    parser.add_argument("--threads", type=positive_int, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    return run_cli(lambda: _run(args), verbose=False)


def parse_batch_sizes(text: str) -> list[int]:
    try:
        batch_sizes = [int(b) for b in text.split(",") if b]
    except ValueError:
        batch_sizes = []
    if not batch_sizes or min(batch_sizes) < MIN_BATCH:  # smaller batches fall back to the source statistics
        raise ValueError(f"--batch-sizes takes comma-separated sizes of at least {MIN_BATCH} (per-batch bn adapts "
                         f"no smaller batch: it would score the unadapted model under bn's name), got {text!r}")
    return batch_sizes


def _run(args) -> int:
    batch_sizes = parse_batch_sizes(args.batch_sizes)
    domains = [d for d in args.domains.split(",") if d] if args.domains else None
    with torch_settings(args.threads):
        result = run_check(Path(args.run), domains, batch_sizes, resolve_data_root(args.data_root), args.seed,
                           args.max_samples)
    out = Path(args.out) if args.out else Path(args.run)
    out.mkdir(parents=True, exist_ok=True)
    # a check of some domains or of a few images does not replace the full one (as hybrid.evaluate names its files)
    stem = ("tta_check" + (f"_{file_part('+'.join(domains))}" if domains else "")
            + (f"_max{args.max_samples}" if args.max_samples else ""))
    write_json(result, out / f"{stem}.json")
    markdown = to_markdown(result)
    write_text(markdown, out / f"{stem}.md")
    print(markdown + f"\nwritten: {out / stem}.md (and .json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
