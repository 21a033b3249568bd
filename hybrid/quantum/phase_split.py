"""A phase segment's exp(i * phase) from two small tables instead of one per basis state.

A ZZ feature map's phase on basis state k is a sum of terms that each read one or two neighbouring
qubits. Cut the qubits into a bottom part (0 .. s-1) and a top part (s-c .. n-1) that overlap on c
qubits: when every term lies in one part, phase[k] = top[k >> (s-c)] + bottom[k mod 2**s], and

    exp(i * phase) = exp(i * top) (x) exp(i * bottom)   (broadcast over the shared c bits)

costs cos and sin on 2**(n-s+c) + 2**s rows instead of 2**n (48 instead of 256 at 8 qubits, linear
entanglement), then one broadcast product. The split is found, and checked exactly, at compile time
from the segment's phase table; a segment that does not split keeps the direct evaluation.
"""

from __future__ import annotations

import torch

# split only when the two tables have at most this fraction of the 2**n rows: below it the saved
# trigonometry outweighs the extra broadcast product
MAX_ROW_FRACTION = 0.5


class PhaseSplit:
    """phase = top (x) bottom for a (R, 2**n) table of phase coefficients (one row per monomial)."""

    def __init__(self, top: torch.Tensor, bottom: torch.Tensor, sizes: tuple[int, int, int]):
        self.top_t = top.T.contiguous()  # (h * o, R): one matmul gives the top phases of every state
        self.bottom_t = bottom.T.contiguous()  # (o * l, R)
        self.sizes = sizes  # (h, o, l): top-only, shared and bottom-only basis sizes

    @property
    def rows(self) -> int:
        h, o, l = self.sizes
        return h * o + o * l

    def rotate(self, state: torch.Tensor, monomials_t: torch.Tensor) -> torch.Tensor:
        """state * exp(i * phase) for (R, B) monomial columns; differentiable in both."""
        top, bottom = self.top_t @ monomials_t, self.bottom_t @ monomials_t
        return SplitPhaseRotate.apply(state, top, bottom, self.sizes)


def split_phase_table(table: torch.Tensor, n: int, max_fraction: float = MAX_ROW_FRACTION) -> PhaseSplit | None:
    """The cheapest exact split of `table` (R, 2**n) into top and bottom tables, or None.

    For each cut s (bottom qubits 0 .. s-1) the smallest overlap c is taken whose split reproduces
    every entry of the table; the cut with the fewest rows wins if it beats `max_fraction` of 2**n.
    """
    rows, dim = table.shape
    tolerance = 64 * torch.finfo(table.dtype).eps * max(1.0, float(table.abs().max()))  # rounding only
    best = None
    for s in range(1, n):
        for c in range(s):
            h, o, l = 2 ** (n - s), 2**c, 2 ** (s - c)
            if best is not None and h * o + o * l >= best.rows:
                break
            grid = table.reshape(rows, h, o, l)
            bottom = grid[:, 0]  # (R, o, l): the top-only bits at 0
            top = grid[:, :, :, 0] - grid[:, :1, :, 0]  # (R, h, o): what the top-only bits add
            if torch.allclose(top[..., None] + bottom[:, None], grid, rtol=0.0, atol=tolerance):
                best = PhaseSplit(top.reshape(rows, h * o), bottom.reshape(rows, o * l), (h, o, l))
                break
    return best if best is not None and best.rows <= max_fraction * dim else None


def rotate_for_backward(ctx, state: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """state * rotation, keeping both factors a phase rotation's backward needs (no cos/sin again)."""
    out = state * rotation
    ctx.save_for_backward(rotation, out)
    return out


def rotation_grads(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """d/dstate and d/dphase (one entry per basis row and state) of `rotate_for_backward`'s output."""
    rotation, out = ctx.saved_tensors
    grad_state = grad * rotation.conj() if ctx.needs_input_grad[0] else None
    need_phase = any(ctx.needs_input_grad[1:])
    return grad_state, (out.conj() * grad).imag if need_phase else None  # d out / d phase = i * out


class SplitPhaseRotate(torch.autograd.Function):
    """state * (exp(i * top) (x) exp(i * bottom)); the backward sums d/dphase over the bits each table
    does not read, as PhaseRotate's backward gives d/dphase (it keeps the rotation and the output)."""

    @staticmethod
    def forward(ctx, state: torch.Tensor, top: torch.Tensor, bottom: torch.Tensor, sizes: tuple[int, int, int]):
        h, o, l = sizes
        batch = top.shape[1]
        top_rot = torch.complex(torch.cos(top), torch.sin(top)).view(h, o, 1, batch)
        bottom_rot = torch.complex(torch.cos(bottom), torch.sin(bottom)).view(1, o, l, batch)
        ctx.sizes = sizes
        return rotate_for_backward(ctx, state, (top_rot * bottom_rot).view(h * o * l, batch))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        h, o, l = ctx.sizes
        grad_state, grad_phase = rotation_grads(ctx, grad)
        grad_top = grad_bottom = None
        if grad_phase is not None:
            grad_phase = grad_phase.reshape(h, o, l, -1)
            grad_top = grad_phase.sum(dim=2).reshape(h * o, -1)
            grad_bottom = grad_phase.sum(dim=0).reshape(o * l, -1)
        return grad_state, grad_top, grad_bottom, None
