"""How the quantum layer joins the network (the head), and what can stand in its place (the layer).

Heads (`--quantum-head`), with f the embedding and q = layer(angles(f)):
    concat    classifier([dropout(f), q])        the classifier can ignore q
    dressed   classifier(q)                      every prediction passes through the layer
                                                 (the dressed quantum circuit of Mari et al., 2020)
    residual  classifier(dropout(f) + lift(q))   q perturbs the features the classifier sees

Layers (`--quantum-layer`), each with the same inputs (the n_qubits angles) and outputs:
    pqc             the parameterized circuit
    separable       the same circuit with every entangling gate removed
    classical_twin  a classical layer with exactly the circuit's number of trainable parameters
    none            nothing: the projection's output goes on (Linear -> Linear)
"""

from __future__ import annotations

import torch
from torch import nn

QUANTUM_HEADS = ("concat", "dressed", "residual")
QUANTUM_LAYERS = ("pqc", "separable", "classical_twin", "none")
CIRCUIT_LAYERS = ("pqc", "separable")  # the layers that are a circuit (and so run on a backend)


class ClassicalTwin(nn.Module):
    """Linear-tanh-Linear-tanh from n_inputs to n_outputs with exactly `n_params` trainable parameters.

    Hidden width h = n_params // (n_inputs + n_outputs), without biases; the parameters that do not
    make a whole hidden unit become output biases, then per-input gains (the circuit's inputs are
    angles, and a gain is what a trainable encoding frequency does). Outputs lie in [-1, 1] like
    expectation values.
    """

    def __init__(self, n_inputs: int, n_outputs: int, n_params: int, seed: int | None = None) -> None:
        super().__init__()
        hidden = n_params // (n_inputs + n_outputs)
        if hidden < 1:
            raise ValueError(f"a classical twin of a circuit with {n_params} trainable parameters cannot connect "
                             f"{n_inputs} inputs to {n_outputs} outputs (needs at least {n_inputs + n_outputs}); "
                             "use more ansatz repetitions (--q-reps) or fewer observables")
        rest = n_params - hidden * (n_inputs + n_outputs)
        n_bias, n_gain = min(rest, n_outputs), rest - min(rest, n_outputs)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.inner = nn.Parameter(_uniform((hidden, n_inputs), n_inputs, generator))
        self.outer = nn.Parameter(_uniform((n_outputs, hidden), hidden, generator))
        self.bias = nn.Parameter(torch.zeros(n_bias))
        self.gain = nn.Parameter(torch.ones(n_gain))
        self.n_inputs, self.n_outputs, self.hidden = n_inputs, n_outputs, hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gain = torch.cat([self.gain, self.gain.new_ones(self.n_inputs - len(self.gain))])
        bias = torch.cat([self.bias, self.bias.new_zeros(self.n_outputs - len(self.bias))])
        h = torch.tanh((x * gain.to(x.dtype)) @ self.inner.t().to(x.dtype))
        return torch.tanh(h @ self.outer.t().to(x.dtype) + bias.to(x.dtype))

    def extra_repr(self) -> str:
        return (f"{self.n_inputs} -> {self.hidden} -> {self.n_outputs}, output biases {len(self.bias)}, "
                f"input gains {len(self.gain)}")


def _uniform(shape: tuple[int, int], fan_in: int, generator: torch.Generator | None) -> torch.Tensor:
    bound = 1.0 / fan_in**0.5  # nn.Linear's default range
    return (torch.rand(shape, generator=generator) * 2 - 1) * bound


def head_input_width(head: str, embed_dim: int, layer_outputs: int) -> int:
    """What the classifier reads: the embedding and the layer's outputs, the outputs alone, or the embedding."""
    return {"concat": embed_dim + layer_outputs, "dressed": layer_outputs, "residual": embed_dim}[head]


def count_parameters(module: nn.Module | None) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad) if module is not None else 0
