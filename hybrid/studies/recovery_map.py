"""Noise-aware rounds side by side: where each lands between exact AUC and device AUC.

    python -m hybrid.recovery_map --out results/quantum_heads/figures/recovery_map \\
        joint=results/quantum_heads/noise_kd_last/joint/recovery marginal=results/quantum_heads/noise_marginal/recovery

Each LABEL=FOLDER holds a recovery.json from `hybrid.sweep_pool` (an exact-trained and a noise-aware run per seed).
For one backend@shots row, everything is divided by the exact-trained model's mean loss L there, so rounds on
different recipes share one scale:

    x = (mean exact AUC, noise-aware - exact-trained) / L     what noise-aware training costs without noise
    y = (mean AUC on the backend, noise-aware - exact-trained) / L     the share recovered on the device

and y = x + (own-exact share), since the device AUC is the exact AUC minus the loss. The goal "recover half" is
y >= 0.5: a round can meet it only by saving more of its own loss than it costs at exact. The figure shows the same
in AUC units (the shares of a round whose reference barely loses anything are large and noisy), with each round's
goal marked. Writes OUT/recovery_map.png, .json and .md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np

from hybrid.cli import run_cli
from hybrid.data import DataError
from hybrid.reporting import new_figure, palette, save_figure
from hybrid.rundir import write_json, write_text

DEFAULT_ROW = "fake_manila@1024"  # the goal's device and shots, on aer_noisy (one draw) or torch_noisy (draws)
GOAL = 0.5  # #12: noise-aware training recovers at least half of the device's loss


def parse_entry(text: str) -> tuple[str, Path]:
    label, sep, folder = text.partition("=")
    if not sep or not label or not folder:
        raise ValueError(f"{text!r} is not LABEL=FOLDER (a folder holding sweep_pool's recovery.json)")
    return label, Path(folder)


def load_recovery(folder: Path, row: str) -> tuple[str, dict, dict]:
    """(backend@shots key, the row, the whole recovery.json) for the one key that ends with `row`."""
    path = folder / "recovery.json"
    if not path.is_file():
        raise DataError(f"{path}: no such file; pool the sweeps first (python -m hybrid.sweep_pool ... --out {folder})")
    pooled = json.loads(path.read_text())
    if pooled.get("kind") != "recovery_pooled":
        raise DataError(f"{path} holds losses of one run, not a comparison; pool sweeps made with --compare-run")
    keys = [key for key in pooled["rows"] if key == row or key.endswith(":" + row)]
    if len(keys) != 1:
        raise DataError(f"{path}: {len(keys)} rows match {row!r} (rows: {', '.join(pooled['rows'])}); give --row")
    return keys[0], pooled["rows"][keys[0]], pooled


def place(label: str, folder: Path, row: str) -> dict:
    """One round's point (pooled) and its per-seed points, on the scale of the exact-trained model's loss."""
    key, r, pooled = load_recovery(folder, row)
    loss = r["mean_lost_first"]
    if loss <= 0:
        raise DataError(f"{folder}: the exact-trained model loses nothing at {key} ({loss:+.4f}); there is nothing "
                        "to recover and no scale to place the round on")
    exact_first, exact_second = (np.array(pooled[k]) for k in ("exact_auc_first", "exact_auc_second"))
    exact_change = exact_second - exact_first
    # on the device each run scores its exact AUC minus its loss (pools written before sweep_pool recorded the
    # device difference hold these two alone)
    device_change = exact_change - np.array(r["lost_second"]) + np.array(r["lost_first"])
    x, y = float(exact_change.mean()) / loss, float(device_change.mean()) / loss
    return {"label": label, "folder": str(folder), "row": key, "seeds": pooled["sweeps"], "loss": loss,
            "exact_change": float(exact_change.mean()), "device_change": float(device_change.mean()),
            "x": x, "y": y, "own_exact": r["recovered_share"], "meets_goal": y >= GOAL,
            "seed_x": (exact_change / loss).tolist(), "seed_y": (device_change / loss).tolist()}


def plot(points: list[dict], path: Path) -> Path:
    """AUC units (a round whose reference barely loses anything would blow the shares up): each round's pooled and
    per-seed points, and its goal (half its reference's loss, gained on the device) as a dash of its colour."""
    fig = new_figure((9, 7.5))
    ax = fig.add_subplot()
    colours = palette(10)
    for i, p in enumerate(points):
        colour, marker, loss = colours[i % 10], "os^D"[i // 10 % 4], p["loss"]  # a new marker after ten colours
        ax.scatter([x * loss for x in p["seed_x"]], [y * loss for y in p["seed_y"]], s=12, color=colour, alpha=0.4,
                   marker=marker)
        ax.scatter([p["exact_change"]], [p["device_change"]], s=60, color=colour, edgecolor="black", marker=marker,
                   label=f"{p['label']} ({p['row']})")
        ax.plot([p["exact_change"]] * 2, [p["device_change"], GOAL * loss], color=colour, lw=0.6, ls=":")
        ax.scatter([p["exact_change"]], [GOAL * loss], s=80, color=colour, marker="_", linewidths=2)
    ax.axhline(0, color="black", lw=0.6)
    ax.axvline(0, color="black", lw=0.6)
    ax.set(xlabel="exact AUC, noise-aware minus exact-trained (what the training costs without noise)",
           ylabel="AUC on the device, noise-aware minus exact-trained",
           title=f"Noise-aware rounds: pooled (large), per seed (small); dash: the goal ({GOAL:.0%} of the loss)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    return save_figure(fig, path)


def format_markdown(points: list[dict], command: str) -> str:
    lines = ["# Noise-aware rounds: exact cost against device gain", "", f"Made by `{command}`.", "",
             "Per round: the exact-trained model's mean loss L on the device, the mean exact AUC change and device AUC "
             "change of the noise-aware model, both also divided by L (the figure's axes), and the share of L the "
             f"noise-aware model avoids against its own exact AUC. Goal: >= {GOAL:.0%} recovered on the device.", "",
             "| round | backend @ shots | seeds | L | exact change | device change | x (exact / L) | "
             "recovered on the device | own exact | goal |", "|---|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        own = "–" if p["own_exact"] is None else f"{p['own_exact']:.0%}"
        lines.append(f"| {p['label']} | {p['row']} | {p['seeds']} | {p['loss']:+.4f} | {p['exact_change']:+.4f} | "
                     f"{p['device_change']:+.4f} | {p['x']:+.2f} | {p['y']:.0%} | {own} | "
                     f"{'met' if p['meets_goal'] else 'not met'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hybrid.recovery_map", description=__doc__.split("\n")[0])
    parser.add_argument("entries", nargs="+", help="LABEL=FOLDER, each folder holding sweep_pool's recovery.json")
    parser.add_argument("--row", default=DEFAULT_ROW,
                        help=f"backend@shots (or its end, e.g. {DEFAULT_ROW}) to place each round at")
    parser.add_argument("--out", required=True, help="folder for recovery_map.png, .json and .md")
    args = parser.parse_args(argv)

    def run() -> int:
        entries = [parse_entry(text) for text in args.entries]
        repeated = sorted({label for label, _ in entries if [lbl for lbl, _ in entries].count(label) > 1})
        if repeated:  # two rows of one name could not be told apart in the figure or the table
            raise ValueError(f"each round needs its own label; repeated: {', '.join(repeated)}")
        points = [place(label, folder, args.row) for label, folder in entries]
        command = "python -m hybrid.recovery_map " + shlex.join(sys.argv[1:] if argv is None else argv)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json({"command": command, "row": args.row, "goal": GOAL, "rounds": points}, out / "recovery_map.json")
        write_text(format_markdown(points, command), out / "recovery_map.md")
        plot(points, out / "recovery_map.png")
        print(format_markdown(points, command))
        return 0

    return run_cli(run, verbose=False)


if __name__ == "__main__":
    sys.exit(main())
