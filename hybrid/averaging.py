"""Weight averaging (`--ema-decay`): an exponential moving average of the network's weights.

The averaged copy is the network that is validated, selected and saved; the optimizer keeps
training the raw one. Averaged weights sit in a flatter region of the loss than any one
iterate, which is what weight-averaging methods for domain generalization build on (SWAD,
Cha et al., 2021). The average is bias-corrected (as Adam corrects its moments), so early
steps weigh what they should instead of the random initial weights: after t updates each
parameter is

    avg_t = avg_{t-1} + a_t (w_t - avg_{t-1}),   a_t = (1 - decay) / (1 - decay**t),

which makes avg_1 = w_1 and gives step t - k the weight a_t decay**k. BatchNorm running
statistics are not averaged: the copy keeps the raw network's, and training re-estimates
them on the averaged weights before every validation (precise BN, `hybrid.fit`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """A frozen copy of `network` that follows its weights with a bias-corrected EMA."""

    def __init__(self, network: nn.Module, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"the weight average's decay must lie strictly between 0 and 1, got {decay}")
        self.decay = decay
        self.network = copy.deepcopy(network)
        self.network.requires_grad_(False)
        self.steps = 0

    @torch.no_grad()
    def update(self, network: nn.Module) -> None:
        """Fold in the weights `network` has after an optimizer step."""
        self.steps += 1
        rate = (1 - self.decay) / (1 - self.decay ** self.steps)
        for averaged, current in zip(self.network.parameters(), network.parameters(), strict=True):
            averaged.lerp_(current.detach(), rate)
        for averaged, current in zip(self.network.buffers(), network.buffers(), strict=True):
            averaged.copy_(current)

    def state_dict(self) -> dict:
        return {"network": self.network.state_dict(), "steps": self.steps, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        if state["decay"] != self.decay:
            raise ValueError(f"the saved weight average used decay {state['decay']}, this run {self.decay}")
        self.network.load_state_dict(state["network"])
        self.steps = state["steps"]
