"""Loading checkpoints safely: tensors and plain containers only, every failure one sentence.

The bottom layer for everything that reads a `.pt` file (a run's best.pt and last.pt, pretrained
weights), so that `hybrid.model` and `hybrid.rundir` share it without importing each other.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from hybrid.images import DataError


class CheckpointError(DataError):
    """A checkpoint that cannot be used: unreadable, refused (pickled code) or missing entries."""


def load_checkpoint(path: Path, what: str, required: tuple[str, ...] = ()) -> Any:
    """torch.load with weights_only=True: tensors and plain containers only, so a planted pickle
    payload is refused before any of it runs. Errors are one sentence (torch's own message
    suggests turning the protection off; that advice is never passed on)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{what} {path} was refused: it holds pickled Python objects other than tensors, "
                              "which could run code when loaded; use a file saved with torch.save(state_dict) "
                              "of plain tensors") from None
    except Exception as exc:  # truncated, not a torch file, wrong format
        raise CheckpointError(f"{what} {path} could not be read ({type(exc).__name__}); it is truncated or not a "
                              "torch checkpoint: restore it, or retrain") from None
    if required:
        missing = [k for k in required if not isinstance(obj, dict) or k not in obj]
        if missing:
            raise CheckpointError(f"{what} {path} lacks {missing}; it was not written by this version of "
                                  "hybrid-qdg or was edited: restore it, or retrain")
    return obj
