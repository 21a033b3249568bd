"""Figures of the ablation report (`hybrid.studies.report`): AUC per center, ROC on the hardest
center, and how well a linear classifier tells the centers apart from encoder features.

The ROC and feature figures reload each variant's lowest-seed checkpoint (`ModelData`) and
recompute on the test data; the bar chart needs only the runs' report.json files.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from hybrid.reporting import new_figure, palette, save_figure  # one figure style for the project
from hybrid.studies.results import BASELINE, SETTINGS, Run, mean_auc_by_center, mean_std, variants_of

log = logging.getLogger("hybrid.report")

FEATURE_SAMPLES = 300  # test images per domain in the feature projection
FEATURE_DOMAINS = 5  # clean (or the source test split) plus the hardest unseen centers
DANN_VARIANTS = ("dann", "full", "dann_real")  # compared with erm in the feature figure


def plot_center_auc(runs: list[Run], names: list[str], path: Path) -> Path:
    """Grouped bars: AUC per center (mean over seeds, std whiskers), one colour per variant."""
    names = ["clean", *names] if all("clean" in r.report["domains"] for r in runs) else names
    variants = variants_of(runs)
    colours = palette(len(variants))
    x = np.arange(len(names))
    width = 0.8 / len(variants)
    n_seeds = len({r.seed for r in runs})
    fig = new_figure((max(8.0, 0.22 * len(names) * len(variants) + 3), 7.5))
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
    return save_figure(fig, path)


def _progress(items, what: str):
    """A progress bar over the variants whose checkpoint is reloaded (seconds each); shown on a terminal only."""
    from tqdm.auto import tqdm

    items = list(items)
    return tqdm(items, desc=what, unit="variant", total=len(items), disable=None, leave=False)


class ModelData:
    """Reloads a run's checkpoint and its evaluation domains (built once per dataset and seed)."""

    def __init__(self, data_root: str | None = None):
        self.data_root = data_root
        self._domains = {}

    def __call__(self, run: Run):
        from hybrid.domains import run_domains
        from hybrid.rundir import load_run

        cfg, model, ckpt, _ = load_run(run.path)
        key = (cfg.dataset, cfg.size, cfg.input_size, cfg.seed, cfg.label_field, cfg.center_field,
               cfg.train_centers, cfg.test_centers, ckpt["in_channels"])
        if key not in self._domains:
            self._domains[key] = run_domains(cfg, ckpt["in_channels"], self.data_root)
        return cfg, model, self._domains[key]


def roc_on_hardest(runs: list[Run], names: list[str], path: Path, models: ModelData) -> dict:
    """ROC of each variant's lowest seed on the center with the lowest mean AUC (TTA as trained), on the images
    its report scored (the first --eval-max-samples of them where the run set it)."""
    from hybrid.domains import first_samples
    from hybrid.inference import predict_probs
    from hybrid.metrics import domain_metrics
    from hybrid.reporting import plot_roc_curves

    auc = mean_auc_by_center(runs, names)
    hardest = min((c for c in auc if math.isfinite(auc[c])), key=auc.get)
    curves, check = {}, {}
    for variant in _progress(variants_of(runs), f"ROC on {hardest}"):
        run = min((r for r in runs if r.variant == variant), key=lambda r: r.seed)
        cfg, model, domains = models(run)
        x, y = first_samples({hardest: domains[hardest]}, cfg.eval_max_samples)[hardest]
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
    lowest = {v: min((r for r in runs if r.variant == v), key=lambda r: r.seed) for v in variants_of(runs)}
    loaded = {v: models(run) for v, run in _progress(lowest.items(), "reloading models")}
    # the domains every variant has: each variant's accuracy (and chance level) is over the same centers
    chosen = [c for c in chosen if all(c in domains for _, _, domains in loaded.values())]
    out, panels = {}, {}
    for variant, run in _progress(lowest.items(), "encoder features"):
        cfg, model, domains = loaded[variant]
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
        fig = new_figure((4.2 * len(panels) + 1.5, 4.4))
        colours = palette(len(chosen))
        for i, (variant, (z, lab, acc, chance, seed)) in enumerate(panels.items()):
            ax = fig.add_subplot(1, len(panels), i + 1)
            for k, c in enumerate(chosen):
                ax.scatter(*z[lab == k].T, s=5, alpha=0.5, color=colours[k], label=c)
            ax.set(title=f"{variant} (seed {seed})\ncenter classifier acc. {acc:.2f} (chance {chance:.2f})",
                   xlabel="PC 1", ylabel="PC 2")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small", frameon=False, markerscale=3)
        fig.suptitle("Encoder features by center (PCA; lower center accuracy = more domain-invariant)")
        save_figure(fig, path)
    return {"domains": chosen, "samples_per_domain": FEATURE_SAMPLES, "variants": out}
