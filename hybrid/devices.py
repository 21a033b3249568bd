"""Where tensors live: `--device auto|cpu|cuda|cuda:N|mps`, and mixed precision (`--amp`).

Images are shifted and augmented on the CPU with the run's seeded generators whatever the
device, so a run draws the same virtual centers on a laptop and on a GPU node; only the
network's arithmetic moves.
"""

from __future__ import annotations

import re

import torch

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def resolve_device(name: str | None) -> torch.device:
    """The torch device for a `--device` value; one sentence when it is not available here."""
    name = (name or "auto").strip().lower()
    if not DEVICE_PATTERN.match(name):
        raise ValueError(f"--device {name!r} is not one of auto, cpu, cuda, cuda:N, mps")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ValueError(f"--device {name}: no CUDA GPU is visible to torch {torch.__version__} ({build}); "
                             "use --device cpu or auto")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                             f"numbered 0..{torch.cuda.device_count() - 1}")
    if name == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError("--device mps: Apple's Metal backend is not available here; use --device cpu or auto")
    return torch.device(name)


def autocast_dtype(device: torch.device) -> torch.dtype:
    """float16 on GPUs (with a gradient scaler), bfloat16 on CPUs (its range needs none)."""
    return torch.bfloat16 if device.type == "cpu" else torch.float16


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer); CPU for an empty module."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")
