"""Does a network's encoder carry more than its head uses? Linear probes, on the design-validation centers.

    python -m hybrid.probe --out results/probe \\
        --runs concat=runs/study/concat/seed0,runs/study/concat/seed1 \\
        --runs dressed=runs/study/dressed/seed0,runs/study/dressed/seed1

For every run, a logistic regression is fitted on the embedding f of the clean training split
(source BatchNorm statistics) and, where the network has a quantum slot, on the slot's inputs (the
projection in front of the angles) and on the slot's outputs (what the head's classifier reads);
where the slot is a circuit, also on its computational-basis probabilities (the best linear
read-out of the bitstrings the same measurement gives) and on those of the circuit at zero weights
(for RealAmplitudes a permutation of the encoded product state's: what the encoding alone keeps).
Each design-validation center is then scored with adabn (the statistics of the whole center, as
the studies evaluate) by the run's own head and by every probe. A probe that beats the head shows
ranking information the head leaves unused; the chain f -> slot inputs -> encoded state -> basis
probabilities -> slot outputs shows where it is lost. Only the virtual design-validation centers
are read, never the reported centers or real held-out clinics.
Per group: the mean over its runs of the worst center, the mean center and clean test AUC of each
reading. Writes OUT/probe.json, OUT/probe.md and OUT/probe.png.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from hybrid.cli import positive_int, run_cli
from hybrid.data import DataError
from hybrid.rundir import write_study_outputs
from hybrid.runtime import torch_settings
from hybrid.studies.design import named_runs

log = logging.getLogger("hybrid.probe")

READINGS = {"head": "its head", "probe_f": "linear probe on f", "probe_slot": "linear probe on the slot's inputs",
            "probe_encoded": "linear probe on the encoded state (circuit at zero weights)",
            "probe_basis": "linear probe on the circuit's basis probabilities",
            "probe_layer": "linear probe on the slot's outputs"}


def parse_group(text: str) -> tuple[str, list[Path]]:
    """`NAME=RUN_DIR[,RUN_DIR...]` -> (name, run dirs)."""
    return named_runs(text, "--runs takes NAME=RUN_DIR[,RUN_DIR...]")


@torch.no_grad()
def readings(model, x: torch.Tensor, positive_class: int, batch_size: int = 256) -> dict[str, np.ndarray]:
    """The embedding, the slot's inputs and outputs (where there is a slot), the basis probabilities of
    the circuit and of the circuit at zero weights (where the slot is a circuit), and the head's
    positive-class score."""
    parts: dict[str, list[torch.Tensor]] = {"f": [], "slot": [], "encoded": [], "basis": [], "layer": [], "head": []}
    for start in range(0, len(x), batch_size):
        f = model.features(x[start:start + batch_size])
        parts["f"].append(f)
        if hasattr(model, "project"):
            parts["slot"].append(model.slot_inputs(f))
            parts["layer"].append(model.layer_outputs(f).to(f.dtype))
        if getattr(model, "quantum", None) is not None:
            angles, circuit = model.quantum_angles(f), model.quantum
            parts["basis"].append(circuit.with_probabilities(angles)[1].to(f.dtype))
            encoded = circuit.program.with_probabilities(angles, torch.zeros_like(circuit.weight))[1]
            parts["encoded"].append(encoded.to(f.dtype))
        parts["head"].append(torch.softmax(model.head(f).float(), dim=1)[:, positive_class])
    return {k: torch.cat(v).numpy() for k, v in parts.items() if v}


def fit_probe(features: np.ndarray, positive: np.ndarray):
    """Logistic regression (L2, C = 1, lbfgs): the linear read-out of an embedding."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=1.0, max_iter=2000).fit(features, positive)


def probe_run(run_dir: Path, data_root: str | None = None) -> dict:
    """AUC of the head and of each probe on the clean test split and every design-validation center."""
    from hybrid.data import resolve_data_root
    from hybrid.domains import build_eval_domains, load_bundle, split_to_tensors
    from hybrid.metrics import binary_auc
    from hybrid.rundir import load_run
    from hybrid.tta import make_tta

    cfg, model, ckpt, backend = load_run(run_dir)
    backend.close()
    positive_class = ckpt["positive_class"]
    bundle = load_bundle(cfg, resolve_data_root(data_root or cfg.data_root))
    x_train, y_train = split_to_tensors(bundle.train, cfg.input_size, ckpt["in_channels"])
    train = readings(model.eval(), x_train, positive_class)
    positive = y_train.numpy() == positive_class
    probes = {f"probe_{k}": fit_probe(train[k], positive)
              for k in ("f", "slot", "encoded", "basis", "layer") if k in train}
    domains = build_eval_domains(cfg, bundle, ckpt["in_channels"], "validation")  # no held-out clinic: reported
    scores = {}
    for name, (x, y) in domains.items():
        adabn = make_tta("adabn", model)
        adabn.prepare(x)
        try:
            seen = readings(model.eval(), x, positive_class)
        finally:
            adabn.reset()
        labels = y.numpy() == positive_class
        scores[name] = {"head": binary_auc(seen["head"], labels)} | {
            key: binary_auc(probe.decision_function(seen[key.removeprefix("probe_")]), labels)
            for key, probe in probes.items()}
    log.info("%s: worst center, head %.3f, probe on f %.3f", run_dir,
             *(min(s[k] for c, s in scores.items() if c != "clean") for k in ("head", "probe_f")))
    return {"run": str(run_dir), "seed": cfg.seed, "domains": scores}


def summarize_group(runs: list[dict]) -> dict:
    """Mean over runs of each reading's worst center, mean center and clean AUC (readings every run has)."""
    keys = [k for k in READINGS if all(k in r["domains"]["clean"] for r in runs)]
    out = {}
    for key in keys:
        centers = [[s[key] for c, s in r["domains"].items() if c != "clean"] for r in runs]
        out[key] = {"worst": float(np.mean([min(c) for c in centers])), "mean": float(np.mean([np.mean(c) for c in centers])),
                    "clean": float(np.mean([r["domains"]["clean"][key] for r in runs]))}
    return out


def to_markdown(result: dict) -> str:
    lines = ["# Linear probes on the design-validation centers", "",
             "Worst center / mean center / clean test AUC, mean over each group's runs; adabn on every center. "
             "A probe is a logistic regression fitted on the clean training split (source statistics).", "",
             "| group | runs | " + " | ".join(READINGS.values()) + " |", "|---|---|" + "---|" * len(READINGS)]
    for name, group in result["groups"].items():
        cells = [" / ".join(f"{group['summary'][k][m]:.3f}" for m in ("worst", "mean", "clean"))
                 if k in group["summary"] else "-" for k in READINGS]
        lines.append(f"| {name} | {len(group['runs'])} | " + " | ".join(cells) + " |")
    lines.append("")
    for name, group in result["groups"].items():
        lines.append(f"- {name}: " + ", ".join(r["run"] for r in group["runs"]))
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> Path:
    """Bars: worst design-validation-center AUC of each group's head and probes."""
    from hybrid.reporting import new_figure, palette, save_figure

    names = list(result["groups"])
    fig = new_figure((max(5.0, 1.8 + 1.4 * len(names)), 4.4))
    ax = fig.add_subplot()
    width = 0.8 / len(READINGS)
    values = []
    for i, ((key, label), colour) in enumerate(zip(READINGS.items(), palette(len(READINGS)))):
        heights = [result["groups"][n]["summary"].get(key, {}).get("worst", np.nan) for n in names]
        values += [h for h in heights if np.isfinite(h)]
        ax.bar(np.arange(len(names)) + (i - (len(READINGS) - 1) / 2) * width, heights, width, color=colour, label=label)
    ax.set(xticks=np.arange(len(names)), ylim=(max(0.0, min(values) - 0.05), 1.0),
           ylabel="worst validation-center AUC", title="What the head uses of the embedding")
    ax.set_xticklabels(names)
    ax.grid(axis="y", alpha=0.3)
    # below the bars: the labels are long, and beside one group's bars they left the axes no width
    fig.legend(loc="outside lower center", ncols=2, fontsize="small", frameon=False)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hybrid.probe", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", action="append", required=True, help="NAME=RUN_DIR[,RUN_DIR...]; repeat per group")
    parser.add_argument("--out", required=True, help="folder for probe.json, probe.md, probe.png")
    parser.add_argument("--data-root", help="folder with the dataset files (default: the run's, else $HYBRID_DATA_ROOT)")
    parser.add_argument("--threads", type=positive_int, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    return run_cli(lambda: _run(args))


def refuse_multiclass(run_dir: Path) -> None:
    """The probes and the head are scored as one positive class against the rest, which a multi-class run's own
    report does not do (macro AUC): such a run is refused rather than scored on another metric."""
    from hybrid.rundir import load_run

    _, _, ckpt, backend = load_run(run_dir, "statevector")
    backend.close()
    if ckpt["n_classes"] != 2:
        raise DataError(f"{run_dir} predicts {ckpt['n_classes']} classes; the probes read one class against the "
                        "rest, so they need a binary target (retrain with --classes A,B for a pair)")


def _run(args) -> int:
    groups = dict(map(parse_group, args.runs))
    if len(groups) != len(args.runs):
        raise ValueError("each --runs group needs its own name")
    for path in (p for paths in groups.values() for p in paths):  # every run before the first is probed
        refuse_multiclass(path)
    result = {"centers": "validation", "groups": {}}
    for name, paths in groups.items():
        with torch_settings(args.threads):
            runs = [probe_run(p, args.data_root) for p in paths]
        result["groups"][name] = {"runs": runs, "summary": summarize_group(runs)}
    write_study_outputs(Path(args.out), "probe", result, to_markdown(result), plot)
    return 0
