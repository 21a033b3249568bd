"""Shot sweep: unseen-center AUC against shots per backend, for trained runs side by side.

    python -m hybrid.bench_backends --run runs/quantum/dressed/seed0 \\
        --compare-run runs/quantum/dressed_noise_aware/seed0 \\
        --shot-sweep 32,128,512,1024,2048,exact --backends aer,aer_noisy:fake_manila --samples 200

Each backend of `--backends` runs at each shot count (`exact` is the torch engine, the reference
every run has); every run sees the same images. Writes `shot_sweep.json`, `shot_sweep.md` and
`shot_sweep.png` (one panel per run: AUC with its 95% bootstrap interval against shots, one line
per backend, the exact AUC dashed). With two runs (exact-trained first, noise-aware second) the
table also says how much of the AUC the first loses on each backend (against its own exact AUC)
the second avoids. One draw of 1,024 shots moves the AUC by several thousandths
(results/quantum_heads/noise_sources): `--draws K` runs every point K times (simulator seeds
0..K-1, the same images) and reports the mean and the spread over draws.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from hybrid.config import CENTER_FIELDS
from hybrid.reporting import counted
from hybrid.studies.runs import seed_of

EXACT = "exact"
DEFAULT_SHOTS = "32,128,512,1024,2048,exact"
DEFAULT_SWEEP_BACKENDS = "aer,aer_noisy:fake_manila"


def parse_shots(text: str) -> list[int | None]:
    """`32,128,exact` -> [32, 128, None]; None is the exact engine."""
    out: list[int | None] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part == EXACT:
            out.append(None)
            continue
        if not part.isdigit() or int(part) < 1:
            raise ValueError(f"--shot-sweep takes shot counts (whole numbers >= 1) and 'exact', got {part!r}")
        out.append(int(part))
    if not out:
        raise ValueError("--shot-sweep needs at least one shot count")
    return out


def sweep_specs(bases: list[str], shots: list[int | None], draws: int = 1) -> list[tuple[str, str, int]]:
    """(backend spec, base backend, shots) for every base at every finite shot count; with several `draws`, once
    per simulator seed 0, 1, ... (the same images, new shots)."""
    if not isinstance(draws, int) or draws < 1:
        raise ValueError(f"--draws must be a whole number >= 1, got {draws!r}")
    seeded = [base for base in bases if "seed=" in base]
    if draws > 1 and seeded:
        raise ValueError(f"--draws sets each draw's simulator seed; drop seed= from {', '.join(seeded)}")
    seeds = [""] if draws == 1 else [f":seed={k}" for k in range(draws)]
    return [(f"{base}:shots={n}{seed}", base, n) for base in bases for n in shots if n is not None for seed in seeds]


def run_labels(runs: list[Path]) -> list[str]:
    """Names that tell the runs apart in the table and the figure: a study run (variant/seedN) by its variant,
    another run by its folder's name, and by more of its path where two would read the same."""
    paths = [Path(run).resolve() for run in runs]
    own = [p.parent.name if seed_of(p.name) is not None else p.name for p in paths]
    if len(set(own)) == len(own):
        return own
    for depth in range(2, max(len(p.parts) for p in paths) + 1):
        labels = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]  # the same run given twice


DATA_FIELDS = ("dataset", "classes", *CENTER_FIELDS)  # what the runs are trained and scored on


def check_compared_runs(runs: list[Path]) -> None:
    """Every run of a sweep loads, has a circuit and is scored on the same data, checked before the first is
    benchmarked (a bad --compare-run otherwise fails after the whole first sweep)."""
    from hybrid.rundir import load_run

    first = None
    for run in runs:
        cfg, model, _, backend = load_run(run, "statevector")
        backend.close()
        if model.quantum is None:
            raise ValueError(f"{run} has no circuit to benchmark (trained with --no-quantum, or a classical layer)")
        data = {name: getattr(cfg, name) for name in DATA_FIELDS}
        first = first or (run, data)
        if data != first[1]:
            changed = ", ".join(f"{k} {first[1][k]!r} / {v!r}" for k, v in data.items() if v != first[1][k])
            raise ValueError(f"{run} is scored on other data than {first[0]} ({changed}); compare runs of the same "
                             "data and centers")


def run_sweep(runs: list[Path], bases: list[str], shots: list[int | None], *, bench: Callable, draws: int = 1,
              **settings) -> dict:
    """`bench(run, specs, **settings)` (hybrid.bench_backends.run_bench) for each run; curves per backend, each
    point the mean over `draws` shot draws."""
    specs = sweep_specs(bases, shots, draws)
    finite = [n for n in shots if n is not None]
    results = []
    for run, label in zip(runs, run_labels(runs)):
        result = bench(Path(run), [s for s, _, _ in specs], **settings)
        if settings.get("seed") is None:  # the runs compared score the first one's images, whatever their seeds
            settings = settings | {"seed": result["seed"]}
        if results and result["domains"] != results[0]["domains"]:
            raise ValueError(f"{run} is scored on other domains than {results[0]['run']} ({result['domains']} "
                             f"against {results[0]['domains']}); compare runs of the same data and centers")
        rows = {r["backend"]: r for r in result["rows"]}
        exact = result["rows"][0]
        curves = {base: [_drawn_point([rows[spec] for spec, b, m in specs if b == base and m == n], n) for n in finite]
                  for base in bases}
        results.append({"run": str(run), "label": label, "exact": _point(exact, None),
                        "curves": curves, "domains": result["domains"], "samples_per_domain": result["samples_per_domain"],
                        "tta": result["tta"], "seed": result["seed"]})
    out = {"kind": "shot_sweep", "backends": bases, "shots": finite, "draws": draws, "runs": results}
    if len(results) == 2:
        out["recovery"] = recovery(results[0], results[1])
    return out


def _drawn_point(rows: list[dict], shots: int) -> dict:
    """One draw's point, or the mean over several draws with their AUCs and spread (no bootstrap interval:
    the draws' spread is the uncertainty a single draw hides)."""
    if len(rows) == 1 or any("error" in row for row in rows):
        return _point(next((row for row in rows if "error" in row), rows[0]), shots)
    aucs = [row["auc"] for row in rows]
    return {"shots": shots, "auc": float(np.mean(aucs)), "auc_ci": None, "auc_draws": aucs,
            "auc_draw_std": float(np.std(aucs, ddof=1)), "mae": float(np.mean([row["mae"] for row in rows])),
            "sensitivity": float(np.mean([row["sensitivity"] for row in rows])),
            "seconds": float(sum(row["seconds"] for row in rows))}


def _point(row: dict, shots: int | None) -> dict:
    if "error" in row:
        return {"shots": shots, "error": row["error"]}
    return {"shots": shots, "auc": row["auc"], "auc_ci": row.get("auc_ci"), "mae": row["mae"],
            "sensitivity": row["sensitivity"], "seconds": row["seconds"]}


def recovery(first: dict, second: dict) -> dict:
    """Per backend and shots: the AUC each run loses against its own exact AUC, and the share of the
    first run's loss the second avoids: 1 - lost_second / lost_first. Each run is measured against
    itself, so a second model that is simply better (or worse) everywhere does not count as recovery."""
    out = {}
    for base, points in first["curves"].items():
        for a, b in zip(points, second["curves"][base]):
            if "auc" not in a or "auc" not in b:
                continue
            lost_first, lost_second = first["exact"]["auc"] - a["auc"], second["exact"]["auc"] - b["auc"]
            out[f"{base}@{a['shots']}"] = {
                "lost_first": lost_first, "lost_second": lost_second, "auc_difference": b["auc"] - a["auc"],
                "recovered_share": 1 - lost_second / lost_first if lost_first > 0 else None}
    return out


def _cell(point: dict) -> str:
    if "auc" not in point:
        return f"error: {point['error']}"
    if "auc_draws" in point:
        return f"{point['auc']:.4f} ± {point['auc_draw_std']:.4f}"
    ci = point.get("auc_ci")
    return f"{point['auc']:.4f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def format_markdown(result: dict) -> str:
    first = result["runs"][0]
    draws = result.get("draws", 1)
    spread = (f"each shot count the mean ± standard deviation over {draws} shot draws (simulator seeds 0-{draws - 1})"
              if draws > 1 else "[95% bootstrap interval]")
    lines = [f"{first['samples_per_domain']} images per unseen center × {counted(len(first['domains']), 'center')}, TTA "
             f"{first['tta']}, seed {first['seed']}; mean AUC over the centers, {spread}.", ""]
    for run in result["runs"]:
        lines += [f"### {run['label']} (`{run['run']}`)", "", "| backend | " + " | ".join(
            f"{n} shots" for n in result["shots"]) + " | exact |", "|---|" + "---|" * (len(result["shots"]) + 1)]
        for base, points in run["curves"].items():
            lines.append(f"| {base} | " + " | ".join(_cell(p) for p in points) + f" | {_cell(run['exact'])} |")
        lines.append("")
    if result.get("recovery"):
        a, b = result["runs"][0]["label"], result["runs"][1]["label"]
        lines += [f"### AUC each run loses against its own exact AUC; share of {a}'s loss that {b} avoids", "",
                  f"| backend @ shots | lost by {a} | lost by {b} | recovered | AUC {b} − {a} |", "|---|---|---|---|---|"]
        for key, r in result["recovery"].items():
            share = "–" if r["recovered_share"] is None else f"{100 * r['recovered_share']:.0f}%"
            lines.append(f"| {key} | {r['lost_first']:+.4f} | {r['lost_second']:+.4f} | {share} | "
                         f"{r['auc_difference']:+.4f} |")
        lines.append("")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    runs = result["runs"]
    fig = Figure(figsize=(4.6 * len(runs), 4.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(runs), sharey=True))
    for ax, run in zip(axes, runs):
        for i, (base, points) in enumerate(run["curves"].items()):
            ok = [p for p in points if "auc" in p]
            x = np.array([p["shots"] for p in ok], dtype=float) * (1 + 0.04 * i)  # offset: bars stay apart
            y = np.array([p["auc"] for p in ok])
            err = np.array([[p["auc"] - p["auc_ci"][0], p["auc_ci"][1] - p["auc"]] if p.get("auc_ci")
                            else [p.get("auc_draw_std", 0.0)] * 2 for p in ok]).T.reshape(2, -1)
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=base)
        ax.axhline(run["exact"]["auc"], color="k", ls="--", lw=1, label="exact")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("shots per expectation value")
        ax.set_title(run["label"], fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean AUC, unseen centers")
    axes[0].legend(fontsize=8)
    fig.savefig(path, dpi=120)
