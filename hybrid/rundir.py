"""Run directories: atomic checkpoint writes, rebuilding a trained run, and the one `results.jsonl` writer.

A run directory holds config.json, best.pt (the selected network with its architecture facts
and decision threshold), last.pt (everything needed to resume), metrics.jsonl, reports and
`results.jsonl`, to which every training and evaluation appends one JSON line.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import torch

from hybrid.config import TrainConfig
from hybrid.data import DataError

CHECKPOINT = "best.pt"
RESULTS = "results.jsonl"


def finite(obj):
    """`obj` with every NaN or infinity replaced by None: JSON has no NaN (`json.dumps` would write an
    invalid bare `NaN`), and an undefined metric (the AUC of one-class data) is null."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def json_text(data: Any, indent: int | None = None) -> str:
    """Strict JSON (no NaN) of `data`; undefined numbers become null."""
    return json.dumps(finite(data), indent=indent, allow_nan=False)


def atomic_save(obj, path: Path) -> None:
    """Write to a temporary file and rename, so a crash never leaves a half-written checkpoint."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_json(data: Any, path: Path) -> None:
    """Write `data` as indented JSON, through a temporary file, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json_text(data, indent=2) + "\n")
    os.replace(tmp, path)


def append_result(run_dir: Path, record: dict) -> None:
    """Append one JSON line to the run's results.jsonl (training and every evaluation)."""
    with open(Path(run_dir) / RESULTS, "a") as fh:
        fh.write(json_text(record) + "\n")


class LoadedRun(NamedTuple):
    """A trained run, rebuilt for inference: `cfg, model, ckpt, backend = load_run(...)`."""

    config: TrainConfig
    model: torch.nn.Module
    checkpoint: dict  # best.pt: in_channels, n_classes, positive_class, class_names, threshold, epoch, ...
    backend: Any  # a `backends.Backend`; close() it when done


def load_run(run_dir: Path, backend_name: str | None = None, *, device: str = "cpu",
             **backend_options) -> LoadedRun:
    """Rebuild a trained model from `config.json` and its checkpoint (weights_only), on `device`
    (a `--device` value: cpu, auto, cuda, cuda:N, mps).

    A QPU backend's cost estimate takes the rate calibrated by live runs of this run directory.
    """
    from backends import get_backend
    from backends.budget import stored_rate
    from hybrid.devices import resolve_device
    from hybrid.model import HybridNet

    run_dir = Path(run_dir)
    cfg_path, ckpt_path = run_dir / "config.json", run_dir / CHECKPOINT
    for path in (cfg_path, ckpt_path):
        if not path.is_file():
            raise DataError(f"{path} is missing; is {run_dir} a run directory written by hybrid.train?")
    cfg = TrainConfig.load(cfg_path)
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"checkpoint {ckpt_path} could not be read ({exc}); retrain or restore it") from exc
    backend = get_backend(backend_name or cfg.backend, **backend_options)
    backend.qpu_rate = stored_rate(run_dir, backend.qpu_rate)  # before the model makes its runner
    # the checkpoint carries its own architecture facts; weights need not be downloaded again
    model_cfg = replace(cfg.model_config(), pretrained=False, weights_path=None)
    model = HybridNet(model_cfg, ckpt["in_channels"], ckpt["n_classes"], layer_kwargs=backend.layer_kwargs())
    model.load_network_state(ckpt["model"])
    model.to(resolve_device(device))
    model.eval()
    return LoadedRun(cfg, model, ckpt, backend)
