"""Tables, figures and ``report.md`` for a run directory.

Every number shown here comes from the metrics dicts the evaluation produced (see
``hybrid/metrics.py``); nothing is typed by hand. Matplotlib is imported lazily, and each
figure draws on its own Agg canvas rather than pyplot's global state, so plotting works
headless, in threads, and without leaking open figures across a long sweep.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hybrid.metrics import roc_area, roc_points, summarize_domains
from hybrid.rundir import write_text

if TYPE_CHECKING:
    from torch import Tensor

    from hybrid.shifts import VirtualCenter

# Domains that are not unseen centers: the in-distribution test set.
SOURCE_DOMAINS = ("clean",)
TABLE_KEYS = ("auc", "sensitivity", "specificity", "balanced_accuracy")
_NAMES = {"auc": "AUC [95% CI]", "sensitivity": "Sens.", "specificity": "Spec.",
          "balanced_accuracy": "Bal. acc.", "accuracy": "Acc."}
_FIGURE_TITLES = {"roc": "ROC curves", "domain_auc": "AUC per domain",
                  "centers": "Example images per center", "training": "Training curves"}


def _num(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def fmt(x, digits: int = 3) -> str:
    """A number to ``digits`` decimals; ``nan``/``None``/missing become ``n/a``."""
    x = _num(x)
    return f"{x:.{digits}f}" if math.isfinite(x) else "n/a"


def counted(n: int, noun: str) -> str:
    """`1 center`, `3 centers`: a count with its noun, for captions."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def share_or_dash(value: float | None, spec: str = ".0%") -> str:
    """A recovered share as a percentage, or '–' where there was nothing to recover (None)."""
    return "–" if value is None else format(value, spec)


def _auc_interval(m: Mapping) -> tuple[float, float] | None:
    """The AUC's bootstrap interval, or None (--n-bootstrap 0, or undefined)."""
    low, high = _num(m.get("auc_ci_low")), _num(m.get("auc_ci_high"))
    return (low, high) if math.isfinite(low) and math.isfinite(high) else None


def _auc_cell(m: Mapping) -> str:
    interval = _auc_interval(m)
    return fmt(m.get("auc")) + (f" [{fmt(interval[0])}, {fmt(interval[1])}]" if interval else "")


def _unseen_names(per_domain: Mapping, unseen: Iterable[str] | None) -> list[str]:
    if unseen is not None:
        return [d for d in unseen if d in per_domain]
    return [d for d in per_domain if d not in SOURCE_DOMAINS]


def format_table(
    per_domain: Mapping[str, Mapping],
    summary: Mapping | None = None,
    keys: Sequence[str] = TABLE_KEYS,
    unseen: Iterable[str] | None = None,
) -> str:
    """Markdown table: one row per domain, then mean/std/worst over the unseen domains.

    ``summary`` is ``summarize_domains`` output; when ``None`` it is computed over
    ``unseen`` (default: every domain not in ``SOURCE_DOMAINS``).
    """
    names = _unseen_names(per_domain, unseen)
    if summary is None:
        summary = summarize_domains({d: per_domain[d] for d in names}, keys=keys)
    with_ci = any(_auc_interval(m) for m in per_domain.values())
    head = ["domain", "n"] + [("AUC" if k == "auc" and not with_ci else _NAMES.get(k, k)) for k in keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in per_domain.items():
        n = m.get("n")
        cells = [name, "n/a" if n is None else str(n)]
        cells += [_auc_cell(m) if k == "auc" else fmt(m.get(k)) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    n_unseen = f"{len(names)} unseen"
    for stat in ("mean", "std", "worst"):
        cells = [f"**{stat}**", n_unseen]
        for k in keys:
            s = summary.get(k, {})
            cell = fmt(s.get(stat))
            if stat == "worst" and s.get("worst_domain") is not None:
                cell += f" ({s['worst_domain']})"
            if stat == "mean" and 0 < s.get("n_domains", len(names)) < len(names):  # undefined on some centers
                cell += f" ({s['n_domains']} of {len(names)})"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- figures


def new_figure(figsize):
    """A figure on its own Agg canvas (no pyplot, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path) -> Path:
    """Save as PNG (creating the folder), trimmed to the drawn area."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")  # keeps outside legends whole
    return path


def palette(n: int) -> list:
    """``n`` distinct colours: tab10 (tab20's pale halves are hard to see on white)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def plot_roc_curves(
    roc_data: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path,
    positive_class: int = 1,
    title: str = "ROC per domain",
) -> Path:
    """One ROC curve per domain from ``name -> (y_true (N,), probs (N, C))``; saves a PNG.

    The legend AUC is the area under the drawn curve (``positive_class`` against the rest).
    """
    fig = new_figure((7.5, 5.5))
    ax = fig.add_subplot()
    styles = ("-", "--", ":", "-.")  # past 10 unseen curves colours repeat; dashes tell apart
    unseen = [d for d in roc_data if d not in SOURCE_DOMAINS]
    colours = dict(zip(unseen, palette(len(unseen))))
    for name, (y, probs) in roc_data.items():
        source = name not in colours
        colour = "black" if source else colours[name]
        style = "-" if source else styles[(unseen.index(name) // 10) % len(styles)]
        y = np.asarray(y).reshape(-1)
        if np.all(y == positive_class) or not np.any(y == positive_class):
            ax.plot([], [], color=colour, ls=style, label=f"{name} (n/a: one class)")
            continue
        fpr, tpr = roc_points(y, probs, positive_class)
        ax.plot(fpr, tpr, color=colour, ls=style, lw=2.2 if source else 1.4,
                label=f"{name} (AUC {roc_area(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.005), xlabel="False positive rate",
           ylabel="True positive rate", title=title, aspect="equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize="small", frameon=False)
    return save_figure(fig, path)


def plot_domain_auc(
    per_domain: Mapping[str, Mapping],
    path,
    title: str = "AUC per domain (95% bootstrap CI)",
    highlight: Iterable[str] = SOURCE_DOMAINS,
    threshold_line: float | None = None,
) -> Path:
    """Horizontal bars of per-domain AUC with CI whiskers; ``highlight`` domains in grey."""
    from matplotlib.patches import Patch

    names = list(per_domain)
    highlight = set(highlight)
    auc = np.array([_num(per_domain[d].get("auc")) for d in names])
    low = np.array([_num(per_domain[d].get("auc_ci_low")) for d in names])
    high = np.array([_num(per_domain[d].get("auc_ci_high")) for d in names])
    shown = np.nan_to_num(auc, nan=0.0)
    err = np.nan_to_num(np.vstack([auc - low, high - auc]), nan=0.0).clip(min=0)
    finite = np.concatenate([auc, low])[np.isfinite(np.concatenate([auc, low]))]
    left = min(0.5, math.floor((finite.min() - 0.03) * 20) / 20) if finite.size else 0.0

    fig = new_figure((7, 1.2 + 0.42 * len(names)))
    ax = fig.add_subplot()
    colours = ["0.55" if d in highlight else "tab:blue" for d in names]
    y = np.arange(len(names))
    ax.barh(y, shown, color=colours, height=0.65, xerr=err,
            error_kw={"ecolor": "black", "capsize": 3, "lw": 1})
    for yi, a in zip(y, auc):
        ax.text(left + 0.005, yi, fmt(a), va="center", ha="left", fontsize="small",
                color="white" if math.isfinite(a) else "black")
    handles = [Patch(color="tab:blue", label="unseen center")]
    if highlight & set(names):
        handles.insert(0, Patch(color="0.55", label="source / in-distribution"))
    if threshold_line is not None:
        handles.append(ax.axvline(threshold_line, color="tab:red", ls="--", lw=1.2,
                                  label=f"goal {threshold_line:g}"))
    ax.set(yticks=y, yticklabels=names, xlim=(left, 1.01), xlabel="AUC", title=title)
    ax.invert_yaxis()  # first domain on top, as in the table
    ax.grid(axis="x", alpha=0.3)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1),
              fontsize="small", frameon=False)
    return save_figure(fig, path)


_PANELS = (
    ("Losses", ("train_loss", "cls_loss", "domain_loss", "val_loss"), "loss"),
    ("Validation AUC", ("val_auc",), "AUC"),
    ("DANN", ("lambda", "domain_acc"), "value"),
)


def plot_training_curves(history: Sequence[Mapping], path, title: str = "Training") -> Path:
    """Small panels of losses, validation AUC, and DANN lambda / domain accuracy.

    Panels and series whose keys never appear are left out, so a run without a domain
    head (ERM) still gets its loss and AUC panels.
    """
    def series(key):
        pts = [(_num(r.get("epoch", i + 1)), _num(r.get(key))) for i, r in enumerate(history)]
        return [(x, v) for x, v in pts if math.isfinite(v)]

    from matplotlib.ticker import MaxNLocator

    panels = [(t, [(k, series(k)) for k in keys if series(k)], yl) for t, keys, yl in _PANELS]
    panels = [p for p in panels if p[1]]
    fig = new_figure((3.6 * max(len(panels), 1), 3.2))
    if not panels:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no training history", ha="center", va="center")
        ax.set_axis_off()
        return save_figure(fig, path)
    seconds = sum(_num(r.get("seconds")) for r in history if math.isfinite(_num(r.get("seconds"))))
    fig.suptitle(f"{title} ({len(history)} epochs, {seconds:.0f} s)" if seconds else title)
    for i, (name, lines, ylabel) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for key, pts in lines:
            xs, vs = zip(*pts)
            ax.plot(xs, vs, marker="o" if len(xs) < 30 else None, ms=3, label=key)
        ax.set(title=name, xlabel="epoch", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return save_figure(fig, path)


def save_center_grid(
    image: Tensor,
    centers: Sequence[VirtualCenter],
    path: str | Path,
    seed: int = 0,
    clean_title: str = "clean",
) -> Path:
    """PNG grid of one (C, H, W) image, clean and under every center, titled by center name."""
    import torch
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: plotting is optional
    from matplotlib.figure import Figure

    from hybrid.shifts import apply_center

    if image.dim() != 3:
        raise ValueError(f"save_center_grid expects one image (C, H, W), got shape {tuple(image.shape)}")
    batch = image.detach().cpu().float()[None]
    panels = [(clean_title, batch[0])]
    for center in centers:
        # A fresh generator per panel: each panel is reproducible whatever the center list.
        g = torch.Generator().manual_seed(seed)
        panels.append((center.name, apply_center(batch, center, g)[0]))

    ncols = min(len(panels), 5)
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(2.2 * ncols, 2.4 * nrows))
    FigureCanvasAgg(fig)
    for i, (title, img) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        if img.shape[0] == 1:
            ax.imshow(img[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0)
        else:
            ax.imshow(img.permute(1, 2, 0).numpy().clip(0.0, 1.0))
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


# ----------------------------------------------------------------------------- report.md


def _summary_sentence(domains: Mapping, unseen: list[str], summary: Mapping) -> str:
    auc = summary.get("auc", {})
    if not unseen or not math.isfinite(_num(auc.get("mean"))):
        return "No unseen domain has a defined AUC."
    values = {d: _num(domains[d].get("auc")) for d in unseen}
    values = {d: v for d, v in values.items() if math.isfinite(v)}
    best = max(values, key=values.get)
    plural = "s" if len(unseen) != 1 else ""
    text = (f"Across {len(unseen)} unseen domain{plural} the mean AUC is {fmt(auc['mean'])} "
            f"(std {fmt(auc.get('std'))}); the worst is **{auc.get('worst_domain')}** at "
            f"{fmt(auc.get('worst'))} and the best {best} at {fmt(values[best])}, "
            f"a spread of {fmt(values[best] - _num(auc.get('worst')))}.")
    for source in SOURCE_DOMAINS:
        clean = _num(domains.get(source, {}).get("auc"))
        if math.isfinite(clean):
            text += (f" In-distribution ({source}) AUC is {fmt(clean)}, so the worst unseen "
                     f"domain loses {fmt(clean - _num(auc.get('worst')))}.")
    return text


def write_markdown_report(report: Mapping, path) -> Path:
    """Write a human-readable ``report.md`` from the run's report dict; returns its path.

    Figure links are relative to the report's folder and only written for files that exist.
    """
    path = Path(path)
    run, domains = report.get("run", {}), report.get("domains", {})
    unseen = _unseen_names(domains, report.get("unseen"))
    summary = report.get("summary") or summarize_domains({d: domains[d] for d in unseen})
    out = [f"# {run.get('name', 'run')}", ""]
    facts = [f"{k}: {run[k]}" for k in ("dataset", "backend", "created") if run.get(k) is not None]
    if facts:
        out += [" · ".join(facts), ""]
    out += [_summary_sentence(domains, unseen, summary), "", "## Per-domain results", "",
            format_table(domains, summary, unseen=unseen), ""]

    threshold = report.get("threshold")
    note = (f"Decision threshold fixed on source validation: {fmt(threshold)}"
            if threshold is not None else "Predictions by argmax (no decision threshold)")
    if report.get("positive_class") is not None:
        note += f" (positive class {report['positive_class']})"
    if report.get("tta"):
        note += f"; test-time adaptation: {report['tta']}"
    out += [note + ".", ""]
    if report.get("parameters"):
        counts = report["parameters"]
        out += [f"Trainable parameters: {counts['total']:,}, of which {counts['layer']} in the quantum layer's slot "
                f"and {counts['head']:,} in the head.", ""]
    asked, trained = (report.get("config") or {}).get("algorithm"), run.get("algorithm")
    if asked and trained and asked != trained:
        out += [f"Trained with **{trained}**: the config asks for {asked}, which needs at least two training domains "
                "(virtual or real centers), and this run had one.", ""]
    if report.get("source_val"):
        sv = report["source_val"]
        adapted = f" with test-time adaptation {report['tta']}" if report.get("tta", "none") != "none" else ""
        # the epoch log's "val AUC" is without TTA: say which this is, or the two look inconsistent
        out += [f"Source validation{adapted}: AUC {_auc_cell(sv)}, balanced accuracy "
                f"{fmt(sv.get('balanced_accuracy'))}.", ""]

    figures = [(k, rel) for k, rel in (report.get("figures") or {}).items()
               if rel and (path.parent / rel).is_file()]
    if figures:
        out += ["## Figures", ""]
        for key, rel in figures:
            out += [f"![{_FIGURE_TITLES.get(key, key)}]({rel})", ""]

    out += ["## Run", ""]
    for key, label, spec in (("seconds", "wall time", "{:.0f} s"),
                            ("peak_memory_mb", "peak memory", "{:.0f} MB"),
                            ("best_epoch", "best epoch", "{}")):
        if run.get(key) is not None:
            out.append(f"- {label}: {spec.format(run[key])}")
    out += ["", "<details><summary>config</summary>", "", "```json",
            json.dumps(report.get("config", {}), indent=2, default=str), "```", "", "</details>", ""]
    if run.get("command"):
        out += ["Command:", "", "```bash", run["command"], "```", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text("\n".join(out), path)
    return path
