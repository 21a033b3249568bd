"""Run directories: atomic checkpoint writes, rebuilding a trained run, and the one `results.jsonl` writer.

A run directory holds config.json, best.pt (the selected network with its architecture facts
and decision threshold), last.pt (everything needed to resume), metrics.jsonl, reports and
`results.jsonl`, to which every training and evaluation appends one JSON line.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch

from hybrid.config import TrainConfig
from hybrid.checkpoints import load_checkpoint
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


def file_part(name: str, refuse_as: str | None = None) -> str:
    """`name` as one safe file-name part: a name from data (a center, a class) or from the user can never
    reach outside its folder. With `refuse_as` (a flag), an unsafe name is refused instead of cleaned."""
    safe = re.sub(r"[^A-Za-z0-9._:+=-]", "_", str(name)).lstrip(".") or "_"
    if refuse_as and safe != name:
        raise ValueError(f"{refuse_as} {name!r} must be a plain file name part (letters, digits and . _ : + = -, "
                         "not starting with a dot)")
    return safe


def _fsync_dir(path: Path) -> None:
    """Make a rename durable: the directory entry is on disk once its folder is fsync'd."""
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(data: bytes, path: Path) -> None:
    """Write a file through a temporary file, fsync'd and renamed: readers never see half a file, and a
    full disk (an OSError with ENOSPC, from the write or the fsync) leaves the previous version intact."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_save(obj, path: Path) -> None:
    """torch.save, written atomically (see `write_bytes`). Serialized in memory first: torch's own
    file writer turns a full disk into an opaque RuntimeError, a plain write gives ENOSPC."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(buffer.getvalue(), path)


def write_text(text: str, path: Path) -> None:
    """A text file, written atomically (see `write_bytes`)."""
    write_bytes(text.encode(), path)


def write_json(data: Any, path: Path) -> None:
    """Write `data` as indented strict JSON, atomically (see `write_text`)."""
    write_text(json_text(data, indent=2) + "\n", path)


def write_study_outputs(out: Path, stem: str, result: dict, markdown: str, plot: Callable[[dict, Path], Any]) -> None:
    """A study tool's OUT/stem.json (the result), .md (its table, also printed) and .png (`plot(result, path)`)."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(result, out / f"{stem}.json")
    write_text(markdown, out / f"{stem}.md")
    plot(result, out / f"{stem}.png")
    print(markdown)


def append_line(path: Path, record: dict) -> None:
    """One JSON line, written with a single O_APPEND write and fsync'd: concurrent writers never
    interleave, and a crash leaves whole lines only (a torn last line is dropped by `read_lines`)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        line = (json_text(record) + "\n").encode()
        if os.write(fd, line) != len(line):  # a full disk: say so, as a failed write of any other file would
            raise OSError(f"{path}: only part of a line was written (disk full?)")
        os.fsync(fd)
    finally:
        os.close(fd)


def read_lines(path: Path) -> list[dict]:
    """The JSON lines of `path` ([] when absent); a torn line from a crash is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def append_result(run_dir: Path, record: dict) -> None:
    """Append one JSON line to the run's results.jsonl (training and every evaluation)."""
    append_line(Path(run_dir) / RESULTS, record)


def replace_result(run_dir: Path, record: dict) -> None:
    """Append `record` to results.jsonl, first dropping the lines of its kind: a run killed after
    logging its training but before report.json resumes and logs it again, and must not appear twice."""
    path = Path(run_dir) / RESULTS
    earlier = read_lines(path)
    if any(r.get("kind") == record["kind"] for r in earlier):  # rare: rewrite only then, keeping every other line
        write_text("".join(json_text(r) + "\n" for r in earlier if r.get("kind") != record["kind"]), path)
    append_line(path, record)


# What hybrid.train and hybrid.evaluate write into a run directory (what --overwrite clears).
RUN_OUTPUTS = ("config.json", "centers.json", "metrics.jsonl", "last.pt", "best.pt", "report.json", "report.md",
               RESULTS, "roc_curves.png", "domain_auc.png", "training_curves.png", "centers.png", "qpu_rates.json")
RUN_OUTPUT_PATTERNS = ("eval_*.json", "eval_*.md", "partial_*.jsonl", "*.tmp")


def is_study_dir(path: Path) -> bool:
    """A study directory of hybrid.experiment (its study.json)."""
    return (Path(path) / "study.json").is_file()


def is_run_dir(path: Path) -> bool:
    """One run's directory of hybrid.train (its config.json or report.json), not a study's."""
    path = Path(path)
    has_run_files = (path / "config.json").is_file() or (path / "report.json").is_file()
    return has_run_files and not is_study_dir(path) and not any(path.glob("*/seed*"))


def refuse_study_dir(out: Path) -> None:
    if is_study_dir(out):
        raise ValueError(f"--out {out} is a study directory of hybrid.experiment (study.json), not a run; train "
                         f"into another --out (its runs are {out}/<variant>/seed<N>, which the study trains)")


def check_out_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse an --out that cannot hold a new run, before anything is read or written: a file, a
    folder that cannot be written, or one that holds a run (unless resuming or overwriting it)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; give a folder for the run directory")
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: {existing} cannot be written to; choose a folder you can write to")
    refuse_study_dir(out)
    if resume or overwrite:
        return
    taken = [name for name in RUN_OUTPUTS if (out / name).exists()]
    # without config.json (looked for last: another torchrun rank writes it first) the files are someone else's
    if taken and not (out / "config.json").exists():
        raise ValueError(f"--out {out} holds {', '.join(taken)} but no run (config.json); training would "
                         "replace them: train into a new or empty folder, or add --overwrite to replace them")
    if (out / "report.json").exists():
        held = "a finished run (report.json)"
    elif (out / "last.pt").exists() or (out / "best.pt").exists():
        held = "an unfinished run (last.pt)"
    else:
        return
    raise ValueError(f"--out {out} already holds {held}; continue it with --resume, replace it with --overwrite, "
                     "or train into another --out")


def clear_run(out: Path) -> list[str]:
    """Delete what an earlier run wrote into `out` (for --overwrite); returns the names removed."""
    out = Path(out)
    paths = [out / name for name in RUN_OUTPUTS] + [p for pattern in RUN_OUTPUT_PATTERNS for p in out.glob(pattern)]
    removed = []
    for path in paths:
        if path.is_file():
            path.unlink()
            removed.append(path.name)
    return removed


BEST_KEYS = ("model", "in_channels", "n_classes", "positive_class", "threshold", "epoch")


def load_config(path: Path) -> TrainConfig:
    """A run's config.json, or one sentence on what is wrong with it."""
    try:
        return TrainConfig.load(path)
    except (ValueError, TypeError) as exc:  # invalid JSON, unknown fields, wrong types, out of range
        raise DataError(f"{path} cannot be used: {exc}; restore it from the run's report.json 'config', "
                        "or retrain") from None


class LoadedRun(NamedTuple):
    """A trained run, rebuilt for inference: `cfg, model, ckpt, backend = load_run(...)`."""

    config: TrainConfig
    model: torch.nn.Module
    checkpoint: dict  # best.pt: in_channels, n_classes, positive_class, class_names, threshold, epoch, ...
    backend: Any  # a `backends.Backend`; close() it when done


def initialise_from(network: Any, template: str, seed: int, in_channels: int, n_classes: int) -> Path:
    """Load the selected network of run directory `template` ("{seed}" replaced by `seed`) into `network`."""
    run_dir = Path(template.replace("{seed}", str(seed)))
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise DataError(f"--init-from {run_dir}: {path} is missing; is it a finished run directory?")
    ckpt = load_checkpoint(path, "checkpoint", BEST_KEYS)
    if (ckpt["in_channels"], ckpt["n_classes"]) != (in_channels, n_classes):
        raise ValueError(f"--init-from {run_dir}: its network takes {ckpt['in_channels']} channels and "
                         f"{ckpt['n_classes']} classes, this run's {in_channels} and {n_classes}")
    try:
        network.load_network_state(ckpt["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ValueError(f"--init-from {run_dir}: its network is not this run's architecture "
                         f"({' '.join(first[:2])[:300]})") from None
    try:
        source_seed = TrainConfig.load(run_dir / "config.json").seed
    except (OSError, ValueError, TypeError):  # no readable config to tell: nothing to warn about
        source_seed = seed
    if source_seed != seed:  # a fixed path where "{seed}" was meant
        logging.getLogger("hybrid.train").warning(
            "--init-from %s was trained with seed %d, this run has seed %d: where the data's split follows the "
            "seed (a plain or multi-center .npz), images this run validates and tests on were in its training set; "
            "put {seed} in the path to start each seed from its own run", run_dir, source_seed, seed)
    return run_dir


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
    if not cfg_path.is_file() and is_study_dir(run_dir):
        runs = sorted(str(p.parent.relative_to(run_dir)) for p in run_dir.glob("*/seed*/" + CHECKPOINT))
        raise DataError(f"{run_dir} is a study directory (study.json); name one of its runs, {run_dir}/<variant>/"
                        f"seed<N>" + (f", e.g. {run_dir / runs[0]} ({len(runs)} with a model)" if runs else
                                      " (none has saved a model yet)"))
    for path in (cfg_path, ckpt_path):
        if not path.is_file() and cfg_path.is_file() and (run_dir / "metrics.jsonl").is_file():
            raise DataError(f"{path} is missing: training in {run_dir} has not saved a model yet; wait for it, or "
                            f"continue a stopped run with: python -m hybrid.train --resume --out {run_dir}")
        if not path.is_file():
            raise DataError(f"{path} is missing; is {run_dir} a run directory written by hybrid.train?")
    cfg = load_config(cfg_path)
    ckpt = load_checkpoint(ckpt_path, "checkpoint", BEST_KEYS)
    backend = get_backend(backend_name or cfg.backend, **backend_options)
    try:
        backend.qpu_rate = stored_rate(run_dir, backend.qpu_rate)  # before the model makes its runner
        # the checkpoint carries its own architecture facts; weights need not be downloaded again
        model_cfg = replace(cfg.model_config(), pretrained=False, weights_path=None)
        model = HybridNet(model_cfg, ckpt["in_channels"], ckpt["n_classes"], layer_kwargs=backend.layer_kwargs())
        model.load_network_state(ckpt["model"])
        model.to(resolve_device(device))
        model.eval()
        if cfg.q_noise_at_eval and backend.exact:  # a run evaluated through its device's noise model stays so
            from hybrid.device_noise import attach_noise_channel

            attach_noise_channel(model, cfg)
    except BaseException:
        backend.close()  # a QPU batch opened for a model that could not be built must not stay open
        raise
    return LoadedRun(cfg, model, ckpt, backend)
