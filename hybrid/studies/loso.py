"""Leave-one-source-out model selection inside the training clinic (#13).

    python -m hybrid.experiment --preset ham10000 --validation loso --out runs/ham_loso

For each training source s (the study's `train_centers`), every variant trains on the other
sources and is scored on s; the study's held-out centers (Queensland for HAM10000) are not
loaded at all. The rule, fixed before any measurement: the variant with the highest mean AUC
over sources and seeds is selected; a variant within 0.005 of the best that is listed earlier
wins the tie (the simpler baselines come first in every preset). `selection.json` and
`selection.md` in the study directory record every score and the choice. The normal study
(train on all sources, test on the held-out centers) then runs as before, so the choice is made
without looking at the reported center.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np

from hybrid.rundir import write_json, write_text
from hybrid.studies.results import SELECTION_TIE, earliest_within_tie
from hybrid.studies.runs import run_dir

FOLDS = "loso"  # sub-folder of the study directory holding the fold runs
SELECTION = "selection.json"  # in the study directory: every fold score and the choice


def sources_of(study) -> list[str]:
    """The training sources a leave-one-source-out validation rotates through."""
    base = study.base
    if not str(base.get("dataset", "")).endswith(".npz") or not base.get("train_centers"):
        raise ValueError(f"--validation loso needs a multi-center preset with train_centers (e.g. ham10000); "
                         f"preset {study.preset!r} has none")
    sources = [s.strip() for s in str(base["train_centers"]).split(",") if s.strip()]
    if len(sources) < 2:
        raise ValueError(f"--validation loso needs at least two training sources, got {sources}")
    return sources


def fold_name(variant: str, source: str) -> str:
    return f"{variant}@{source}"


def loso_study(study):
    """The fold runs: every variant once per held-out source, trained on the others."""
    sources = sources_of(study)
    variants = {fold_name(v, s): overrides | {"train_centers": ",".join(o for o in sources if o != s),
                                              "test_centers": s}
                for v, overrides in study.variants.items() for s in sources}
    return replace(study, preset=f"{study.preset}_loso", variants=variants,
                   description=f"leave-one-source-out validation of {study.preset}")


def select(study, out: Path) -> dict:
    """Scores of the finished fold runs under `out` and the variant the rule selects."""
    sources = sources_of(study)
    scores: dict[str, dict] = {}
    gaps = []  # why a variant is incomplete, for the line that says no variant was selected
    for variant in study.variants:
        per_fold = {}
        for source in sources:
            aucs = []
            for seed in study.seeds:
                report = run_dir(out, fold_name(variant, source), seed) / "report.json"
                auc = json.loads(report.read_text())["domains"][f"real:{source}"]["auc"] if report.is_file() else None
                if auc is not None and math.isfinite(auc):  # a nan fold (one class there) leaves it incomplete
                    aucs.append(auc)
                else:
                    gaps.append(f"{fold_name(variant, source)}/seed{seed} " + (
                        "scored no AUC on its held-out source (one class among the images scored; more images, "
                        "e.g. a larger eval_max_samples, give it both)" if report.is_file() else "has not finished"))
            per_fold[source] = aucs
        values = [a for aucs in per_fold.values() for a in aucs if a is not None]
        complete = all(len(a) == len(study.seeds) for a in per_fold.values())
        scores[variant] = {"per_source": per_fold, "mean": float(np.mean(values)) if values else None,
                           "complete": complete}
    chosen = earliest_within_tie({v: scores[v]["mean"] for v in study.variants
                                  if scores[v]["mean"] is not None and scores[v]["complete"]})
    return {"rule": f"highest mean leave-one-source-out AUC over sources and seeds; within {SELECTION_TIE} of the best, "
                    "the earlier-listed variant", "sources": sources, "seeds": list(study.seeds),
            "scores": scores, "selected": chosen, "gaps": gaps}


def write_selection(selection: dict, out: Path) -> None:
    write_json(selection, Path(out) / SELECTION)
    lines = ["# Leave-one-source-out selection", "", f"Rule: {selection['rule']}.", "", *selection_table(selection)]
    write_text("\n".join(lines) + "\n", Path(out) / "selection.md")


def read_selection(study_dir: Path) -> dict | None:
    """The leave-one-source-out selection a study directory holds, or None (a study selected on source
    validation, or its folds not finished)."""
    path = Path(study_dir) / SELECTION
    return json.loads(path.read_text()) if path.is_file() else None


def selection_table(selection: dict) -> list[str]:
    """Markdown rows: each variant's mean AUC on every held-out source and over all of them."""
    lines = ["| variant | " + " | ".join(selection["sources"]) + " | mean |",
             "|---|" + "---|" * (len(selection["sources"]) + 1)]
    for variant, score in selection["scores"].items():
        cells = [f"{np.mean(a):.3f}" if a else "–" for a in score["per_source"].values()]
        mean = f"{score['mean']:.3f}" if score["mean"] is not None else "–"
        lines.append(f"| {variant}{' (selected)' if variant == selection['selected'] else ''} | "
                     + " | ".join(cells) + f" | {mean} |")
    return lines
