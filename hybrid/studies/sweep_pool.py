"""Noise-aware recovery pooled over seeds: several shot sweeps, each of an exact-trained run and a
noise-aware run of the same seed.

    python -m hybrid.sweep_pool --out results/quantum_heads/slot_lr/recovery \\
        runs/sweeps/seed0 runs/sweeps/seed1 runs/sweeps/seed2

One sweep's recovery rests on one training seed and one draw of shots, and the AUC a model loses at
1,024 shots is only a few hundredths: the share recovered swings widely from seed to seed. This reads
each folder's `shot_sweep.json` (written by `hybrid.bench_backends --shot-sweep ... --compare-run`)
and, per backend @ shots, averages each model's loss against its own exact AUC over the seeds; the
pooled share is 1 - mean loss of the second / mean loss of the first. Beside it, the share recovered
on the device: how much of the first model's loss the second wins back in AUC on the backend,
mean(AUC_backend(second) - AUC_backend(first)) / mean loss of the first. The two differ when the
second model is not meant to run exactly (trained for a device's attenuation, its exact AUC is not
its reference). Writes OUT/recovery.json and OUT/recovery.md with the per-seed values beside the
pooled ones.

Sweeps of one run each (no --compare-run) are pooled too, into the loss alone: the question to ask
before any noise-aware round is whether the exact-trained model loses enough on the device to recover.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from hybrid.cli import run_cli
from hybrid.data import DataError
from hybrid.reporting import counted, share_or_dash
from hybrid.rundir import write_json, write_text


def load_sweeps(folders: list[Path]) -> list[dict]:
    """Each folder's shot_sweep.json, at the same backends and shots: all comparing two runs, or all of one run."""
    sweeps = []
    for folder in folders:
        path = Path(folder) / "shot_sweep.json"
        if Path(folder).is_file():
            raise DataError(f"{folder} is a file; give the folder that holds shot_sweep.json (bench_backends' --out)")
        if not path.is_file():
            raise DataError(f"{path}: no such file; run `python -m hybrid.bench_backends --shot-sweep ... "
                            f"--compare-run ... --out {folder}` first")
        sweep = json.loads(path.read_text())
        if not sweep.get("recovery"):
            if len(sweep.get("runs", [])) != 1 or "curves" not in sweep["runs"][0]:
                raise DataError(f"{path} holds no comparison and no single run's curves; make it with "
                                "`hybrid.bench_backends --shot-sweep ...` (--compare-run for a recovery)")
            sweep = dict(sweep, recovery=losses(sweep["runs"][0]))
        sweeps.append(sweep)
    if len({len(s["runs"]) for s in sweeps}) > 1:
        raise DataError("some sweeps compare two runs and some hold one; pool sweeps made the same way "
                        "(all with --compare-run for a recovery, or all without for the loss alone)")
    keys = [sorted(s["recovery"]) for s in sweeps]
    if any(k != keys[0] for k in keys):
        raise DataError("the sweeps measured different backends or shot counts; pool sweeps made with the same "
                        "--backends and --shot-sweep")
    _refuse_unlike(sweeps, folders)
    return sweeps


def _refuse_unlike(sweeps: list[dict], folders: list[Path]) -> None:
    """Pooled sweeps must be seeds of one comparison: the runs in the same roles (a noise-aware run given as
    --run in one sweep and as --compare-run in another would be averaged into the wrong side), the same images
    and test-time adaptation, and no run twice."""
    if len(sweeps[0]["runs"]) == 2:
        second = {s["runs"][1].get("label"): f for f, s in zip(folders, sweeps)}
        swapped = [(f, s["runs"][0].get("label")) for f, s in zip(folders, sweeps)
                   if s["runs"][0].get("label") in second]
        if swapped:
            folder, label = swapped[0]
            raise DataError(f"{label} is the exact-trained run (--run) in {folder} but the noise-aware one "
                            f"(--compare-run) in {second[label]}: were --run and --compare-run swapped?")
    for field, what in (("samples_per_domain", "images per center (--samples)"), ("domains", "centers (--domains)"),
                        ("tta", "test-time adaptation (--tta)")):
        values = {str(f): s["runs"][0].get(field) for f, s in zip(folders, sweeps)}
        if len({json.dumps(v) for v in values.values()}) > 1:
            raise DataError(f"the sweeps were scored on different {what}: "
                            + "; ".join(f"{f}: {v}" for f, v in values.items()))
    seen: dict = {}
    for folder, sweep in zip(folders, sweeps):
        run = sweep["runs"][0].get("run")
        if run in seen:
            raise DataError(f"{seen[run]} and {folder} hold the same run ({run}); pool one sweep per seed")
        seen[run] = folder


def losses(run: dict) -> dict:
    """Per backend@shots, the AUC one run loses against its own exact AUC (a sweep without --compare-run)."""
    return {f"{base}@{point['shots']}": {"lost_first": run["exact"]["auc"] - point["auc"]}
            for base, points in run["curves"].items() for point in points if "auc" in point}


def pool_losses(sweeps: list[dict]) -> dict:
    """Per backend@shots: the one run's loss per seed and its mean."""
    rows = {key: {"lost_first": [s["recovery"][key]["lost_first"] for s in sweeps]} for key in sweeps[0]["recovery"]}
    for row in rows.values():
        row["mean_lost_first"] = float(np.mean(row["lost_first"]))
    runs = [s["runs"][0] for s in sweeps]
    return {"kind": "loss_pooled", "sweeps": len(sweeps), "first": [r["run"] for r in runs],
            "exact_auc_first": [r["exact"]["auc"] for r in runs], "samples_per_domain": runs[0]["samples_per_domain"],
            "domains": runs[0]["domains"], "rows": rows}


def pool(sweeps: list[dict]) -> dict:
    """Per backend@shots: each run's loss per seed, their means, and the pooled recovered share."""
    if len(sweeps[0]["runs"]) == 1:
        return pool_losses(sweeps)
    rows = {}
    for key in sweeps[0]["recovery"]:
        first = np.array([s["recovery"][key]["lost_first"] for s in sweeps])
        second = np.array([s["recovery"][key]["lost_second"] for s in sweeps])
        gained = np.array([s["recovery"][key]["auc_difference"] for s in sweeps])  # second - first, on the backend
        mean_first, mean_second = float(first.mean()), float(second.mean())
        rows[key] = {"lost_first": first.tolist(), "lost_second": second.tolist(), "auc_difference": gained.tolist(),
                     "mean_lost_first": mean_first, "mean_lost_second": mean_second,
                     "mean_auc_difference": float(gained.mean()),
                     "recovered_share": 1 - mean_second / mean_first if mean_first > 0 else None,
                     "per_seed_share": [s["recovery"][key]["recovered_share"] for s in sweeps],
                     "recovered_on_device": float(gained.mean()) / mean_first if mean_first > 0 else None,
                     "per_seed_on_device": [g / f if f > 0 else None for g, f in zip(gained, first)]}
    first_runs = [s["runs"][0] for s in sweeps]
    return {"kind": "recovery_pooled", "sweeps": len(sweeps),
            "first": [r["run"] for r in first_runs], "second": [s["runs"][1]["run"] for s in sweeps],
            "exact_auc_first": [r["exact"]["auc"] for r in first_runs],
            "exact_auc_second": [s["runs"][1]["exact"]["auc"] for s in sweeps],
            "samples_per_domain": first_runs[0]["samples_per_domain"], "domains": first_runs[0]["domains"],
            "rows": rows}


def format_losses(pooled: dict) -> str:
    lines = [f"# AUC lost on each backend, over {counted(pooled['sweeps'], 'seed')}", "",
             f"{pooled['samples_per_domain']} images per unseen center x {counted(len(pooled['domains']), 'center')}. Loss = the "
             "run's own exact AUC minus its AUC on the backend (with several draws, their mean).", "",
             "- runs: " + ", ".join(f"`{r}`" for r in pooled["first"]),
             f"- exact AUC: {np.mean(pooled['exact_auc_first']):.4f} (mean over seeds)", "",
             "| backend @ shots | mean loss | per seed |", "|---|---|---|"]
    lines += [f"| {key} | {r['mean_lost_first']:+.4f} | {', '.join(f'{x:+.4f}' for x in r['lost_first'])} |"
              for key, r in pooled["rows"].items()]
    return "\n".join(lines) + "\n"


def format_markdown(pooled: dict) -> str:
    if pooled["kind"] == "loss_pooled":
        return format_losses(pooled)
    values = lambda xs: ", ".join(f"{x:+.4f}" for x in xs)  # noqa: E731
    lines = [f"# Noise-aware recovery over {counted(pooled['sweeps'], 'seed')}", "",
             f"{pooled['samples_per_domain']} images per unseen center x {counted(len(pooled['domains']), 'center')}. Loss = a "
             "run's own exact AUC minus its AUC on the backend; recovered = 1 - mean loss of the noise-aware run / "
             "mean loss of the exact-trained run (own exact); recovered on the device = mean (AUC of the noise-aware "
             "run - AUC of the exact-trained run, both on the backend) / mean loss of the exact-trained run.", "",
             "- exact-trained runs: " + ", ".join(f"`{r}`" for r in pooled["first"]),
             "- noise-aware runs: " + ", ".join(f"`{r}`" for r in pooled["second"]),
             f"- exact AUC: exact-trained {np.mean(pooled['exact_auc_first']):.4f}, noise-aware "
             f"{np.mean(pooled['exact_auc_second']):.4f} (means over seeds)", "",
             "| backend @ shots | mean loss, exact-trained | mean loss, noise-aware | recovered (pooled, own exact) "
             "| per seed: exact-trained | per seed: noise-aware | per seed recovered | AUC gained on the backend "
             "| recovered on the device (pooled) | per seed on the device |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for key, r in pooled["rows"].items():
        lines.append(f"| {key} | {r['mean_lost_first']:+.4f} | {r['mean_lost_second']:+.4f} | "
                     f"{share_or_dash(r['recovered_share'])} | {values(r['lost_first'])} | {values(r['lost_second'])} | "
                     f"{', '.join(share_or_dash(v) for v in r['per_seed_share'])} | {values(r['auc_difference'])} | "
                     f"{share_or_dash(r['recovered_on_device'])} | {', '.join(share_or_dash(v) for v in r['per_seed_on_device'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hybrid.sweep_pool", description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("sweeps", nargs="+", help="folders holding a shot_sweep.json (one per seed), each with two runs, or each with one")
    parser.add_argument("--out", required=True, help="folder for recovery.json and recovery.md")
    args = parser.parse_args(argv)

    def run() -> int:
        pooled = pool(load_sweeps([Path(p) for p in args.sweeps]))
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(pooled, out / "recovery.json")
        write_text(format_markdown(pooled), out / "recovery.md")
        print(format_markdown(pooled))
        return 0

    return run_cli(run, verbose=False)


if __name__ == "__main__":
    sys.exit(main())
