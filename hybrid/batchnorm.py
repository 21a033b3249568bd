"""BatchNorm utilities shared by training (precise BN) and test-time adaptation.

Test-time adaptation changes how BatchNorm layers normalise; these helpers find the layers,
save and restore every flag adaptation touches, and estimate running statistics over many
samples in chunks, the one implementation behind precise BN and AdaBN.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Protocol, runtime_checkable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@runtime_checkable
class BatchNormForward(Protocol):
    """A model whose ``batchnorm_forward(x)`` runs every BatchNorm layer it has (its front part).

    Domain-level statistics are collected with it, so that a tail without BatchNorm (a quantum
    layer that may be remote) is not run just to collect them.
    """

    def batchnorm_forward(self, x: torch.Tensor) -> torch.Tensor: ...


@torch.no_grad()
def estimate_batchnorm_statistics(layers: list[_BatchNorm], forward: Callable[[torch.Tensor], object],
                                  x: torch.Tensor, batch_size: int) -> None:
    """Replace the running statistics of ``layers`` with averages over ``x``, in chunks.

    The chunks' statistics are averaged with equal weight per chunk (``momentum=None`` is a
    cumulative average), so a short last chunk counts more than its share (e.g. 112 of 624
    images weigh a third); on images in no particular order that adds a little variance, no
    bias, and every AdaBN figure reported was measured so. Chunks of one sample are skipped
    (BatchNorm1d cannot take their statistics); with nothing left the layers keep the
    statistics they had. The caller puts the layers in train mode; their momenta are restored
    here. Used by precise BN after each
    training epoch and by AdaBN at test time.
    """
    momenta = [bn.momentum for bn in layers]
    saved = [{k: v.clone() for k, v in bn.state_dict().items()} for bn in layers]
    device = layers[0].running_mean.device if layers and layers[0].running_mean is not None else None
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None
    try:
        ran = 0
        for start in range(0, len(x), batch_size):
            chunk = x[start:start + batch_size]
            if len(chunk) > 1:
                forward(chunk if device is None else chunk.to(device))
                ran += 1
        if not ran:  # nothing to estimate from: keep the statistics the layers had, not the reset ones
            for bn, state in zip(layers, saved):
                bn.load_state_dict(state)
    finally:
        for bn, momentum in zip(layers, momenta):
            bn.momentum = momentum


def bn_layers(model: nn.Module) -> list[_BatchNorm]:
    """All BatchNorm layers (1d/2d/3d/sync) of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def save_flags(model: nn.Module) -> tuple[list[bool], list[bool], list[bool]]:
    return (
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [bn.track_running_stats for bn in bn_layers(model)],
    )


def restore_flags(model: nn.Module, flags: tuple[list[bool], list[bool], list[bool]]) -> None:
    training, requires_grad, tracking = flags
    for m, t in zip(model.modules(), training):
        m.training = t
    for p, r in zip(model.parameters(), requires_grad):
        p.requires_grad_(r)
    for bn, t in zip(bn_layers(model), tracking):
        bn.track_running_stats = t


@contextmanager
def flags_kept(model: nn.Module):
    """Undo any mode / requires_grad / BN-tracking change made inside the block."""
    flags = save_flags(model)
    try:
        yield
    finally:
        restore_flags(model, flags)


def use_batch_stats(model: nn.Module, kinds: tuple[type, ...] = (_BatchNorm,)) -> nn.Module:
    """Put ``model`` in eval mode except BN layers of ``kinds``, which normalise with batch statistics.

    Train-mode BN normalises with the batch mean and (biased) variance; turning off
    ``track_running_stats`` stops it from also overwriting the stored source statistics,
    while keeping the buffers, so ``state_dict`` keeps its keys. Dropout and every other
    layer stay in eval mode: only the normalisation should change at test time.
    """
    model.eval()
    for bn in bn_layers(model):
        if isinstance(bn, kinds):
            bn.train()
            bn.track_running_stats = False
    return model
