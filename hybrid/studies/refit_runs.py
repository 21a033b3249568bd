"""Refitted dressed heads (hybrid.readout_refit --save-to) saved as run directories, for the tools that read runs
(hybrid.evaluate, hybrid.bench_backends --compare-run)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from hybrid.checkpoints import load_checkpoint
from hybrid.rundir import BEST_KEYS, CHECKPOINT, write_json


def saved_run_dir(save_to: Path, weight: float, run_dir: Path) -> Path:
    """Where --save-to puts the refit of `run_dir` at `weight`."""
    return save_to / f"weight{weight:g}" / run_dir.name


def refuse_collisions(save_to: Path, run_dirs: list[Path], weights: list[float]) -> None:
    """Refuse, before any refit, targets that an earlier save holds or that two runs of one folder name would share."""
    targets = [saved_run_dir(save_to, w, r) for r in run_dirs for w in weights]
    taken = [t for t in targets if (t / CHECKPOINT).exists()] + [t for t in set(targets) if targets.count(t) > 1]
    if taken:
        raise ValueError(f"--save-to: {taken[0]} is already taken (runs need distinct folder names)")


def save_refit_run(run_dir: Path, head, out_dir: Path, provenance: dict, data_root: str | None = None) -> Path:
    """A run directory whose network is `run_dir`'s with the refitted `head` (a readout_refit.Head): the angle
    calibration folded into the last affine layer in front of the angles (the angle BatchNorm if any, else the
    projection), the circuit weights and the readout replaced, and the decision threshold chosen again on source
    validation as training does; config and centers copied; readout_refit.json says where it came from."""
    if (out_dir / CHECKPOINT).exists():
        raise ValueError(f"--save-to: {out_dir} already holds a network; choose another folder or remove it")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "centers.json"):
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, out_dir / name)
    ckpt = load_checkpoint(run_dir / CHECKPOINT, "checkpoint", BEST_KEYS)
    model = dict(ckpt["model"])
    front = "angle_norm" if "angle_norm.weight" in model else "project"
    scale = head.scale.to(model[f"{front}.weight"].dtype)
    new = {f"{front}.weight": model[f"{front}.weight"] * (scale[:, None] if front == "project" else scale),
           f"{front}.bias": model[f"{front}.bias"] * scale + head.offset,
           "quantum.weight": head.circuit, "classifier.weight": head.weight, "classifier.bias": head.bias}
    model |= {key: value.to(model[key].dtype).clone() for key, value in new.items()}
    threshold = refit_threshold(run_dir, data_root, state=model)
    torch.save(ckpt | {"model": model, "threshold": threshold}, out_dir / CHECKPOINT)
    write_json({"source_run": str(run_dir)} | provenance, out_dir / "readout_refit.json")
    return out_dir


def refit_threshold(run_dir: Path, data_root: str | None, state: dict | None = None) -> float:
    """The decision threshold of `run_dir`'s network (with its weights replaced by `state` if given), from source
    validation with the run's TTA (as hybrid.train chooses it): the trained head's threshold would not fit the
    refitted head's probabilities."""
    from hybrid.rundir import load_run
    from hybrid.train import source_validation_threshold

    cfg, model, ckpt, backend = load_run(run_dir)
    backend.close()
    if state is not None:
        model.load_network_state(state)
    return source_validation_threshold(model, cfg, data_root, cfg.tta, ckpt["positive_class"])
