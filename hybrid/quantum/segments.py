"""The pieces of a compiled circuit that map a batch of states to states, and what they share.

`Op` is one gate of the circuit, `Context` what every piece needs; `BatchedGate`, `MonomialSegment`,
`SingleQubitBlocks` and `GateByGate` are callables `(state (2**n, B), x1, w) -> state` that
`hybrid.quantum.statevector` strings together.

States are columns: a batch of B states is a (2**n, B) tensor. A gate on the top qubits is then one
matrix product whose long dimension is the batch, a real gate acts on the real and imaginary parts
in one real product (they sit side by side in each row), and a basis permutation copies whole rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from hybrid.quantum.gates import (
    DIAGONAL,
    PERMUTATION,
    REAL_GATES,
    AngleBank,
    apply_gate_columns,
    diagonal_phase,
    gate_matrix,
    permutation,
    to_build_dtype,
)
from hybrid.quantum.phase_split import rotate_for_backward, rotation_grads, split_phase_table

MONOMIAL_NAMES = set(DIAGONAL) | set(PERMUTATION)
# Neighbouring qubits whose single-qubit gates become one Kronecker block: a 16 x 16 matmul per block
# measured fastest at 8 and 12 qubits, batch 256 (2, 3, 4 and 6 tried; /tmp micro-benchmark, not kept).
BLOCK_QUBITS = 4


@dataclass
class Op:
    name: str
    qubits: list[int]
    params: list  # Qiskit parameter values (floats or ParameterExpressions)
    depends_on_input: bool
    depends_on_weight: bool


@dataclass(frozen=True)
class Context:
    """What every compiled piece needs: the qubit count, the dtypes and the parameter names."""

    n: int
    dim: int
    dtype: torch.dtype
    cdtype: torch.dtype
    input_names: list[str]
    weight_names: list[str]

    def bank(self, values: list) -> AngleBank:
        return AngleBank(values, self.input_names, self.weight_names, self.dtype)


class BatchedGate:
    """One input-dependent gate with a (B, 2**k, 2**k) matrix, applied on its own."""

    def __init__(self, op: Op, ctx: Context):
        self.name, self.qubits, self.bank = op.name, op.qubits, ctx.bank(op.params)
        self.n, self.dtype, self.cdtype = ctx.n, ctx.dtype, ctx.cdtype

    def __call__(self, state: torch.Tensor, x1: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        params = list(self.bank(x1, w).unbind(-1)) if self.bank.size else []
        matrix = gate_matrix(self.name, params, self.dtype)
        return apply_gate_columns(state, matrix.to(self.cdtype), self.qubits, self.n)


class PermuteBasis(torch.autograd.Function):
    """state[index] (rows of a column state) whose backward is the inverse permutation, not a
    scatter: advanced indexing's backward is an index_put with accumulation, measured ~1.8x slower
    for a permutation (forward + backward, batch 256, 8 and 12 qubits)."""

    @staticmethod
    def forward(ctx, state: torch.Tensor, index: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        ctx.inverse = inverse
        return state.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad.index_select(0, ctx.inverse), None, None


class PhaseRotate(torch.autograd.Function):
    """state * exp(i * phase) that keeps exp(i * phase) for its backward: autograd through cos and
    sin would evaluate both again (the trigonometry is most of a phase segment's cost)."""

    @staticmethod
    def forward(ctx, state: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        ctx.phase_shape = phase.shape
        return rotate_for_backward(ctx, state, torch.complex(torch.cos(phase), torch.sin(phase)))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad_state, grad_phase = rotation_grads(ctx, grad)
        if grad_phase is not None and grad_phase.shape != ctx.phase_shape:  # a phase shared by every state: (dim, 1)
            grad_phase = grad_phase.sum(dim=1, keepdim=True)
        return grad_state, grad_phase


class MonomialSegment:
    """Diagonal gates and permutations as one phase vector and one gather: P (exp(i*phase) * state)."""

    def __init__(self, ops: list[Op], ctx: Context):
        perm = torch.arange(ctx.dim)
        slopes, values = [], []
        offset = torch.zeros(ctx.dim, dtype=ctx.dtype)
        for op in ops:
            if op.name in PERMUTATION:
                perm = permutation(op.name, op.qubits, ctx.dim)[perm]
                continue
            slope, off = diagonal_phase(op.name, op.qubits, ctx.dim, ctx.dtype)
            offset = offset + off[perm]
            if op.params:
                slopes.append(slope[perm])
                values.append(op.params[0])
        self.offset = offset
        # a phase that depends on nothing is one constant factor; none at all (a CX chain) is skipped
        self.constant_factor = None if self.offset.abs().max() == 0 else torch.polar(torch.ones_like(offset), offset)
        self.gather = None if torch.equal(perm, torch.arange(ctx.dim)) else torch.argsort(perm)
        self.inverse = None if self.gather is None else perm  # undoes the gather: the backward's index
        self.bank = ctx.bank(values) if values else None
        self.slopes_t = torch.stack(slopes).T.contiguous() if slopes else None  # (dim, G)
        # a zero offset (every ZZ block) is not added: one pass over a (dim, B) phase saved per call
        self.offset_column = None if self.constant_factor is None else self.offset[:, None]
        if self.constant_factor is not None:
            self.constant_factor = self.constant_factor[:, None]
        self.split = None
        if self.bank is not None and self.bank.mode == "poly":
            # fold the angle polynomial into the slopes: phase = (coef @ slopes)^T @ monomials^T
            self.bank.coef = self.bank.coef @ self.slopes_t.T
            self.slopes_t = None
            # the offset rides along as the coefficient of a constant monomial
            table = self.bank.coef if self.offset_column is None else torch.cat([self.bank.coef, self.offset[None]])
            self.split = split_phase_table(table, ctx.n)

    def phase(self, x1: torch.Tensor | None, w: torch.Tensor | None) -> torch.Tensor:
        """The (dim, B) phases (or (dim, 1) without inputs), one column per state."""
        if self.bank.mode == "poly":  # the slopes are folded into the polynomial
            phase = self.bank.columns(x1) if x1 is not None else self.bank(None, w)[:, None]
        else:
            angles = self.bank(x1, w)
            phase = self.slopes_t @ (angles.T if angles.dim() == 2 else angles[:, None])
        return phase if self.offset_column is None else phase + self.offset_column

    def split_monomials(self, x1: torch.Tensor) -> torch.Tensor:
        """The (R, B) rows the split tables multiply: the monomials, then 1 for the offset."""
        monomials = self.bank.monomials(x1)
        if self.offset_column is not None:
            monomials = torch.cat([monomials, torch.ones_like(monomials[:, :1])], dim=1)
        return monomials.T

    def __call__(self, state: torch.Tensor, x1: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.split is not None and x1 is not None:
            state = self.split.rotate(state, self.split_monomials(x1))
        elif self.bank is not None:
            state = PhaseRotate.apply(state, self.phase(x1, w))
        elif self.constant_factor is not None:
            state = state * self.constant_factor
        return state if self.gather is None else PermuteBasis.apply(state, self.gather, self.inverse)


def apply_block(state: torch.Tensor, matrix: torch.Tensor, low: int, k: int) -> torch.Tensor:
    """Apply a 2**k x 2**k matrix on the neighbouring qubits low .. low+k-1 of a (2**n, B) state.

    Viewed as (outer, 2**k, 2**low * B) the block's qubits are the middle axis, so no permutation is
    needed: a block on the top qubits is one product with the batch as its long side (BLAS's fast
    orientation), any other a batched product over `outer` large matrices. A real matrix acts on the real and imaginary parts at once.
    """
    dim, batch = state.shape
    outer = dim >> (low + k)
    if matrix.is_complex():
        parts = state.reshape(outer, 2**k, -1)
    else:
        parts = torch.view_as_real(state).reshape(outer, 2**k, -1)
    # bmm with the matrix expanded (stride 0): matmul would fold the batch into a transposed copy
    # (a view, not parts[0]: indexing's backward would zero-fill and copy a whole state)
    out = matrix @ parts.view(2**k, -1) if outer == 1 else torch.bmm(matrix.expand(outer, 2**k, 2**k), parts)
    return out.reshape(dim, batch) if matrix.is_complex() else torch.view_as_complex(out.reshape(dim, batch, 2))


def apply_unitary(state: torch.Tensor, unitary: torch.Tensor) -> torch.Tensor:
    """U @ state for a full 2**n x 2**n matrix; a real U multiplies real and imaginary parts together."""
    return apply_block(state, unitary, 0, int(math.log2(state.shape[0])))


class SingleQubitBlocks:
    """A run of input-independent single-qubit gates (a RealAmplitudes RY layer, a Hadamard layer) as
    Kronecker blocks of up to BLOCK_QUBITS neighbouring qubits: one matmul per block instead of a
    permuted pass over the state per gate. Gates on different qubits commute, so each qubit's gates
    compose in circuit order into one 2x2 matrix. When every qubit has one gate of the same kind (the
    usual layer), all its 2x2 matrices come from one batched call; a run without weights is built once."""

    def __init__(self, ops: list[Op], ctx: Context):
        self.gates: dict[int, list] = {}
        for op in ops:
            self.gates.setdefault(op.qubits[0], []).append(op)
        self.qubits = sorted(self.gates)
        self.blocks: list[tuple[int, int]] = []  # (lowest qubit, width), covering every gated qubit
        for q in self.qubits:
            if not self.blocks or q >= sum(self.blocks[-1]):
                self.blocks.append((q, min(BLOCK_QUBITS, ctx.n - q)))
        self.real = all(op.name in REAL_GATES for op in ops)
        self.build_dtype = ctx.dtype if self.real else ctx.cdtype
        self.n, self.dtype = ctx.n, ctx.dtype
        self.eye = torch.eye(2, dtype=self.build_dtype)
        self.uniform = all(len(g) == 1 and g[0].name == ops[0].name and len(g[0].params) <= 1
                           for g in self.gates.values())
        if self.uniform:
            self.name, self.bank = ops[0].name, ctx.bank([self.gates[q][0].params[0] for q in self.qubits
                                                          if self.gates[q][0].params])
        else:
            self.banks = {q: [(op.name, ctx.bank(op.params)) for op in g] for q, g in self.gates.items()}
        self.constant = None
        if not any(op.depends_on_weight for op in ops):
            self.constant = self.block_matrices(None)

    def qubit_matrices(self, w: torch.Tensor | None) -> dict[int, torch.Tensor]:
        if self.uniform:
            params = [self.bank(None, w)] if self.bank.size else []
            m = to_build_dtype(gate_matrix(self.name, params, self.dtype), self.real, self.build_dtype)
            return dict(zip(self.qubits, m.expand(len(self.qubits), 2, 2).unbind(0)))
        out = {}
        for q, gates in self.banks.items():
            m = self.eye
            for name, bank in gates:
                params = list(bank(None, w).unbind(-1)) if bank.size else []
                m = to_build_dtype(gate_matrix(name, params, self.dtype), self.real, self.build_dtype) @ m
            out[q] = m
        return out

    def block_matrices(self, w: torch.Tensor | None) -> list[torch.Tensor]:
        per_qubit = self.qubit_matrices(w)
        blocks = []
        for low, k in self.blocks:
            matrix = per_qubit.get(low, self.eye)
            for q in range(low + 1, low + k):  # higher qubits are more significant
                matrix = torch.kron(per_qubit.get(q, self.eye), matrix)
            blocks.append(matrix)
        return blocks

    def __call__(self, state: torch.Tensor, x1: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        matrices = self.constant if self.constant is not None else self.block_matrices(w)
        for (low, k), matrix in zip(self.blocks, matrices):
            state = apply_block(state, matrix, low, k)
        return state


class GateByGate:
    """A run of input-independent gates applied to the state in O(B * 2**n) passes: consecutive phases
    and permutations (a CX chain) as one gather, consecutive single-qubit gates as Kronecker blocks,
    any other gate on its own. Above FUSE_MAX_QUBITS (in statevector) this is cheaper than a fused
    2**n x 2**n unitary (4096^2 entries at 12 qubits)."""

    def __init__(self, ops: list[Op], ctx: Context):
        runs: list[tuple[str, list[Op]]] = []
        for op in ops:
            kind = "monomial" if op.name in MONOMIAL_NAMES else "single" if len(op.qubits) == 1 else "gate"
            if kind != "gate" and runs and runs[-1][0] == kind:
                runs[-1][1].append(op)
            else:
                runs.append((kind, [op]))
        pieces = {"monomial": MonomialSegment, "single": SingleQubitBlocks, "gate": lambda run, c: BatchedGate(run[0], c)}
        self.gates = [pieces[kind](run, ctx) for kind, run in runs]

    def __call__(self, state: torch.Tensor, x1: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        for gate in self.gates:
            state = gate(state, x1, w)
        return state
