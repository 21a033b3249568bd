"""Ablation report of a study directory: `python -m hybrid.report RUNS_DIR`.

    python -m hybrid.experiment --preset ablation --seeds 3 --out runs/ablation
    python -m hybrid.report runs/ablation               # runs/ablation/report.md, report.json, figures/
    python -m hybrid.report runs/ablation --no-models   # tables and bar chart only, no checkpoint reloaded

Reads every RUNS_DIR/<variant>/seed<k>/report.json written by `hybrid.train`. Per variant:
mean ± std over seeds of the mean unseen-center AUC, worst-center AUC, sensitivity,
specificity and the AUC spread across centers, with and without test-time adaptation.
Each variant is paired with erm by (seed, center) in a Wilcoxon signed-rank test, and by
seed alone (stricter: centers within a seed share one model). The ROC and feature figures
reload each variant's lowest-seed checkpoint and recompute on the test data.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
from pathlib import Path

import numpy as np

from hybrid.reporting import _colours, _figure, _fmt, _save  # one figure style for the project
from hybrid.study_results import (ALPHA, BASELINE, MIN_PAIRS, SETTINGS, STATS, Run, by_seed, compare,
                                  domain_groups, load_runs, mean_auc_by_center, mean_std, variant_table,
                                  variants_of)

log = logging.getLogger("hybrid.report")

FEATURE_SAMPLES = 300  # test images per domain in the feature projection
FEATURE_DOMAINS = 5  # clean (or the source test split) plus the hardest unseen centers
DANN_VARIANTS = ("dann", "full", "dann_real")  # compared with erm in the feature figure


# ----------------------------------------------------------------------------- figures


def plot_center_auc(runs: list[Run], names: list[str], path: Path) -> Path:
    """Grouped bars: AUC per center (mean over seeds, std whiskers), one colour per variant."""
    names = ["clean", *names] if all("clean" in r.report["domains"] for r in runs) else names
    variants = variants_of(runs)
    colours = _colours(len(variants))
    x = np.arange(len(names))
    width = 0.8 / len(variants)
    n_seeds = len({r.seed for r in runs})
    fig = _figure((max(8.0, 0.22 * len(names) * len(variants) + 3), 7.5))
    lowest = 1.0
    for i, (setting, title) in enumerate(SETTINGS.items()):
        ax = fig.add_subplot(2, 1, i + 1)
        for j, v in enumerate(variants):
            stats = [mean_std([r.domains(setting)[c].get("auc") for r in runs
                               if r.variant == v and r.domains(setting) and c in r.domains(setting)]) for c in names]
            means = np.array([s["mean"] for s in stats])
            stds = np.array([s["std"] for s in stats])
            if np.isfinite(means).any():
                lowest = min(lowest, np.nanmin(means - np.nan_to_num(stds)))
            ax.bar(x + (j - (len(variants) - 1) / 2) * width, np.nan_to_num(means), width,
                   yerr=np.nan_to_num(stds) if np.isfinite(stds).any() else None,
                   color=colours[j], label=v, error_kw={"lw": 0.8, "capsize": 1.5})
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize="small")
        ax.set(ylabel="AUC", title=f"AUC per center {title} (mean ± std over {n_seeds} seeds)"
               if n_seeds > 1 else f"AUC per center {title} (1 seed)")
        ax.grid(axis="y", alpha=0.3)
        if i == 0:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small", frameon=False)
    for ax in fig.axes:
        ax.set_ylim(max(0.0, math.floor((lowest - 0.02) * 20) / 20), 1.0)
    return _save(fig, path)


class ModelData:
    """Reloads a run's checkpoint and its evaluation domains (built once per dataset and seed)."""

    def __init__(self, data_root: str | None = None):
        self.data_root = data_root
        self._domains = {}

    def __call__(self, run: Run):
        from hybrid.data import resolve_data_root
        from hybrid.evaluate import load_run
        from hybrid.train import build_eval_domains, load_bundle

        cfg, model, ckpt, _ = load_run(run.path)
        key = (cfg.dataset, cfg.size, cfg.input_size, cfg.seed, cfg.label_field, cfg.center_field,
               cfg.train_centers, cfg.test_centers, ckpt["in_channels"])
        if key not in self._domains:
            bundle = load_bundle(cfg, resolve_data_root(self.data_root or cfg.data_root))
            self._domains[key] = build_eval_domains(cfg, bundle, ckpt["in_channels"])
        return cfg, model, self._domains[key]


def roc_on_hardest(runs: list[Run], names: list[str], path: Path, models: ModelData) -> dict:
    """ROC of each variant's lowest seed on the center with the lowest mean AUC (TTA as trained)."""
    from hybrid.evaluate import predict_probs
    from hybrid.metrics import domain_metrics
    from hybrid.reporting import plot_roc_curves

    auc = mean_auc_by_center(runs, names)
    hardest = min((c for c in auc if math.isfinite(auc[c])), key=auc.get)
    curves, check = {}, {}
    for variant in variants_of(runs):
        run = min((r for r in runs if r.variant == variant), key=lambda r: r.seed)
        cfg, model, domains = models(run)
        x, y = domains[hardest]
        probs = predict_probs(model, x, run.report["tta"], cfg.eval_batch_size)  # the evaluation's TTA
        curves[variant] = (y.numpy(), probs)
        recomputed = domain_metrics(y.numpy(), probs, positive_class=run.report["positive_class"], n_bootstrap=0)["auc"]
        check[variant] = {"seed": run.seed, "recomputed_auc": recomputed,
                          "reported_auc": run.report["domains"][hardest]["auc"]}
        if abs(recomputed - check[variant]["reported_auc"]) > 1e-3:
            log.warning("%s: recomputed AUC %.4f on %s differs from the run's %.4f", variant, recomputed,
                        hardest, check[variant]["reported_auc"])
    plot_roc_curves(curves, path, positive_class=runs[0].report["positive_class"],
                    title=f"ROC on the hardest center, {hardest} (lowest seed, TTA {runs[0].report.get('tta')})")
    return {"center": hardest, "mean_auc": auc[hardest], "runs": check}


def center_invariance(features: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """5-fold accuracy of a linear center classifier, and chance (majority) level.

    Shrinkage LDA rather than logistic regression: closed form, so milliseconds instead of
    minutes of iterations on a busy CPU, and as linear.
    """
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    clf = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    acc = cross_val_score(clf, features, labels, cv=cv).mean()
    return float(acc), float(np.bincount(labels).max() / len(labels))


def feature_study(runs: list[Run], names: list[str], path: Path, models: ModelData) -> dict:
    """Encoder features (eval mode, no TTA) of the same test images under several centers.

    Every variant gets the center-classifier accuracy (lower = more invariant); erm and the
    DANN variants get a PCA panel.
    """
    import torch
    from sklearn.decomposition import PCA

    auc = mean_auc_by_center(runs, names)
    real = [c for c in names if c.startswith("real:")]
    virtual = sorted((c for c in names if c not in real and math.isfinite(auc[c])), key=auc.get)
    chosen = ["clean", *real, *virtual][:max(FEATURE_DOMAINS, len(real) + 1)]
    out, panels = {}, {}
    for variant in variants_of(runs):
        run = min((r for r in runs if r.variant == variant), key=lambda r: r.seed)
        cfg, model, domains = models(run)
        chosen = [c for c in chosen if c in domains]
        feats, labels = [], []
        with torch.no_grad():
            for k, c in enumerate(chosen):
                x = domains[c][0]
                idx = np.sort(np.random.default_rng(0).permutation(len(x))[:FEATURE_SAMPLES])
                feats.append(torch.cat([model.features(x[idx][i:i + 256]) for i in range(0, len(idx), 256)]).numpy())
                labels.append(np.full(len(idx), k))
        f, lab = np.concatenate(feats), np.concatenate(labels)
        acc, chance = center_invariance(f, lab)
        out[variant] = {"seed": run.seed, "center_accuracy": acc, "chance": chance}
        if variant == BASELINE or variant in DANN_VARIANTS:
            panels[variant] = (PCA(2, random_state=0).fit_transform(f), lab, acc, chance, run.seed)
    if BASELINE in panels and len(panels) > 1:
        fig = _figure((4.2 * len(panels) + 1.5, 4.4))
        colours = _colours(len(chosen))
        for i, (variant, (z, lab, acc, chance, seed)) in enumerate(panels.items()):
            ax = fig.add_subplot(1, len(panels), i + 1)
            for k, c in enumerate(chosen):
                ax.scatter(*z[lab == k].T, s=5, alpha=0.5, color=colours[k], label=c)
            ax.set(title=f"{variant} (seed {seed})\ncenter classifier acc. {acc:.2f} (chance {chance:.2f})",
                   xlabel="PC 1", ylabel="PC 2")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small", frameon=False, markerscale=3)
        fig.suptitle("Encoder features by center (PCA; lower center accuracy = more domain-invariant)")
        _save(fig, path)
    return {"domains": chosen, "samples_per_domain": FEATURE_SAMPLES, "variants": out}


# ----------------------------------------------------------------------------- report


def _pm(s: dict) -> str:
    return _fmt(s["mean"]) + (f" ± {_fmt(s['std'])}" if math.isfinite(s["std"]) else "")


def _p(p) -> str:
    return "n/a" if p is None else (f"{p:.2g}" if p < 0.001 else f"{p:.3f}")


def _components(cfg: dict) -> str:
    parts = [name for name, on in (("shift", cfg.get("shift")), ("DANN", cfg.get("dann")),
                                   ("quantum", cfg.get("quantum"))) if on]
    return " + ".join(parts) or "none"


def _table(table: dict, runs: list[Run]) -> list[str]:
    configs = {r.variant: r.report.get("config", {}) for r in runs}
    head = ["variant", "components", "seeds", *STATS.values()]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v, stats in table.items():
        seeds = stats["auc_mean"]["n"]
        lines.append("| " + " | ".join([v, _components(configs[v]), str(seeds), *(_pm(stats[k]) for k in STATS)]) + " |")
    return lines


# (with the quantum layer, the same variant without it)
QUANTUM_PAIRS = (("quantum", "shift"), ("full", "dann"))


def _comparison_lines(rows: list[dict], label: str) -> list[str]:
    """Long-form table; per-seed rows only where the seeds allow a test (report.json has them all)."""
    rows = [r for r in rows if r["unit"] != "seed" or r["p"] is not None]
    head = [label, "metric", "pairs", "mean difference", "higher / lower", "p (Wilcoxon)", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join([row["name"], f"{row['metric']} (per {row['unit']})", str(row["n"]),
                                        f"{row['mean_diff']:+.4f}" if math.isfinite(row["mean_diff"]) else "n/a",
                                        f"{row['higher']} / {row['lower']}", _p(row["p"]), row["verdict"]]) + " |")
    return lines


def _flatten(name: str, comparison: dict) -> list[dict]:
    return [{"name": name, "metric": metric} | result for metric, result in comparison.items()]


def _answer(group: dict, primary: str, tta: str) -> list[str]:
    """One sentence per variant (does it beat erm on AUC?) and one on TTA."""
    lines = []
    for row in group["comparisons"][primary]:
        if row["metric"] != "AUC":
            continue
        per_seed = next(r for r in group["comparisons"][primary]
                        if r["name"] == row["name"] and r["metric"] == STATS["auc_mean"])
        lines.append(f"- **{row['name']}** vs {BASELINE} ({SETTINGS[primary]}): AUC difference "
                     f"{row['mean_diff']:+.4f} on average over {row['n']} (seed, center) pairs, "
                     f"p = {_p(row['p'])}: {row['verdict']}; per-seed test: {per_seed['verdict']}"
                     + (f" (p = {_p(per_seed['p'])})" if per_seed["p"] is not None else "") + ".")
    effects = [r for r in group["tta_effect"] if r["metric"] == "AUC"]
    if effects:
        lines.append(f"- **TTA ({tta})** vs none, AUC over (seed, center) pairs: " + "; ".join(
            f"{r['name']} {r['mean_diff']:+.4f} (p = {_p(r['p'])}, {r['verdict']})" for r in effects) + ".")
    if lines:
        lines += ["", "(Seed, center) pairs within one seed share a trained model, so their p-value speaks for "
                  "these models rather than for the training recipe; the per-seed test speaks for the recipe "
                  f"and needs at least {MIN_PAIRS} seeds to reach p < {ALPHA}."]
    return lines


def _data_lines(report: dict) -> list[str]:
    data, pos = report.get("data") or {}, report.get("positive_class", 1)
    names = data.get("class_names") or []
    label = names[pos] if pos < len(names) else f"class {pos}"
    lines = [f"| part | n | share {label} | centers |", "|---|---|---|---|"]
    parts = list((data.get("splits") or {}).items()) + list((data.get("test_domains") or {}).items())
    for name, part in parts:
        counts = part.get("class_counts") or []
        share = counts[pos] / part["n"] if part.get("n") and pos < len(counts) else math.nan
        centers = ", ".join(f"{k} {v}" for k, v in (part.get("centers") or {}).items()) or "-"
        lines.append(f"| {name} | {part.get('n')} | {_fmt(share)} | {centers} |")
    return lines


def build_report(runs_dir: Path, *, models: bool = True, data_root: str | None = None, threads: int = 1,
                 evaluation: str | None = None, out_dir: Path | None = None) -> dict:
    """Write report.md, report.json and figures/ into `out_dir`; returns the report dict.

    `out_dir` defaults to `runs_dir`, or to `runs_dir/report_<evaluation>` when `evaluation`
    names the evaluation files that replace the runs' with-TTA results (see `load_runs`).

    `threads` torch threads for the reloaded models: the work is small, and on a CPU shared
    with training runs two threads were measured 20x slower than one (oversubscription).
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        runs_dir = Path(runs_dir)
        out_dir = Path(out_dir) if out_dir else runs_dir / f"report_{evaluation}" if evaluation else runs_dir
        return _build_report(runs_dir, models, data_root, evaluation, out_dir)
    finally:
        torch.set_num_threads(previous)


def _build_report(runs_dir: Path, models: bool, data_root: str | None, evaluation: str | None,
                  out_dir: Path) -> dict:
    study, runs = load_runs(runs_dir, evaluation)
    if not runs:
        raise FileNotFoundError(f"no finished runs (*/seed*/report.json) under {runs_dir}; "
                                "run `python -m hybrid.experiment --out RUNS_DIR` first")
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for old in fig_dir.glob("*.png"):
        old.unlink()  # a figure that cannot be drawn this time must not survive from an older report
    variants = variants_of(runs)
    groups = domain_groups(runs)
    primary = "tta" if any(r.domains("tta") for r in runs) else "no_tta"
    result = {"runs_dir": str(runs_dir), "study": study, "variants": variants, "primary_setting": primary,
              "evaluation": evaluation, "out_dir": str(out_dir), "groups": {}, "figures": {}, "skipped": []}
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
        g["quantum_effect"] = {setting: [row for with_q, without in QUANTUM_PAIRS
                                         if by_seed(runs, with_q) and by_seed(runs, without)
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
    result["failures"] = _open_failures(runs_dir)
    result["runs"] = [{"variant": r.variant, "seed": r.seed, "best_epoch": r.report["run"].get("best_epoch"),
                       "epochs": r.report.get("config", {}).get("epochs"),
                       "minutes": (r.report["run"].get("seconds") or math.nan) / 60,
                       "threads": r.report["run"].get("threads")} for r in runs]
    (out_dir / "report.json").write_text(json.dumps(_clean(result), indent=2) + "\n")
    (out_dir / "report.md").write_text(_markdown(result, runs))
    return result


def _open_failures(runs_dir: Path) -> list[dict]:
    """Failures whose run has not finished since (a retried run drops out)."""
    path = runs_dir / "failures.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    latest = {(r["variant"], r["seed"]): r for r in rows}
    return [r for (v, s), r in latest.items() if not (runs_dir / v / f"seed{s}" / "report.json").is_file()]


def _clean(obj):
    """JSON without NaN: undefined numbers become null."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def shared_settings(runs: list[Run]) -> dict:
    """Config values every run has and today's TrainConfig defaults do not (seed and threads aside).

    Read from the runs' own configs, so a study made before a default changed still says what
    it ran with.
    """
    from hybrid.config import TrainConfig

    configs = [TrainConfig.from_dict(r.report["config"]).to_dict() for r in runs if r.report.get("config")]
    if not configs:
        return {}
    defaults = TrainConfig().to_dict()
    return {k: v for k, v in configs[0].items()
            if k not in ("seed", "threads") and v != defaults[k] and all(c[k] == v for c in configs)}


def _markdown(result: dict, runs: list[Run]) -> str:
    study, primary = result["study"], result["primary_setting"]
    first = runs[0].report
    tta = first.get("tta") or "none"
    out = [f"# Ablation study: {study.get('preset', Path(result['runs_dir']).name)} on {first['run'].get('dataset')}",
           ""]
    if study.get("description"):
        out += [study["description"] + ".", ""]
    shared = shared_settings(runs)
    if result.get("evaluation"):
        shared.pop("tta", None)  # the runs' own TTA is not the one reported with TTA here
    if shared:
        listed = ", ".join(f"{k}={v}" for k, v in shared.items())
        out += [f"Settings shared by every run (all others at the TrainConfig defaults): {listed}.", ""]
    out += [f"- {note}" for note in study.get("notes", [])] + [""]
    source = ("the runs' report.json files" if not result.get("evaluation") else
              f"the runs' eval_{result['evaluation']}.json files (with TTA) and report.json files (without)")
    out += [f"Variants: {', '.join(result['variants'])}; {len(runs)} finished runs. Every number below is "
            f"computed from {source}. TTA = {tta} at test time; the decision threshold is "
            "fixed on source validation data.", ""]
    for title, g in result["groups"].items():
        out += [f"## {title[0].upper() + title[1:]}", "", f"Centers ({len(g['domains'])}): {', '.join(g['domains'])}.", ""]
        answer = _answer(g, primary, tta)
        if answer:
            out += [f"**Does each component help?** Paired comparisons (Wilcoxon signed-rank):", "", *answer, ""]
        for setting, label in SETTINGS.items():
            if g["tables"][setting]:
                out += [f"### {label[0].upper() + label[1:]} ({tta if setting == 'tta' else 'none'})", "",
                        "Mean ± std over seeds of per-run statistics across the centers above.", "",
                        *_table(g["tables"][setting], runs), ""]
        for setting, label in SETTINGS.items():
            if g["comparisons"][setting]:
                out += [f"### Paired comparison with {BASELINE}, {label}", "",
                        *_comparison_lines(g["comparisons"][setting], "variant"), ""]
        if g["tta_effect"]:
            out += [f"### TTA ({tta}) versus no TTA, per variant", "", *_comparison_lines(g["tta_effect"], "variant"), ""]
        if any(g["quantum_effect"].values()):
            out += ["### Does the quantum layer help? Variants that differ only by the layer", ""]
            for setting, label in SETTINGS.items():
                if g["quantum_effect"][setting]:
                    out += [f"{label[0].upper() + label[1:]}:", "",
                            *_comparison_lines(g["quantum_effect"][setting], "comparison"), ""]
    out += [f"A difference with p ≥ {ALPHA} is not significant; 'too few pairs' means the test cannot reach "
            f"p < {ALPHA} with that many non-zero differences (a Wilcoxon test needs at least {MIN_PAIRS}).", ""]
    if result.get("hardest_center"):
        h = result["hardest_center"]
        out += ["## Hardest center", "", f"{h['center']} has the lowest mean AUC over all runs "
                f"({_fmt(h['mean_auc'])}); its ROC curves (lowest seed of each variant) were recomputed from the "
                "checkpoints and agree with the stored AUCs: " + ", ".join(
                    f"{v} {_fmt(c['recomputed_auc'])} (stored {_fmt(c['reported_auc'])})" for v, c in h["runs"].items())
                + ".", ""]
    inv = result.get("invariance")
    if inv:
        out += ["## Domain invariance of the encoder features", "",
                f"Accuracy of a linear classifier (shrinkage LDA, 5-fold cross-validation) that tells apart {len(inv['domains'])} "
                f"centers ({', '.join(inv['domains'])}) from encoder features of {inv['samples_per_domain']} test "
                "images per center (the same images under every virtual center; eval mode, no TTA); lower is "
                "more invariant.", "",
                "| variant | seed | center accuracy | chance |", "|---|---|---|---|"]
        out += [f"| {v} | {x['seed']} | {_fmt(x['center_accuracy'])} | {_fmt(x['chance'])} |"
                for v, x in inv["variants"].items()] + [""]
    if result["figures"]:
        out += ["## Figures", ""] + [f"![{k}]({rel})\n" for k, rel in result["figures"].items()]
    out += ["## Data", "", *_data_lines(first), ""]
    machine = study.get("machine") or {}
    out += ["## Runs", ""]
    if machine:
        out += [f"Machine: {machine.get('cpu')}, {machine.get('cores')} cores, {machine.get('memory')} RAM, "
                f"GPU: {machine.get('gpu') or 'none'}; torch {machine.get('torch')}, Python {machine.get('python')}.", ""]
    for inv_ in study.get("invocations", []):
        out += [f"- {inv_.get('started')} (workers {inv_.get('workers')}): `{inv_.get('command')}`"]
    out += ["", "| variant | seed | epochs | best epoch | minutes | threads |", "|---|---|---|---|---|---|"]
    out += [f"| {r['variant']} | {r['seed']} | {r['epochs']} | {r['best_epoch']} | {_fmt(r['minutes'], 1)} | "
            f"{r['threads']} |" for r in result["runs"]] + [""]
    if result["failures"]:
        out += ["## Failed runs (not finished)", ""] + [f"- {f['variant']}/seed{f['seed']}: {f.get('error')}"
                                                        for f in result["failures"]] + [""]
    if result["skipped"]:
        out += ["## Left out", ""] + [f"- {s}" for s in result["skipped"]] + [""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hybrid.report", description=__doc__.split("\n")[0])
    parser.add_argument("runs_dir", help="study directory written by hybrid.experiment")
    parser.add_argument("--no-models", action="store_true", help="skip the figures that reload checkpoints")
    parser.add_argument("--data-root", help="folder holding the data (default: the runs' or $HYBRID_DATA_ROOT)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the reloaded models")
    parser.add_argument("--evaluation", help="NAME of eval_NAME.json files in every run (hybrid.evaluate --name) "
                                             "whose results replace the with-TTA ones, e.g. another TTA method")
    parser.add_argument("--out", help="folder for the report (default: RUNS_DIR, or RUNS_DIR/report_NAME)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        result = build_report(Path(args.runs_dir), models=not args.no_models, data_root=args.data_root,
                              threads=args.threads, evaluation=args.evaluation, out_dir=args.out)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{Path(result['out_dir']) / 'report.md'}: {len(result['variants'])} variants, "
          f"{len(result['runs'])} runs, figures: {', '.join(result['figures']) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
