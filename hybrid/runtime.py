"""Process-wide torch settings for a block of library code, restored afterwards."""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def torch_settings(threads: int | None = None, seed: int | None = None):
    """Torch's intra-op threads and global seed for the block; both are restored when it ends.

    Library functions (training, reports) run inside notebooks and worker processes whose own
    settings must survive them.
    """
    old_threads = torch.get_num_threads()
    old_rng = torch.get_rng_state()
    if threads:
        torch.set_num_threads(threads)
    if seed is not None:
        torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.set_rng_state(old_rng)
