"""Compare method candidates on the design-validation centers, never on the reported ones.

    python -m hybrid.design --out results/design_validation \\
        --candidate baseline=runs/ablation_pneumonia/full/seed0,runs/ablation_pneumonia/full/seed1 \\
        --candidate smooth10=runs/design/smooth10_s0,runs/design/smooth10_s1
    python -m hybrid.design --out results/tta --min-gain -0.005 \
        --candidate bn:bn=runs/design/s10strat_s0,runs/design/s10strat_s1 --candidate adabn:adabn=...

Choosing a default (a filter, a sampling scheme) by its AUC on the reported unseen centers
would make those centers part of training. Instead every run of every candidate is evaluated
(with the run's own TTA, or the one a `NAME:TTA=` candidate names) on the validation centers of `hybrid.shifts.make_validation_centers`,
whose shift families the reported target centers never use. Per candidate this reports, as a
mean over its runs (seeds): the worst validation-center AUC (the score), the mean, the clean
test AUC, and each center; then whether the candidate beats the first one (the baseline) by
`--min-gain` on the score without losing more than `--max-clean-drop` clean AUC (a negative
`--min-gain` asks only that a candidate not be worse by more than that). Writes
OUT/design.json, OUT/design.md and OUT/design.png.

Evaluations already in a run directory (`eval_<dataset>_validation[_<tta>].json`) are reused.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from hybrid.cli import positive_int, run_cli
from hybrid.rundir import write_json, write_text
from hybrid.runtime import torch_settings
from hybrid.data import DataError

log = logging.getLogger("hybrid.design")


def named_runs(text: str, usage: str) -> tuple[str, list[Path]]:
    """`LABEL=RUN_DIR[,RUN_DIR...]` -> (label, run dirs); `usage` says the form when the text is not it."""
    label, sep, runs = text.partition("=")
    paths = [Path(p) for p in runs.split(",") if p]
    if not sep or not label or not paths:
        raise ValueError(f"{usage}, got {text!r}")
    return label, paths


def parse_candidate(text: str) -> tuple[str, str | None, list[Path]]:
    """`NAME[:TTA]=RUN_DIR[,RUN_DIR...]` -> (name, TTA or None for the runs' own, run dirs)."""
    from hybrid.tta import TTA_METHODS

    usage = "--candidate takes NAME[:TTA]=RUN_DIR[,RUN_DIR...]"
    label, paths = named_runs(text, usage)
    name, _, tta = label.partition(":")
    if not name:
        raise ValueError(f"{usage}, got {text!r}")
    if tta and tta not in TTA_METHODS:
        raise ValueError(f"unknown TTA method {tta!r} in --candidate {text!r}; valid names are: "
                         f"{', '.join(sorted(TTA_METHODS))}")
    return name, tta or None, paths


def validation_eval(run_dir: Path, data_root: str | None = None, tta: str | None = None) -> dict:
    """The run's evaluation on the validation centers (with `tta`, else its own), computed once."""
    from hybrid import evaluate
    from hybrid.config import TrainConfig

    if not (run_dir / "config.json").is_file():
        raise DataError(f"{run_dir} is not a run directory (no config.json)")
    name = Path(TrainConfig.load(run_dir / "config.json").dataset).stem + "_validation" + (f"_{tta}" if tta else "")
    path = run_dir / f"eval_{name}.json"
    cached = json.loads(path.read_text()) if path.is_file() else {}
    if cached.get("max_samples"):
        log.warning("%s scored only %s samples per center; evaluating the whole validation set again", path,
                    cached["max_samples"])
        path.unlink()
    elif any(name.startswith("real:") for name in cached.get("unseen", [])):  # written before they were left out
        log.warning("%s scored the held-out clinic among the validation centers; evaluating again without it", path)
        path.unlink()
    if not path.is_file():
        log.info("evaluating %s on the validation centers%s", run_dir, f" with TTA {tta}" if tta else "")
        argv = ["--run", str(run_dir), "--centers", "validation"] + (["--data-root", data_root] if data_root else [])
        if tta:
            argv += ["--tta", tta, "--name", name]
        if evaluate.main(argv) != 0:
            raise DataError(f"evaluating {run_dir} on the validation centers failed (see the error above)")
    return json.loads(path.read_text())


def summarize_candidate(evals: list[dict]) -> dict:
    """Mean over the candidate's runs of its worst / mean / clean / per-center AUC.

    Worst and mean per run are the evaluation's own summary over its unseen centers.
    """
    centers = evals[0]["unseen"]
    per_run_worst = [e["summary"]["auc"]["worst"] for e in evals]
    return {
        "runs": [e["run"] for e in evals],
        "tta": sorted({e["tta"] for e in evals}),
        "seeds": [e["config"]["seed"] for e in evals],
        "score": float(np.mean(per_run_worst)),
        "worst_per_run": per_run_worst,
        "mean": float(np.mean([e["summary"]["auc"]["mean"] for e in evals])),
        "clean": float(np.mean([e["domains"]["clean"]["auc"] for e in evals])),
        "centers": {c: float(np.mean([e["domains"][c]["auc"] for e in evals])) for c in centers},
    }


def compare(candidates: dict[str, list[dict]], min_gain: float = 0.01, max_clean_drop: float = 0.01) -> dict:
    """Summaries plus the verdict of every candidate against the first (the baseline)."""
    names = list(candidates)
    centers = list(candidates[names[0]][0]["unseen"])
    for name, evals in candidates.items():
        for e in evals:
            if e["unseen"] != centers:
                raise ValueError(f"{e['run']} ({name}) was evaluated on {e['unseen']}, not on {centers}; "
                                 "every run must see the same validation centers")
    for center in centers:
        counts = {e["run"]: e["domains"][center].get("n") for evals in candidates.values() for e in evals}
        if len(set(counts.values())) > 1:
            raise ValueError(f"center {center} was scored on different numbers of images {counts}; delete the "
                             "eval_*_validation*.json of the runs with fewer, so every run is scored on the same set")
    summaries = {name: summarize_candidate(evals) for name, evals in candidates.items()}
    base = summaries[names[0]]
    for name in names[1:]:
        s = summaries[name]
        s["gain"] = s["score"] - base["score"]
        s["clean_change"] = s["clean"] - base["clean"]
        s["qualifies"] = bool(s["gain"] >= min_gain and s["clean_change"] > -max_clean_drop)
    def rank(name: str) -> tuple[float, float]:
        return summaries[name]["score"], summaries[name]["mean"]

    best = max(names, key=rank)
    # what the rule adopts: the highest-scoring qualifying candidate, else the baseline stays
    adopt = max((n for n in names[1:] if summaries[n]["qualifies"]), key=rank, default=names[0])
    return {"baseline": names[0], "centers": centers, "candidates": summaries, "best": best, "adopt": adopt,
            "rule": {"score": "worst validation-center AUC, mean over runs", "min_gain": min_gain,
                     "max_clean_drop": max_clean_drop}}


def to_markdown(result: dict) -> str:
    centers, rule = result["centers"], result["rule"]
    head = ["candidate", "TTA", "runs", "score (worst)", "mean", "clean", *centers, "vs baseline"]
    lines = ["# Design validation", "",
             f"Score: {rule['score']}. A candidate qualifies if it beats the baseline "
             f"({result['baseline']}) by at least {rule['min_gain']} and loses less than "
             f"{rule['max_clean_drop']} clean AUC. Validation centers only; the reported target centers "
             "are not used.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in result["candidates"].items():
        verdict = "baseline" if name == result["baseline"] else (
            f"{s['gain']:+.3f} ({'qualifies' if s['qualifies'] else 'does not qualify'})")
        cells = [name, ", ".join(s["tta"]), str(len(s["runs"])), f"{s['score']:.3f}", f"{s['mean']:.3f}", f"{s['clean']:.3f}",
                 *(f"{s['centers'][c]:.3f}" for c in centers), verdict]
        lines.append("| " + " | ".join(cells) + " |")
    adopt = result.get("adopt", result["best"])
    verdict = (f"**{adopt}** (the highest-scoring candidate that qualifies)" if adopt != result["baseline"] else
               f"none qualifies, **{adopt}** stays")
    lines += ["", f"Highest score: {result['best']}. By the rule: {verdict}.", ""]
    for name, s in result["candidates"].items():
        lines.append(f"- {name}: " + ", ".join(s["runs"]))
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> Path:
    """Grouped bars: AUC per validation center (and clean) for every candidate."""
    from hybrid.reporting import new_figure, palette, save_figure

    domains = ["clean", *result["centers"]]
    names = list(result["candidates"])
    width = 0.8 / len(names)
    fig = new_figure((1.6 + 1.1 * len(domains), 3.6))
    ax = fig.add_subplot()
    x = np.arange(len(domains))
    for i, (name, colour) in enumerate(zip(names, palette(len(names)))):
        s = result["candidates"][name]
        values = [s["clean"]] + [s["centers"][c] for c in result["centers"]]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, values, width, color=colour, label=name)
    lows = [v for s in result["candidates"].values() for v in s["centers"].values()]
    ax.set(xticks=x, ylim=(max(0.0, min(lows) - 0.05), 1.0), ylabel="AUC (mean over seeds)",
           title="Design validation: AUC per validation center")
    ax.set_xticklabels([d.replace("val_", "") for d in domains], rotation=20, ha="right")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small", frameon=False)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hybrid.design", description=__doc__.split("\n")[0])
    parser.add_argument("--candidate", action="append", required=True,
                        help="NAME[:TTA]=RUN_DIR[,RUN_DIR...]; the first candidate is the baseline; "
                             "TTA evaluates with that test-time adaptation instead of the runs' own")
    parser.add_argument("--out", required=True, help="folder for design.json, design.md, design.png")
    parser.add_argument("--data-root", help="folder with MedMNIST files (default: $HYBRID_DATA_ROOT)")
    parser.add_argument("--min-gain", type=float, default=0.01, help="score gain needed to qualify")
    parser.add_argument("--max-clean-drop", type=float, default=0.01, help="clean AUC a candidate may lose")
    parser.add_argument("--threads", type=positive_int, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    return run_cli(lambda: _run(args))


def _run(args) -> int:
    parsed = [parse_candidate(text) for text in args.candidate]
    names = [name for name, _, _ in parsed]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:  # which runs were meant? (a dict would keep the first's place and the last's runs)
        raise ValueError(f"candidate name(s) {', '.join(twice)} given twice; give every --candidate its own NAME")
    specs = {name: (tta, paths) for name, tta, paths in parsed}
    if len(specs) < 2:
        raise ValueError("give at least two candidates (a baseline and one to compare)")
    with torch_settings(args.threads):
        candidates = {name: [validation_eval(p, args.data_root, tta) for p in paths]
                      for name, (tta, paths) in specs.items()}
    result = compare(candidates, args.min_gain, args.max_clean_drop)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(result, out / "design.json")
    markdown = to_markdown(result)
    write_text(markdown, out / "design.md")
    plot(result, out / "design.png")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
