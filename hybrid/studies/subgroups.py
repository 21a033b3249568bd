"""Subgroup analysis on a real held-out center: which kinds of cases does the model rank wrongly?

    python -m hybrid.subgroups --run runs/ham/erm/seed0 --group-field labels

A binary target can hide very different cases: "malignant" in HAM10000 is melanoma, basal cell
carcinoma or actinic keratosis, and the sources mix them differently. For every held-out center
of a multi-center run this scores each image once (with the run's TTA, exactly as evaluation
does) and reports, per subgroup of a second label array (e.g. the diagnosis), how many images it
has and how often they are flagged positive, plus the AUC of every positive subgroup against
every negative subgroup. Writes RUN/subgroups_<center>.json, .md and a heatmap .png.

    python -m hybrid.subgroups --run runs/ham/erm/seed0 --run runs/ham/erm/seed1 --out results/ham_subgroups

With several runs (the seeds of one method) it also writes OUT/subgroups_<center>.* with each
pair's mean AUC over the runs and how many runs rank it backwards (AUC < 0.5).

Only held-out centers are analysed: their images were never trained on. Images of training
centers would need the run's exact test split, which the subgroup array does not carry.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from hybrid.cli import positive_int, run_cli
from hybrid.data import DataError, resolve_centers, resolve_data_root, resolve_dataset_path
from hybrid.metrics import binary_auc, domain_metrics
from hybrid.rundir import file_part
from hybrid.runtime import torch_settings
from hybrid.tta import TTA_METHODS

log = logging.getLogger("hybrid.subgroups")
MIN_GROUP = 5  # smaller subgroups get counts but no AUC: a handful of images says nothing


def pairwise_auc(scores: np.ndarray, groups: np.ndarray, positive_groups, negative_groups,
                 min_n: int = MIN_GROUP) -> list[dict]:
    """AUC of the score for each positive subgroup against each negative subgroup.

    Ties count one half; pairs with a side under `min_n` images get auc None.
    """
    rows = []
    for p in positive_groups:
        n_pos = int((groups == p).sum())
        for n in negative_groups:
            n_neg = int((groups == n).sum())
            pair = (groups == p) | (groups == n)
            auc = binary_auc(scores[pair], groups[pair] == p) if min(n_pos, n_neg) >= min_n else None
            rows.append({"positive": p, "negative": n, "n_positive": n_pos, "n_negative": n_neg, "auc": auc})
    return rows


def group_table(scores: np.ndarray, target: np.ndarray, groups: np.ndarray, threshold: float) -> list[dict]:
    """Per subgroup: size, its target label(s), mean score, and the share flagged positive."""
    rows = []
    for g in np.unique(groups):
        m = groups == g
        rows.append({"group": g, "n": int(m.sum()), "target": sorted({int(t) for t in target[m]}),
                     "mean_score": float(scores[m].mean()), "flagged_positive": float((scores[m] >= threshold).mean())})
    return rows


def refuse_mixed_groups(groups, target, positive_class: int, where: str = "") -> None:
    """Subgroups must refine the target: a group with both positive and negative cases has no pairwise AUC."""
    positive, negative = target == positive_class, target != positive_class
    mixed = sorted({str(g) for g in groups[positive]} & {str(g) for g in groups[negative]})
    if mixed:
        raise DataError(f"subgroups {', '.join(mixed)}{where} hold both positive and negative cases; choose a group "
                        "field that refines the target (e.g. the diagnosis for a malignant/benign target)")


def analyse_center(scores, target, groups, threshold: float, positive_class: int = 1) -> dict:
    """Everything the report shows for one center, from per-image scores."""
    positive = [g for g in np.unique(groups[target == positive_class])]
    negative = [g for g in np.unique(groups[target != positive_class]) if g not in positive]
    refuse_mixed_groups(groups, target, positive_class)
    probs = np.stack([1 - scores, scores], 1) if positive_class == 1 else np.stack([scores, 1 - scores], 1)
    overall = domain_metrics(target, probs, threshold=threshold, positive_class=positive_class, n_bootstrap=0)
    return {"n": int(len(scores)), "threshold": float(threshold), "auc": overall["auc"],
            "sensitivity": overall["sensitivity"], "specificity": overall["specificity"],
            "groups": group_table(scores, target, groups, threshold),
            "pairs": pairwise_auc(scores, groups, positive, negative)}


def combine_runs(results: list[dict]) -> dict:
    """One center's results of several runs (seeds) as one: means of every figure, a pair's AUC the
    mean over the runs that could score it (None if none could), with the per-run values kept."""
    if not results or len({r["n"] for r in results}) != 1:
        raise DataError("runs to combine must score the same images of the center")

    def mean(values):
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    out = {k: mean([r[k] for r in results]) for k in ("threshold", "auc", "sensitivity", "specificity")}
    out |= {"n": results[0]["n"], "runs": [r.get("run") for r in results]}
    out["groups"] = [g | {k: mean([by[g["group"]][k] for by in ({h["group"]: h for h in r["groups"]} for r in results)])
                          for k in ("mean_score", "flagged_positive")} for g in results[0]["groups"]]
    out["pairs"] = []
    for i, pair in enumerate(results[0]["pairs"]):
        per_run = [r["pairs"][i]["auc"] for r in results]
        scored = [a for a in per_run if a is not None]
        out["pairs"].append(pair | {"auc": mean(per_run), "per_run": per_run,
                                    "runs_below_chance": sum(a < 0.5 for a in scored)})
    return out


def subgroup_markdown(title: str, center: str, result: dict, group_field: str, tta: str) -> str:
    runs = result.get("runs") or [None]
    scored = "scored once" if len(runs) == 1 else f"scored once by each of {len(runs)} runs, figures their means"
    out = [f"# Subgroups of {center} ({title})", "",
           f"{result['n']} images of the held-out center, {scored}, with TTA = {tta}; subgroups from "
           f"`{group_field}`. Overall AUC {result['auc']:.3f}, sensitivity {result['sensitivity']:.3f}, "
           f"specificity {result['specificity']:.3f} at the source-validation threshold "
           f"{result['threshold']:.3f}.", "",
           "| subgroup | target | n | mean score | flagged positive |", "|---|---|---|---|---|"]
    for g in result["groups"]:
        out.append(f"| {g['group']} | {'/'.join(map(str, g['target']))} | {g['n']} | {g['mean_score']:.3f} | "
                   f"{g['flagged_positive']:.3f} |")
    negatives = list(dict.fromkeys(p["negative"] for p in result["pairs"]))
    positives = list(dict.fromkeys(p["positive"] for p in result["pairs"]))
    auc = {(p["positive"], p["negative"]): p["auc"] for p in result["pairs"]}
    out += ["", "AUC of each positive subgroup (rows) against each negative subgroup (columns); "
            f"below 0.5 the model ranks that negative subgroup *above* the positive one; '-' = under "
            f"{MIN_GROUP} images.", "",
            "| positive \\ negative | " + " | ".join(negatives) + " |", "|---|" + "---|" * len(negatives)]
    for p in positives:
        cells = ["-" if auc[p, n] is None else f"{auc[p, n]:.3f}" for n in negatives]
        out.append(f"| {p} | " + " | ".join(cells) + " |")
    if len(runs) > 1:
        out += ["", "Runs ranking each pair backwards (AUC < 0.5), of those that scored it:", ""]
        out += [f"- {q['positive']} vs {q['negative']}: {q['runs_below_chance']} of "
                f"{sum(a is not None for a in q['per_run'])} (" + ", ".join("-" if a is None else f"{a:.3f}"
                                                                   for a in q["per_run"]) + ")"
                for q in result["pairs"]]
    return "\n".join(out) + "\n"


def plot_pairs(result: dict, title: str, path: Path) -> Path:
    from hybrid.reporting import new_figure, save_figure

    negatives = list(dict.fromkeys(p["negative"] for p in result["pairs"]))
    positives = list(dict.fromkeys(p["positive"] for p in result["pairs"]))
    grid = np.full((len(positives), len(negatives)), np.nan)
    for p in result["pairs"]:
        if p["auc"] is not None:
            grid[positives.index(p["positive"]), negatives.index(p["negative"])] = p["auc"]
    fig = new_figure((1.2 + 1.0 * len(negatives), 1.2 + 0.7 * len(positives)))
    ax = fig.add_subplot()
    image = ax.imshow(grid, cmap="RdBu", vmin=0.0, vmax=1.0)  # white = chance, red = ranked backwards
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, "-" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=9)
    ax.set_xticks(range(len(negatives)), negatives)
    ax.set_yticks(range(len(positives)), positives)
    ax.set_xlabel("negative subgroup")
    ax.set_ylabel("positive subgroup")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label="AUC")
    return save_figure(fig, path)


class Prepared(NamedTuple):
    """A run checked and ready to score: its network, data, TTA method and each chosen center's subgroups."""

    run_dir: Path
    cfg: Any
    model: Any
    ckpt: dict
    bundle: Any
    tta: str
    per_center: dict


def run_subgroups(run_dir: Path, group_field: str, centers=None, tta: str | None = None, root=None,
                  threads: int | None = None) -> dict[str, dict]:
    """Subgroup tables of each held-out center; `threads` torch threads while scoring (restored after)."""
    with torch_settings(threads):
        return score_subgroups(prepare_subgroups(run_dir, group_field, centers, tta, root), group_field, root)


def prepare_subgroups(run_dir: Path, group_field: str, centers, tta: str | None, root) -> Prepared:
    """Everything a run's subgroup analysis needs, every check made: nothing is scored yet."""
    from hybrid.domains import load_bundle
    from hybrid.rundir import load_run

    cfg, model, ckpt, backend = load_run(run_dir)
    backend.close()
    if not cfg.dataset.endswith(".npz"):
        raise DataError(f"{run_dir} was trained on {cfg.dataset}, which has no real centers; subgroup "
                        "analysis needs a run on a multi-center .npz")
    tta = tta or cfg.tta
    bundle = load_bundle(cfg, root)
    if bundle.n_classes != 2:
        raise DataError(f"{run_dir} predicts {bundle.n_classes} classes; subgroup analysis needs a binary target")
    held_out = list(bundle.test_domains)
    if not held_out:
        raise DataError(f"{run_dir} holds no center out; train with --test-centers to analyse one")
    chosen = held_out if centers is None else [bundle.center_names[i] for i in
                                              resolve_centers(centers, bundle.center_names, "--centers")]
    trained = [c for c in chosen if c not in held_out]
    if trained:
        raise DataError(f"centers {trained} were used for training; only held-out centers ({', '.join(held_out)}) "
                        "can be analysed")
    path = resolve_dataset_path(cfg.dataset, root)
    with np.load(path) as npz:
        if group_field not in npz.files:
            raise DataError(f"{path.name} has no array {group_field!r}; it has {sorted(npz.files)}")
        groups_all = np.asarray(npz[group_field])
        center_ids = np.asarray(npz[cfg.center_field])
        labels_all = np.asarray(npz[cfg.label_field])
        names_key = group_field.removesuffix("s") + "_names"
        names = [str(x) for x in npz[names_key]] if names_key in npz.files else None
    per_center = {}  # every center's subgroups checked before any image is scored
    for center in chosen:
        # held-out centers keep file order (see load_multicenter_npz), so the subgroup array lines up
        members = center_ids == bundle.center_names.index(center)
        if bundle.class_ids:  # a run on a class subset (--classes) scored only those images
            members &= np.isin(labels_all, bundle.class_ids)
        groups = groups_all[members]
        if len(groups) != len(bundle.test_domains[center].labels):
            raise DataError(f"{group_field!r} does not line up with the images of {center}")
        per_center[center] = np.array([names[int(g)] for g in groups]) if names is not None else groups
        refuse_mixed_groups(per_center[center].astype(str), np.asarray(bundle.test_domains[center].labels),
                            bundle.positive_class, f" of {group_field!r} in {center}")
    return Prepared(Path(run_dir), cfg, model, ckpt, bundle, tta, per_center)


def score_subgroups(prep: Prepared, group_field: str, root) -> dict[str, dict]:
    """Score a prepared run's held-out centers and write its subgroup tables beside the run."""
    from hybrid.domains import split_to_tensors
    from hybrid.inference import predict_probs
    from hybrid.rundir import file_part, write_json, write_text
    from hybrid.train import source_validation_threshold

    run_dir, cfg, model, ckpt, bundle, tta, per_center = prep
    channels = ckpt["in_channels"]
    if ckpt.get("threshold") is not None and tta == cfg.tta:
        threshold = ckpt["threshold"]  # the run's own, as its report and hybrid.evaluate use
    else:  # chosen again as training chose it: on source validation under the run's shifts, not the plain split
        threshold = source_validation_threshold(model, cfg, root, tta, bundle.positive_class)
    results = {}
    for center, groups in per_center.items():
        split = bundle.test_domains[center]
        x, y = split_to_tensors(split, cfg.input_size, channels)
        probs = predict_probs(model, x, tta, cfg.eval_batch_size, progress=True, desc=center)
        scores = probs[:, bundle.positive_class]
        result = analyse_center(scores, y.numpy(), groups.astype(str), threshold, bundle.positive_class)
        result |= {"run": str(run_dir), "center": center, "group_field": group_field, "tta": tta}
        stem = run_dir / f"subgroups_{file_part(center)}"
        write_json(result, stem.with_suffix(".json"))
        write_text(subgroup_markdown(str(run_dir), center, result, group_field, tta), stem.with_suffix(".md"))
        plot_pairs(result, f"{center}: AUC per subgroup pair ({'/'.join(run_dir.parts[-2:])}, TTA {tta})", stem.with_suffix(".png"))
        results[center] = result
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hybrid.subgroups", description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, action="append",
                        help="run directory of a multi-center training; repeat for the seeds of one method")
    parser.add_argument("--out", help="folder for the tables combined over several --run (required with more than one)")
    parser.add_argument("--group-field", default="labels", help="array of subgroups in the data file, e.g. labels (the diagnosis; the default)")
    parser.add_argument("--centers", help="held-out centers to analyse (default: all the run held out)")
    parser.add_argument("--tta", choices=tuple(TTA_METHODS), help="default: the run's setting")
    parser.add_argument("--data-root", help="folder holding the run's .npz (default: $HYBRID_DATA_ROOT)")
    parser.add_argument("--threads", type=positive_int, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    return run_cli(lambda: _run(args), verbose=False)


def _run(args) -> int:
    if len(args.run) > 1 and not args.out:
        raise DataError("several --run need --out, the folder for the tables combined over them")
    root = resolve_data_root(args.data_root)
    with torch_settings(args.threads):
        prepared = [prepare_subgroups(Path(run), args.group_field, args.centers, args.tta, root) for run in args.run]
        differ = [p.run_dir for p in prepared[1:] if set(p.per_center) != set(prepared[0].per_center)]
        if differ:  # found before any run is scored, not after the first one's tables are written
            raise DataError(f"{differ[0]} holds out other centers than {args.run[0]} "
                            f"({sorted(prepared[0].per_center)}); combine runs of one held-out center, or name it "
                            "with --centers")
        per_run = []
        for prep in prepared:
            per_run.append(score_subgroups(prep, args.group_field, root))
            for center, r in per_run[-1].items():
                print(_summary_line(center, r) + f"; see {prep.run_dir / f'subgroups_{file_part(center)}.md'}")
    if len(per_run) > 1:
        for center in per_run[0]:
            combined = combine_runs([results[center] for results in per_run])
            stem = write_combined(combined, center, Path(args.out), args.group_field, per_run[0][center]["tta"])
            print(f"{len(per_run)} runs: " + _summary_line(center, combined) + f"; see {stem.with_suffix('.md')}")
    return 0


def write_combined(result: dict, center: str, out: Path, group_field: str, tta: str) -> Path:
    from hybrid.rundir import file_part, write_json, write_text

    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"subgroups_{file_part(center)}"
    title = f"mean of {len(result['runs'])} runs"
    write_json(result | {"center": center, "group_field": group_field, "tta": tta}, stem.with_suffix(".json"))
    write_text(subgroup_markdown(title, center, result, group_field, tta), stem.with_suffix(".md"))
    plot_pairs(result, f"{center}: mean AUC per subgroup pair ({title}, TTA {tta})", stem.with_suffix(".png"))
    return stem


def _summary_line(center: str, r: dict) -> str:
    worst = min((p for p in r["pairs"] if p["auc"] is not None), key=lambda p: p["auc"], default=None)
    line = f"{center}: AUC {r['auc']:.3f} over {r['n']} images"
    if worst:
        line += f"; weakest pair {worst['positive']} vs {worst['negative']} AUC {worst['auc']:.3f}"
    return line


if __name__ == "__main__":
    sys.exit(main())
