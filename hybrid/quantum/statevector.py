"""Compile a parameterized Qiskit circuit into an exact, batched, differentiable torch program.

The circuit is walked instruction by instruction and cut into segments, each executed with
as few torch kernels as possible, because at 4-6 qubits the cost is kernel launches, not
arithmetic:

* product prefix: single-qubit gates before the first multi-qubit gate act on per-qubit
  2-vectors (all qubits at once when their gate sequences match), joined by a Kronecker
  product; a prefix that depends on nothing is computed once. Trailing diagonal gates move
  into the next phase segment;
* monomial segment: diagonal gates (RZ, P, CP, RZZ, CZ, ...) and permutations (X, CX, SWAP)
  compose into one permutation times one phase vector, so a whole ZZ block becomes
  ``state[perm] * exp(i * (W^T @ features(x)^T))`` - one matmul and one exp;
* fused unitary: every run of gates that does not depend on the input (constants and
  trainable weights) becomes one 2**n x 2**n matrix per forward pass, built layer by layer
  from Kronecker products; constant runs are multiplied once, at compile time. Above
  FUSE_MAX_QUBITS qubits the matrix costs more than the gates, and the run is applied to the
  state piece by piece (`hybrid.quantum.segments.GateByGate`): consecutive permutations and
  phases as one gather, each layer of single-qubit gates as Kronecker blocks of 4 neighbouring
  qubits (one 16 x 16 matmul per block, no permutation of the state);
* batched gate: any other input-dependent gate, applied on its own.

Each kind is a small callable class that holds what it precomputed at compile time;
`StatevectorProgram` runs the prefix, then each segment, then the observables.

Angles are evaluated by `AngleBank` (in `gates`): polynomials of degree <= 2 in the inputs
(every angle of the angle and ZZ feature maps) become one matmul over the monomials
[1, x_i, x_i x_j]; bare weights become a gather; anything else falls back to per-expression
torch closures, so input gradients flow through products such as ZZ's (pi - x_i)(pi - x_j)
in every case.
"""

from __future__ import annotations

import torch

from hybrid.quantum.gates import (
    DIAGONAL,
    PERMUTATION,
    REAL_GATES,
    UnsupportedGateError,
    gate_matrix,
    kron_states,
    to_build_dtype,
    flatten_circuit,
)
from hybrid.quantum.segments import BatchedGate, Context, GateByGate, MonomialSegment, Op, apply_unitary

__all__ = ["StatevectorProgram", "UnsupportedGateError", "compile_circuit"]


# -- product prefix: (x1, w) -> (2**n, B) product state, one column per sample
class ProductPrefix:
    """Each qubit's own gate sequence on its 2-vector, then one Kronecker product."""

    def __init__(self, prefix: list[list[Op]], ctx: Context):
        self.gates = [[(op.name, ctx.bank(op.params)) for op in ops] for ops in prefix]
        self.dtype, self.cdtype = ctx.dtype, ctx.cdtype
        self.zero = torch.tensor([1, 0], dtype=ctx.cdtype)  # |0>, never written to

    def qubit_states(self, x1, w) -> list[torch.Tensor]:
        states = []
        for gates in self.gates:
            v = self.zero
            for name, bank in gates:
                params = list(bank(x1, w).unbind(-1)) if bank.size else []
                v = (gate_matrix(name, params, self.dtype).to(self.cdtype) * v[..., None, :]).sum(-1)
            states.append(v)
        return states

    def __call__(self, x1: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return kron_states(self.qubit_states(x1, w), x1.shape[0])


class UniformPrefix:
    """The same gate sequence on every qubit: one batched 2x2 product per position."""

    def __init__(self, prefix: list[list[Op]], ctx: Context):
        # position j holds the same gate, with at most one angle, on every qubit
        self.gates = [(op.name, ctx.bank([ops[j].params[0] for ops in prefix]) if op.params else None)
                      for j, op in enumerate(prefix[0])]
        self.n, self.dtype, self.cdtype = ctx.n, ctx.dtype, ctx.cdtype
        self.zero = torch.zeros(ctx.n, 2, dtype=ctx.cdtype)  # |0> on every qubit, never written to
        self.zero[:, 0] = 1

    def __call__(self, x1: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        v = self.zero
        for name, bank in self.gates:
            params = [bank(x1, w)] if bank is not None else []
            matrix = gate_matrix(name, params, self.dtype).to(self.cdtype)  # (..., n, 2, 2)
            v = (matrix * v[..., None, :]).sum(-1)
        if v.dim() == 2:
            v = v.expand(x1.shape[0], self.n, 2)
        return kron_states(list(v.unbind(1)), x1.shape[0])


class ConstantPrefix:
    """A product state that depends on nothing (e.g. ZZ's Hadamard layer), computed once."""

    def __init__(self, prefix: list[list[Op]], ctx: Context):
        self.state = kron_states(ProductPrefix(prefix, ctx).qubit_states(None, None), 1)
        self.dim = ctx.dim

    def __call__(self, x1: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.state.expand(self.dim, x1.shape[0])


def _compile_prefix(prefix: list[list[Op]], ctx: Context):
    if not any(op.depends_on_input or op.depends_on_weight for ops in prefix for op in ops):
        return ConstantPrefix(prefix, ctx)
    names = [[op.name for op in ops] for ops in prefix]
    if all(n == names[0] for n in names) and all(len(op.params) <= 1 for op in prefix[0]):
        return UniformPrefix(prefix, ctx)
    return ProductPrefix(prefix, ctx)


# -- fused unitary: the pieces of one input-independent run
class KronLayers:
    """The (L, 2**n, 2**n) matrices of a run's single-qubit layers, all layers at once.

    Every layer's matrix is the Kronecker product of its 2x2 gates, computed as
    ``prod_q M[slot[l, q], a_q, b_q]`` over the bits (a_q, b_q) of each matrix entry, so a
    whole RealAmplitudes block costs a handful of kernels, not one per gate.
    """

    def __init__(self, layers: list[dict[int, Op]], ctx: Context, real: bool, build_dtype: torch.dtype):
        groups: dict[str, list[Op]] = {}
        for layer in layers:
            for op in layer.values():
                groups.setdefault(op.name, []).append(op)
        # slot 0 is the identity; then each gate name's ops in order, one angle bank per parameter
        slot_of: dict[int, int] = {}
        self.tables, offset = [], 1
        for name, group in groups.items():
            slot_of.update({id(op): offset + i for i, op in enumerate(group)})
            banks = [ctx.bank([op.params[j] for op in group]) for j in range(len(group[0].params))]
            self.tables.append((name, len(group), banks))
            offset += len(group)
        slots = torch.tensor([[slot_of[id(layer[q])] if q in layer else 0 for q in range(ctx.n)]
                              for layer in layers], dtype=torch.long).reshape(len(layers), ctx.n)
        k = torch.arange(ctx.dim)
        row_bits = torch.stack([(k >> q) & 1 for q in range(ctx.n)])  # (n, dim)
        self.slots = slots[:, :, None, None]
        self.a_idx, self.b_idx = row_bits[None, :, :, None], row_bits[None, :, None, :]  # -> (L, n, dim, dim)
        self.eye2 = torch.eye(2, dtype=build_dtype)[None]
        self.dtype, self.real, self.build_dtype = ctx.dtype, real, build_dtype

    def __call__(self, w: torch.Tensor | None) -> torch.Tensor:
        mats = [self.eye2]
        for name, count, banks in self.tables:
            m = to_build_dtype(gate_matrix(name, [bank(None, w) for bank in banks], self.dtype),
                          self.real, self.build_dtype)
            mats.append(m.expand(count, 2, 2) if m.dim() == 2 else m)
        table = torch.cat(mats)  # (slots, 2, 2)
        return table[self.slots, self.a_idx, self.b_idx].prod(dim=1)


class GateUnitary:
    """One multi-qubit gate of a run as a full 2**n x 2**n matrix (weights only, no inputs)."""

    def __init__(self, op: Op, ctx: Context, real: bool, build_dtype: torch.dtype):
        self.gate, self.eye = BatchedGate(op, ctx), torch.eye(ctx.dim, dtype=ctx.cdtype)
        self.real, self.build_dtype = real, build_dtype

    def __call__(self, w: torch.Tensor | None) -> torch.Tensor:
        full = self.gate(self.eye, None, w)  # the identity's columns as the batch: U @ I
        return to_build_dtype(full, self.real, self.build_dtype)


def _layers_and_gates(ops: list[Op]) -> list[tuple[str, object]]:
    """Single-qubit gates grouped into layers ("layer", {qubit: op}); others as ("multi", op)."""
    items: list = []
    for op in ops:
        last = items[-1] if items else None
        if len(op.qubits) == 1 and last and last[0] == "layer" and op.qubits[0] not in last[1]:
            last[1][op.qubits[0]] = op
        elif len(op.qubits) == 1:
            items.append(("layer", {op.qubits[0]: op}))
        else:
            items.append(("multi", op))
    return items


class FusedUnitary:
    """A run of input-independent gates as one unitary, rebuilt from the weights each forward pass."""

    def __init__(self, ops: list[Op], ctx: Context):
        items = _layers_and_gates(ops)
        # RY/CX-type blocks are real: build them in real arithmetic (cheaper autograd)
        real = all(op.name in REAL_GATES for op in ops)
        build_dtype = ctx.dtype if real else ctx.cdtype
        layers = [item for kind, item in items if kind == "layer"]
        self.layers = KronLayers(layers, ctx, real, build_dtype) if layers else None
        self.cdtype = ctx.cdtype
        # the product, right to left: ("layer", index) | ("const", matrix) | ("multi", GateUnitary);
        # constant multi-qubit gates (e.g. a CX chain) are multiplied once, here
        self.plan: list = []
        n_layers = 0
        for kind, item in items:
            if kind == "layer":
                self.plan.append(("layer", n_layers))
                n_layers += 1
                continue
            gate = GateUnitary(item, ctx, real, build_dtype)
            if item.depends_on_weight:
                self.plan.append(("multi", gate))
            elif self.plan and self.plan[-1][0] == "const":
                self.plan[-1] = ("const", gate(None) @ self.plan[-1][1])
            else:
                self.plan.append(("const", gate(None)))

    def unitary(self, w: torch.Tensor | None) -> torch.Tensor:
        stack = self.layers(w) if self.layers is not None else None
        u = None
        for kind, item in self.plan:
            m = stack[item] if kind == "layer" else item if kind == "const" else item(w)
            u = m if u is None else m @ u
        return u  # real for a real run: it then acts on real and imaginary parts in one product

    def __call__(self, state: torch.Tensor, x1: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return apply_unitary(state, self.unitary(w))


class ConstantUnitary:
    """A fused run with no weights at all: its unitary is computed once."""

    def __init__(self, ops: list[Op], ctx: Context):
        self.matrix = FusedUnitary(ops, ctx).unitary(None).contiguous()

    def __call__(self, state: torch.Tensor, x1: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return apply_unitary(state, self.matrix)


FUSE_MAX_QUBITS = 6  # fused faster up to 6 qubits, Kronecker blocks from 7 (batch 256, fwd+bwd: benchmarks.qnn_throughput --qubit-sweep)


def _compile_segment(kind: str, ops: list[Op], ctx: Context, fuse_max_qubits: int):
    if kind == "monomial":
        return MonomialSegment(ops, ctx)
    if kind == "fused":
        if ctx.n > fuse_max_qubits:
            return GateByGate(ops, ctx)
        weighted = any(op.depends_on_weight for op in ops)
        return FusedUnitary(ops, ctx) if weighted else ConstantUnitary(ops, ctx)
    return BatchedGate(ops[0], ctx)


# -- observables: (2**n, B) state -> (B, n_obs)
def z_string_signs(label: str, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(2**n,) the ±1 value of the I/Z string `label` on every basis state (Qiskit order: qubit 0 last)."""
    bits = (torch.arange(2 ** len(label))[:, None] >> torch.arange(len(label))) & 1  # bit q is qubit q
    measured = [q for q, c in enumerate(reversed(label)) if c == "Z"]
    return torch.prod(1 - 2 * bits[:, measured], dim=1).to(dtype)


class Expectations:
    """<psi|O|psi> for each observable; one matmul with the probabilities when all are I/Z strings."""

    def __init__(self, observables: list, ctx: Context):
        terms = [[(lbl, complex(coef)) for lbl, coef in obs.to_list()] for obs in observables]
        self.diagonal = all(set(lbl) <= {"I", "Z"} for t in terms for lbl, _ in t)
        if not self.diagonal:
            self.matrix = torch.stack(
                [torch.as_tensor(obs.to_matrix(), dtype=ctx.cdtype) for obs in observables]
            )  # (n_obs, dim, dim)
            return
        rows = [sum(coef.real * z_string_signs(lbl, ctx.dtype) for lbl, coef in t) for t in terms]
        self.matrix = torch.stack(rows, dim=1)  # (dim, n_obs)

    def __call__(self, state: torch.Tensor) -> torch.Tensor:
        """(B, n_obs) from a (dim, B) column state."""
        if self.diagonal:
            # |amplitude|^2 summed after the product, on (n_obs, B, 2): a sum over the real/imaginary
            # axis of the whole state is a slow strided reduction, and .real/.imag back-propagate by zero-filling
            parts = torch.view_as_real(state).reshape(state.shape[0], -1)
            return (self.matrix.T @ (parts * parts)).reshape(self.matrix.shape[1], -1, 2).sum(-1).T
        vec = torch.einsum("oij,jb->oib", self.matrix, state)
        return torch.einsum("ib,oib->bo", state.conj(), vec).real


class StatevectorProgram:
    """Callable `(x (B, n_in), weights (n_w,)) -> (B, n_obs)` expectation values."""

    def __init__(self, n_qubits, prefix, segments, input_names, weight_names, observables, dtype,
                 fuse_max_qubits: int = FUSE_MAX_QUBITS):
        cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        ctx = Context(n_qubits, 2**n_qubits, dtype, cdtype, list(input_names), list(weight_names))
        self.n, self.dim, self.dtype, self.cdtype = n_qubits, ctx.dim, dtype, ctx.cdtype
        self.input_names, self.weight_names = input_names, weight_names
        self.prefix = _compile_prefix(prefix, ctx)
        self.segments = [_compile_segment(kind, ops, ctx, fuse_max_qubits) for kind, ops in segments]
        self.kinds = [kind for kind, _ in segments]
        self.expectations = Expectations(observables, ctx)

    def state(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The (dim, B) column states."""
        x = x.to(self.dtype)
        weights = weights.to(self.dtype)
        x1 = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        state = self.prefix(x1, weights)
        for segment in self.segments:
            state = segment(state, x1, weights)
        return state

    def __call__(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return self.expectations(self.state(x, weights))

    def with_probabilities(self, x: torch.Tensor, weights: torch.Tensor, detach: bool = True
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """Expectation values (B, n_obs) and the computational-basis probabilities (B, dim) of the same states:
        what shots are drawn from (detached), or what a shot variance is computed from (`detach=False`)."""
        state = self.state(x, weights)
        return self.expectations(state), ((state.detach() if detach else state).abs() ** 2).T.to(self.dtype)


def compile_circuit(circuit, input_params, weight_params, observables, dtype=torch.float64,
                    fuse_max_qubits: int | None = None) -> StatevectorProgram:
    """Compile `circuit` (decomposed as needed) into a `StatevectorProgram`; weight runs are fused into one
    unitary up to `fuse_max_qubits` qubits (default FUSE_MAX_QUBITS; benchmarks compare both paths)."""
    n = circuit.num_qubits
    input_names = [p.name for p in input_params]
    weight_names = [p.name for p in weight_params]
    known = set(input_names) | set(weight_names)
    prefix: list[list[Op]] = [[] for _ in range(n)]
    segments: list[tuple[str, list[Op]]] = []
    in_prefix = True
    for inst in flatten_circuit(circuit):
        name = inst.operation.name
        params = list(inst.operation.params)
        names = {p.name for v in params if hasattr(v, "parameters") for p in v.parameters}
        if names - known:
            raise ValueError(f"circuit parameters {sorted(names - known)} are neither inputs nor weights")
        op = Op(name, [circuit.find_bit(q).index for q in inst.qubits], params,
                 bool(names & set(input_names)), bool(names & set(weight_names)))
        if in_prefix and len(op.qubits) == 1:
            prefix[op.qubits[0]].append(op)
            continue
        if in_prefix:
            in_prefix = False
            # single-qubit gates on different qubits commute, so each qubit's trailing
            # diagonal gates can join the phase segment that follows
            moved = []
            for ops in prefix:
                while ops and ops[-1].name in DIAGONAL and ops[-1].depends_on_input:
                    moved.insert(0, ops.pop())
            if moved:
                segments.append(("monomial", moved))
        _append(segments, op)
    fuse = FUSE_MAX_QUBITS if fuse_max_qubits is None else fuse_max_qubits
    return StatevectorProgram(n, prefix, segments, input_names, weight_names, observables, dtype, fuse)


def _append(segments: list, op: Op) -> None:
    monomial = op.name in DIAGONAL or op.name in PERMUTATION
    last = segments[-1] if segments else None
    if op.depends_on_input and not monomial:
        segments.append(("gate", [op]))
    elif monomial and (op.depends_on_input or last is None or last[0] == "monomial"):
        # constant permutations and phases join a phase segment for free
        if last is None or last[0] != "monomial":
            segments.append(last := ("monomial", []))
        last[1].append(op)
    elif last is not None and last[0] == "fused":
        last[1].append(op)
    else:
        segments.append(("fused", [op]))
