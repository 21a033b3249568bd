"""Ablation report of a study directory: `python -m hybrid.report RUNS_DIR`.

    python -m hybrid.experiment --preset ablation --seeds 3 --out runs/ablation
    python -m hybrid.report runs/ablation               # runs/ablation/report.md, report.json, figures/
    python -m hybrid.report runs/ablation --no-models   # tables and bar chart only, no checkpoint reloaded
    python -m hybrid.report runs/candidate --include runs/baseline --only-seeds 0,1,2 --out results/X
                                                        # runs trained in two folders, one report

Reads every RUNS_DIR/<variant>/seed<k>/report.json written by `hybrid.train`. Per variant:
mean ± std over seeds of the mean unseen-center AUC, worst-center AUC, sensitivity,
specificity and the AUC spread across centers, with and without test-time adaptation.
Each variant is paired with erm by (seed, center) in a Wilcoxon signed-rank test, and by
seed alone (stricter: centers within a seed share one model). The ROC and feature figures
reload each variant's lowest-seed checkpoint and recompute on the test data.

This module assembles the report dict; `report_figures` draws the figures and
`report_markdown` writes report.md from the dict.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import shutil
import sys
from pathlib import Path

from hybrid.cli import names_list, positive_int, run_cli, seeds_list
from hybrid.rundir import file_part, read_lines, write_json, write_text
from hybrid.studies.loso import read_selection
from hybrid.studies.report_figures import DANN_VARIANTS, ModelData, feature_study, plot_center_auc, roc_on_hardest
from hybrid.studies.report_markdown import markdown, shared_settings
from hybrid.studies.runs import seed_of
from hybrid.studies.results import (BASELINE, SETTINGS, STATS, asked_for, by_seed, compare, domain_groups,
                                    load_study_runs, mixed_input_statistics, source_validation_selection,
                                    variant_table, variants_of)

# `shared_settings` is re-exported: tests read it from here.
__all__ = ["QUANTUM_PAIRS", "build_report", "main", "quantum_pairs", "shared_settings"]

log = logging.getLogger("hybrid.report")

# (with the quantum layer, the same variant without it)
QUANTUM_PAIRS = (("quantum", "shift"), ("full", "dann"))
# the quantum preset's controls: <head> (the circuit) against <head>_separable, _twin and _none
CONTROL_SUFFIXES = ("_separable", "_twin", "_none")
HEAD_PREFIXES = ("dressed", "residual")  # a head variant with the circuit; its controls end in CONTROL_SUFFIXES
SLOT_LR = re.compile(r"_qlr\d+")  # the slot learning-rate part of a variant name (hybrid.studies.presets)


def quantum_pairs(variants: list[str]) -> list[tuple[str, str]]:
    """The (with, without) pairs a study holds: the layer on/off, each circuit against its controls,
    and each head against the concat head (and against concat given the same training change, e.g. _ema99)."""
    pairs = [p for p in QUANTUM_PAIRS if set(p) <= set(variants)]
    pairs += [(v, v + s) for v in variants for s in CONTROL_SUFFIXES if v + s in variants]
    # a slot learning rate changes nothing without a slot: dressed_angle_qlr100's _none control is dressed_angle_none
    pairs += [(v, none) for v in variants if SLOT_LR.search(v) and not v.endswith(CONTROL_SUFFIXES)
              and (none := SLOT_LR.sub("", v) + "_none") in variants and v + "_none" not in variants]
    heads = [v for v in variants if v.startswith(HEAD_PREFIXES) and not v.endswith(CONTROL_SUFFIXES)]
    pairs += [(v, "concat") for v in heads] if "concat" in variants else []
    # a training change given to concat too (concat_ema99): each head with that change against it, and it
    # against plain concat (what the change gives the head that can ignore the circuit)
    changes = [v.removeprefix("concat") for v in variants if v.startswith("concat_") and not v.endswith(CONTROL_SUFFIXES)]
    pairs += [(v, "concat" + change) for change in changes for v in heads if v.endswith(change)]
    return pairs + ([("concat" + change, "concat") for change in changes] if "concat" in variants else [])


def _flatten(name: str, comparison: dict) -> list[dict]:
    return [{"name": name, "metric": metric} | result for metric, result in comparison.items()]


def build_report(runs_dir: Path, *, models: bool = True, data_root: str | None = None, threads: int = 1,
                 evaluation: str | None = None, out_dir: Path | None = None, include: tuple = (),
                 variants: list[str] | None = None, seeds: list[int] | None = None) -> dict:
    """Write report.md, report.json and figures/ into `out_dir`; returns the report dict.

    `out_dir` defaults to `runs_dir`, or to `runs_dir/report_<evaluation>` when `evaluation`
    names the evaluation files that replace the runs' with-TTA results (see `load_runs`).
    `include` adds the runs of other study directories, `variants` and `seeds` keep only those
    (`load_study_runs`); such a report needs its own `out_dir`, so no study's own report is replaced.

    `threads` torch threads for the reloaded models: the work is small, and on a CPU shared
    with training runs two threads were measured 20x slower than one (oversubscription).
    """
    from hybrid.runtime import torch_settings

    include = (include,) if isinstance(include, (str, Path)) else tuple(include)
    runs_dirs = [Path(runs_dir), *map(Path, include)]
    if evaluation:
        file_part(evaluation, "--evaluation")  # it names a folder: never one outside the study
    if include or variants is not None or seeds is not None:
        if not out_dir or Path(out_dir).resolve() in [d.resolve() for d in runs_dirs]:
            raise ValueError("a report of several study folders, or of some variants or seeds, needs an --out of "
                             "its own: it must not replace a study's own report")
    out_dir = Path(out_dir) if out_dir else runs_dirs[0] / f"report_{evaluation}" if evaluation else runs_dirs[0]
    with torch_settings(threads):
        study, runs = load_study_runs(runs_dirs, evaluation, variants, seeds)
        return _build_report(runs_dirs, study, runs, models, data_root, evaluation, out_dir)


def _selections(runs_dirs: list[Path], runs: list, skipped: list[str]) -> dict:
    """The study's selections (on source validation; leave-one-source-out, made before its runs), for one folder
    only: the tie rule's earlier-listed variant has no common order across folders."""
    if len(runs_dirs) == 1:
        return {"selection": source_validation_selection(runs), "loso_selection": read_selection(runs_dirs[0])}
    skipped.append("selection on source validation: the runs come from several study folders")
    if read_selection(runs_dirs[0]):
        skipped.append(f"leave-one-source-out selection of {runs_dirs[0]}: the report holds runs of other folders "
                       "too (see its selection.md)")
    return {"selection": {}, "loso_selection": None}


def _build_report(runs_dirs: list[Path], study: dict, runs: list, models: bool, data_root: str | None,
                  evaluation: str | None, out_dir: Path) -> dict:
    runs_dir = runs_dirs[0]
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for old in fig_dir.glob("*.png"):
        old.unlink()  # a figure that cannot be drawn this time must not survive from an older report
    variants = variants_of(runs)
    groups = domain_groups(runs)
    primary = "tta" if any(r.domains("tta") for r in runs) else "no_tta"
    result = {"runs_dir": str(runs_dir), "study": study, "variants": variants, "primary_setting": primary,
              "evaluation": evaluation, "out_dir": str(out_dir), "groups": {}, "figures": {}, "skipped": [],
              "warnings": mixed_input_statistics(runs)}
    for warning in result["warnings"]:
        log.warning(warning)
    result |= _selections(runs_dirs, runs, result["skipped"])
    base = by_seed(runs, BASELINE)
    for title, names in groups.items():
        g = {"domains": names, "tables": {s: variant_table(runs, names, s) for s in SETTINGS}, "comparisons": {}}
        for setting in SETTINGS:
            g["comparisons"][setting] = [row for v in variants if v != BASELINE and base
                                         for row in _flatten(v, compare(by_seed(runs, v), base, names,
                                                                        setting, setting))]
        g["tta_effect"] = [row for v in variants
                           for row in _flatten(v, compare(by_seed(runs, v), by_seed(runs, v), names,
                                                          "tta", "no_tta"))
                           if row["metric"] in ("AUC", STATS["auc_mean"])]
        # the quantum layer's own contribution: variants that differ only by the layer
        g["quantum_effect"] = {setting: [row for with_q, without in quantum_pairs(variants)
                                         for row in _flatten(f"{with_q} vs {without}",
                                                             compare(by_seed(runs, with_q), by_seed(runs, without),
                                                                     names, setting, setting))
                                         if row["metric"] in ("AUC", STATS["auc_mean"])]
                               for setting in SETTINGS}
        result["groups"][title] = g
    if not base:
        result["skipped"].append(f"no {BASELINE} runs: paired comparisons with {BASELINE} are left out")
    all_unseen = max(groups.values(), key=len)

    def figure(key: str, path: Path, fn, *args):
        """Draw one figure into `path`; a figure must never cost the study its tables."""
        try:
            value = fn(runs, all_unseen, path, *args)
        except Exception as exc:
            result["skipped"].append(f"{key} figure: {type(exc).__name__}: {exc}")
            log.warning("could not draw the %s figure: %s", key, exc)
            return None
        if path.is_file():
            result["figures"][key] = str(path.relative_to(out_dir))
        return value

    figure("center_auc", fig_dir / "center_auc.png", plot_center_auc)
    if models:
        loader = ModelData(data_root)
        result["hardest_center"] = figure("roc_hardest", fig_dir / "roc_hardest.png", roc_on_hardest, loader)
        result["invariance"] = figure("features", fig_dir / "features_pca.png", feature_study, loader)
        if result["invariance"] and "features" not in result["figures"]:
            result["skipped"].append(f"feature projection: needs {BASELINE} and one of {', '.join(DANN_VARIANTS)}")
    else:
        result["skipped"].append("ROC and feature figures: --no-models")
    grid = next((r.path / "centers.png" for r in runs if r.report.get("config", {}).get("shift")
                 and (r.path / "centers.png").is_file()), None)
    if grid:
        shutil.copy(grid, fig_dir / "centers.png")
        result["figures"]["centers"] = "figures/centers.png"
    else:
        result["skipped"].append("virtual-center grid: no run with shift simulation drew one")
    result["failures"] = _open_failures(runs_dirs, runs, study.get("parts"))
    unfinished = result["unfinished"] = _unfinished(runs_dirs, runs, result["failures"], study.get("parts"))
    if unfinished:
        result["skipped"].append(f"{len(unfinished)} unfinished run(s), not in the tables: {', '.join(unfinished)} "
                                 f"(`python -m hybrid.experiment --status {runs_dir}` says where each stands)")
    result["runs"] = [{"variant": r.variant, "seed": r.seed, "best_epoch": r.report["run"].get("best_epoch"),
                       "epochs": r.report.get("config", {}).get("epochs"),
                       "minutes": (r.report["run"].get("seconds") or math.nan) / 60,
                       "threads": r.report["run"].get("threads"), "host": r.report["run"].get("host")} for r in runs]
    write_json(result, out_dir / "report.json")
    write_text(markdown(result, runs), out_dir / "report.md")
    return result


def _open_failures(runs_dirs: list[Path], runs: list, parts: dict | None) -> list[dict]:
    """Failures whose run has not finished since (a retried run drops out), among the variants and seeds
    reported; with several folders each names its folder."""
    finished = {(r.variant, r.seed) for r in runs}
    kept = parts or {}
    open_ = []  # a failure is open while its run is not among the finished ones reported
    for runs_dir in runs_dirs:
        rows = read_lines(runs_dir / "failures.jsonl")  # a line torn by a crash is skipped, as --status does
        latest = {(r["variant"], r["seed"]): r for r in rows}
        open_ += [r | ({"folder": str(runs_dir)} if len(runs_dirs) > 1 else {}) for (v, s), r in latest.items()
                  if (v, s) not in finished and asked_for(v, s, kept.get("variants"), kept.get("seeds"))]
    return open_


def _unfinished(runs_dirs: list[Path], runs: list, failures: list[dict], parts: dict | None) -> list[str]:
    """Runs started (a variant/seedN folder with config.json) that neither finished nor failed: still training,
    queued for a resume, or killed; among the variants and seeds reported."""
    done = {(r.variant, r.seed) for r in runs} | {(f["variant"], f["seed"]) for f in failures}
    kept = parts or {}
    names = []
    for runs_dir in runs_dirs:
        for config in sorted(runs_dir.glob("*/seed*/config.json")):
            seed, variant = seed_of(config.parent.name), config.parent.parent.name
            if seed is not None and (variant, seed) not in done and asked_for(
                    variant, seed, kept.get("variants"), kept.get("seeds")):
                names.append(f"{variant}/{config.parent.name}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hybrid.report", description=__doc__.split("\n")[0])
    parser.add_argument("runs_dir", help="study directory written by hybrid.experiment")
    parser.add_argument("--include", action="append", default=[], metavar="DIR",
                        help="also report the runs of this study directory (repeatable), e.g. a baseline trained "
                             "in another folder; needs --out")
    parser.add_argument("--variants", type=names_list, help="report only these variants (comma-separated); needs --out")
    parser.add_argument("--only-seeds", type=seeds_list, metavar="S,S,...",
                        help="report only these seeds, e.g. 3,4,5 for a replication; needs --out")
    parser.add_argument("--no-models", action="store_true", help="skip the figures that reload checkpoints")
    parser.add_argument("--data-root", help="folder holding the data (default: the runs' or $HYBRID_DATA_ROOT)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads for the reloaded models")
    parser.add_argument("--evaluation", help="NAME of eval_NAME.json files in every run (hybrid.evaluate --name) "
                                             "whose results replace the with-TTA ones, e.g. another TTA method")
    parser.add_argument("--out", help="folder for the report (default: RUNS_DIR, or RUNS_DIR/report_NAME)")
    args = parser.parse_args(argv)
    return run_cli(lambda: _run(args), verbose=False)


def _run(args) -> int:
    result = build_report(Path(args.runs_dir), models=not args.no_models, data_root=args.data_root,
                          threads=args.threads, evaluation=args.evaluation, out_dir=args.out,
                          include=tuple(args.include), variants=args.variants, seeds=args.only_seeds)
    print(f"{Path(result['out_dir']) / 'report.md'}: {len(result['variants'])} variant(s), "
          f"{len(result['runs'])} run(s), figures: {', '.join(result['figures']) or 'none'}"
          + (f"; left out, unfinished: {', '.join(result['unfinished'])}" if result["unfinished"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
