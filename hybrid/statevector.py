"""Compile a parameterized Qiskit circuit into an exact, batched, differentiable torch program.

The circuit is walked instruction by instruction and cut into segments, each executed with
as few torch kernels as possible, because at 4-6 qubits the cost is kernel launches, not
arithmetic:

* product prefix: single-qubit gates before the first multi-qubit gate act on per-qubit
  2-vectors (all qubits at once when their gate sequences match), joined by a Kronecker
  product. Trailing diagonal gates move into the next phase segment;
* monomial segment: diagonal gates (RZ, P, CP, RZZ, CZ, ...) and permutations (X, CX, SWAP)
  compose into one permutation times one phase vector, so a whole ZZ block becomes
  ``state[:, perm] * exp(i * (features(x) @ W))`` - one matmul and one exp;
* fused unitary: every run of gates that does not depend on the input (constants and
  trainable weights) becomes one 2**n x 2**n matrix per forward pass, built layer by layer
  from Kronecker products; constant runs are multiplied once, at compile time;
* batched gate: any other input-dependent gate, applied on its own.

Angles are evaluated by `AngleBank`: polynomials of degree <= 2 in the inputs (every angle of
the angle and ZZ feature maps) become one matmul over the monomials [1, x_i, x_i x_j]; bare
weights become a gather; anything else falls back to per-expression torch closures, so input
gradients flow through products such as ZZ's (pi - x_i)(pi - x_j) in every case.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hybrid.gates import (
    DIAGONAL,
    REAL_GATES,
    PERMUTATION,
    SUPPORTED,
    UnsupportedGateError,
    apply_gate,
    compile_expression,
    diagonal_phase,
    gate_matrix,
    permutation,
)

__all__ = ["StatevectorProgram", "UnsupportedGateError", "compile_circuit"]


@dataclass
class _Op:
    name: str
    qubits: list[int]
    params: list  # Qiskit parameter values (floats or ParameterExpressions)
    depends_on_input: bool
    depends_on_weight: bool


def _complex(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


class AngleBank:
    """Evaluates a list of gate angles as one (B, G) tensor (or (G,) without inputs)."""

    def __init__(self, values: list, input_names: list[str], weight_names: list[str], dtype):
        import sympy

        self.dtype = dtype
        self.size = len(values)
        n_in = len(input_names)
        self.mode = "empty" if not values else None
        symbols = [sympy.Symbol(name) for name in input_names]
        weight_index = {name: i for i, name in enumerate(weight_names)}
        # degree <= 2 monomials over [x_0..x_{n-1}, 1]: pairs (i, j), index n_in means "1"
        pairs = [(i, j) for i in range(n_in + 1) for j in range(i, n_in + 1)]
        exprs = [v.sympify() if hasattr(v, "parameters") else sympy.Float(float(v)) for v in values]
        if self.mode is None and all(not (e.free_symbols - set(symbols)) for e in exprs):
            coef = torch.zeros(len(pairs), len(values), dtype=dtype)
            ok = True
            for g, e in enumerate(exprs):
                poly = sympy.Poly(e, *symbols) if symbols else None
                if poly is None or poly.total_degree() > 2:
                    ok = False
                    break
                for monom, c in poly.terms():
                    idx = [i for i, power in enumerate(monom) for _ in range(power)]
                    idx += [n_in] * (2 - len(idx))
                    coef[pairs.index(tuple(sorted(idx))), g] += float(c)
            if ok:
                used = coef.abs().sum(dim=1) > 0
                self.mode = "poly"
                self.coef = coef[used]
                self.left = torch.tensor([p[0] for p, u in zip(pairs, used) if u])
                self.right = torch.tensor([p[1] for p, u in zip(pairs, used) if u])
        if self.mode is None and all(not hasattr(v, "parameters") or
                                     (len(v.parameters) == 1 and e.is_Symbol and e.name in weight_index)
                                     for v, e in zip(values, exprs)):
            self.mode = "gather"
            self.index = torch.tensor([weight_index[e.name] if e.is_Symbol else 0 for e in exprs])
            self.is_weight = torch.tensor([e.is_Symbol for e in exprs])
            self.constant = torch.tensor([0.0 if e.is_Symbol else float(e) for e in exprs], dtype=dtype)
        if self.mode is None:
            self.mode = "closures"
            self.input_names, self.weight_names = input_names, weight_names
            self.functions = [compile_expression(v)[0] for v in values]

    def __call__(self, x1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if self.mode == "poly":
            return (x1[:, self.left] * x1[:, self.right]) @ self.coef
        if self.mode == "gather":
            return torch.where(self.is_weight, weights[self.index], self.constant)
        env = {} if weights is None else {name: weights[i] for i, name in enumerate(self.weight_names)}
        if x1 is not None:
            env.update({name: x1[:, i] for i, name in enumerate(self.input_names)})
        cols = [torch.as_tensor(f(env), dtype=self.dtype) for f in self.functions]
        if any(c.dim() > 0 for c in cols):
            return torch.stack([c.expand(x1.shape[0]) for c in cols], dim=-1)
        return torch.stack(cols)


class StatevectorProgram:
    """Callable `(x (B, n_in), weights (n_w,)) -> (B, n_obs)` expectation values."""

    def __init__(self, n_qubits, prefix, segments, input_names, weight_names, observables, dtype):
        self.n = n_qubits
        self.dim = 2**n_qubits
        self.dtype = dtype
        self.cdtype = _complex(dtype)
        self.input_names = input_names
        self.weight_names = weight_names
        self.steps = [self._compile_prefix(prefix)]
        self.steps += [self._compile_segment(kind, ops) for kind, ops in segments]
        self.kinds = [kind for kind, _ in segments]
        self._prepare_observables(observables)

    def _bank(self, values) -> AngleBank:
        return AngleBank(values, self.input_names, self.weight_names, self.dtype)

    # -- prefix: product state
    def _compile_prefix(self, prefix: list[list[_Op]]):
        names = [[op.name for op in ops] for ops in prefix]
        if not any(op.depends_on_input or op.depends_on_weight for ops in prefix for op in ops):
            # a constant product state (e.g. the Hadamard layer of ZZ) is computed once
            per_qubit = [[(op.name, self._bank(op.params)) for op in ops] for ops in prefix]
            constant = self._run_prefix(per_qubit, torch.zeros(1, 1), None)[0]
            return lambda x1, w: constant.expand(x1.shape[0], self.dim)
        if all(n == names[0] for n in names):
            # same gate sequence on every qubit: one batched 2x2 product per position
            banks = [(names[0][j], self._bank([ops[j].params[0] if ops[j].params else 0.0 for ops in prefix]),
                      bool(prefix[0][j].params))
                     for j in range(len(names[0]))]
            return lambda x1, w: self._run_uniform_prefix(banks, x1, w)
        per_qubit = [[(op.name, self._bank(op.params)) for op in ops] for ops in prefix]
        return lambda x1, w: self._run_prefix(per_qubit, x1, w)

    def _kron_states(self, qubit_states: list[torch.Tensor], batch: int) -> torch.Tensor:
        state = qubit_states[0].expand(batch, 2)
        for v in qubit_states[1:]:  # higher qubits are more significant
            state = (v.expand(batch, 2)[:, :, None] * state[:, None, :]).reshape(batch, -1)
        return state

    def _run_uniform_prefix(self, banks, x1, w):
        v = torch.zeros(self.n, 2, dtype=self.cdtype)
        v[:, 0] = 1
        for name, bank, has_params in banks:
            params = [bank(x1, w)] if has_params else []
            matrix = gate_matrix(name, params, self.dtype).to(self.cdtype)  # (..., n, 2, 2)
            v = (matrix * v[..., None, :]).sum(-1)
        if v.dim() == 2:
            v = v.expand(x1.shape[0], self.n, 2)
        return self._kron_states(list(v.unbind(1)), x1.shape[0])

    def _run_prefix(self, per_qubit, x1, w):
        states = []
        for ops in per_qubit:
            v = torch.tensor([1, 0], dtype=self.cdtype)
            for name, bank in ops:
                params = list(bank(x1, w).unbind(-1)) if bank.size else []
                v = (gate_matrix(name, params, self.dtype).to(self.cdtype) * v[..., None, :]).sum(-1)
            states.append(v)
        return self._kron_states(states, x1.shape[0])

    # -- segments
    def _compile_segment(self, kind: str, ops: list[_Op]):
        if kind == "monomial":
            return self._compile_monomial(ops)
        if kind == "fused":
            return self._compile_fused(ops)
        op = ops[0]
        bank = self._bank(op.params)

        def run_gate(state, x1, w):
            matrix = gate_matrix(op.name, list(bank(x1, w).unbind(-1)), self.dtype)
            return apply_gate(state, matrix.to(self.cdtype), op.qubits, self.n)

        return run_gate

    def _compile_monomial(self, ops: list[_Op]):
        """One permutation and one phase vector: state -> P (exp(i*phase) * state)."""
        perm = torch.arange(self.dim)
        slopes, values = [], []
        offset = torch.zeros(self.dim, dtype=self.dtype)
        for op in ops:
            if op.name in PERMUTATION:
                perm = permutation(op.name, op.qubits, self.dim)[perm]
                continue
            slope, off = diagonal_phase(op.name, op.qubits, self.dim, self.dtype)
            offset = offset + off[perm]
            if op.params:
                slopes.append(slope[perm])
                values.append(op.params[0])
        gather = None if torch.equal(perm, torch.arange(self.dim)) else torch.argsort(perm)
        bank = self._bank(values) if values else None
        slope_matrix = torch.stack(slopes) if slopes else None
        if bank is not None and bank.mode == "poly":
            # fold the angle polynomial into the slopes: phase = monomials @ (coef @ slopes)
            bank.coef = bank.coef @ slope_matrix
            slope_matrix = None

        def run_monomial(state, x1, w):
            phase = offset
            if bank is not None:
                angles = bank(x1, w)
                phase = (angles if slope_matrix is None else angles @ slope_matrix) + phase
            state = state * torch.complex(torch.cos(phase), torch.sin(phase))
            return state if gather is None else state[:, gather]

        return run_monomial

    def _compile_fused(self, ops: list[_Op]):
        """One unitary for a run of input-independent gates, rebuilt once per forward pass.

        Single-qubit gates are grouped into layers; every layer's matrix is the Kronecker
        product of its 2x2 gates, computed for all layers at once as
        ``prod_q M[slot[l, q], a_q, b_q]`` over the bits (a_q, b_q) of each matrix entry,
        so a whole RealAmplitudes block costs a handful of kernels, not one per gate.
        """
        items: list = []  # ("layer", {qubit: op}) or ("multi", op)
        for op in ops:
            last = items[-1] if items else None
            if len(op.qubits) == 1 and last and last[0] == "layer" and op.qubits[0] not in last[1]:
                last[1][op.qubits[0]] = op
            elif len(op.qubits) == 1:
                items.append(("layer", {op.qubits[0]: op}))
            else:
                items.append(("multi", op))
        layers = [item[1] for item in items if item[0] == "layer"]
        # RY/CX-type blocks are real: build them in real arithmetic (cheaper autograd)
        real = all(op.name in REAL_GATES for op in ops)
        build_dtype = self.dtype if real else self.cdtype

        def as_build(m: torch.Tensor) -> torch.Tensor:
            return m.real if real and m.is_complex() else m.to(build_dtype)

        groups: dict[str, list[_Op]] = {}
        for layer in layers:
            for op in layer.values():
                groups.setdefault(op.name, []).append(op)
        # slot 0 is the identity; then each gate name's ops in order
        slot_of: dict[int, int] = {}
        banks, offset = [], 1
        for name, group in groups.items():
            for i, op in enumerate(group):
                slot_of[id(op)] = offset + i
            bank = self._bank([op.params[0] for op in group]) if group[0].params else None
            banks.append((name, len(group), bank))
            offset += len(group)
        slots = torch.tensor([[slot_of[id(layer[q])] if q in layer else 0 for q in range(self.n)]
                              for layer in layers], dtype=torch.long).reshape(len(layers), self.n)
        k = torch.arange(self.dim)
        row_bits = torch.stack([(k >> q) & 1 for q in range(self.n)])  # (n, dim)
        a_idx, b_idx = row_bits[:, :, None], row_bits[:, None, :]  # broadcast to (n, dim, dim)
        eye2 = torch.eye(2, dtype=build_dtype)[None]

        def layer_matrices(w):
            mats = [eye2]
            for name, count, bank in banks:
                params = [bank(None, w)] if bank is not None else []
                m = as_build(gate_matrix(name, params, self.dtype))
                mats.append(m.expand(count, 2, 2) if m.dim() == 2 else m)
            table = torch.cat(mats)  # (slots, 2, 2)
            entries = table[slots[:, :, None, None], a_idx[None], b_idx[None]]  # (L, n, dim, dim)
            return entries.prod(dim=1)

        def multi_matrix(op, w):
            bank = self._bank(op.params)
            params = list(bank(None, w).unbind(-1)) if bank.size else []
            matrix = gate_matrix(op.name, params, self.dtype).to(self.cdtype)
            eye = torch.eye(self.dim, dtype=self.cdtype)
            return as_build(apply_gate(eye, matrix, op.qubits, self.n).transpose(0, 1))

        # constant multi-qubit gates (e.g. a CX chain) are multiplied once, here
        plan: list = []  # ("layer", index) | ("const", matrix) | ("multi", op)
        layer_index = 0
        for kind, item in items:
            if kind == "layer":
                plan.append(("layer", layer_index))
                layer_index += 1
            elif item.depends_on_weight:
                plan.append(("multi", item))
            elif plan and plan[-1][0] == "const":
                plan[-1] = ("const", multi_matrix(item, None) @ plan[-1][1])
            else:
                plan.append(("const", multi_matrix(item, None)))

        def fused_unitary(w):
            stack = layer_matrices(w) if layers else None
            u = None
            for kind, item in plan:
                m = stack[item] if kind == "layer" else item if kind == "const" else multi_matrix(item, w)
                u = m if u is None else m @ u
            return u.to(self.cdtype)

        if not any(op.depends_on_weight for op in ops):
            constant = fused_unitary(None).transpose(0, 1).contiguous()
            return lambda state, x1, w: state @ constant
        return lambda state, x1, w: state @ fused_unitary(w).transpose(0, 1)

    def _prepare_observables(self, observables) -> None:
        terms = [[(lbl, complex(coef)) for lbl, coef in obs.to_list()] for obs in observables]
        self.diagonal_obs = all(set(lbl) <= {"I", "Z"} for t in terms for lbl, _ in t)
        k = torch.arange(self.dim)
        if self.diagonal_obs:
            rows = []
            for t in terms:
                row = torch.zeros(self.dim, dtype=self.dtype)
                for lbl, coef in t:
                    sign = torch.ones(self.dim, dtype=self.dtype)
                    for q, ch in enumerate(reversed(lbl)):
                        if ch == "Z":
                            sign = sign * (1 - 2 * ((k >> q) & 1)).to(self.dtype)
                    row = row + coef.real * sign
                rows.append(row)
            self.obs_matrix = torch.stack(rows, dim=1)  # (dim, n_obs)
        else:
            self.obs_matrix = torch.stack(
                [torch.as_tensor(obs.to_matrix(), dtype=self.cdtype) for obs in observables]
            )  # (n_obs, dim, dim)

    def __call__(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        weights = weights.to(self.dtype)
        x1 = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        state = self.steps[0](x1, weights)
        for step in self.steps[1:]:
            state = step(state, x1, weights)
        if self.diagonal_obs:
            return (state.real**2 + state.imag**2) @ self.obs_matrix
        vec = torch.einsum("oij,bj->boi", self.obs_matrix, state)
        return torch.einsum("bi,boi->bo", state.conj(), vec).real


def compile_circuit(circuit, input_params, weight_params, observables, dtype=torch.float64) -> StatevectorProgram:
    """Compile `circuit` (decomposed as needed) into a `StatevectorProgram`."""
    n = circuit.num_qubits
    input_names = [p.name for p in input_params]
    weight_names = [p.name for p in weight_params]
    known = set(input_names) | set(weight_names)
    prefix: list[list[_Op]] = [[] for _ in range(n)]
    segments: list[tuple[str, list[_Op]]] = []
    in_prefix = True
    for inst in _flatten(circuit):
        name = inst.operation.name
        params = list(inst.operation.params)
        names = {p.name for v in params if hasattr(v, "parameters") for p in v.parameters}
        if names - known:
            raise ValueError(f"circuit parameters {sorted(names - known)} are neither inputs nor weights")
        op = _Op(name, [circuit.find_bit(q).index for q in inst.qubits], params,
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
    return StatevectorProgram(n, prefix, segments, input_names, weight_names, observables, dtype)


def _append(segments: list, op: _Op) -> None:
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


def _flatten(circuit) -> list:
    """Decompose until every instruction is a gate this compiler knows."""
    skip = {"barrier"}
    for _ in range(8):
        names = {inst.operation.name for inst in circuit.data}
        pending = names - set(SUPPORTED) - skip
        if not pending:
            return [inst for inst in circuit.data if inst.operation.name not in skip]
        decomposed = circuit.decompose(gates_to_decompose=list(pending))
        if {inst.operation.name for inst in decomposed.data} == names:
            break
        circuit = decomposed
    bad = sorted({inst.operation.name for inst in circuit.data} - set(SUPPORTED) - skip)
    raise UnsupportedGateError(
        f"the statevector engine cannot compile gate(s) {', '.join(bad)}; supported gates: "
        f"{', '.join(SUPPORTED)} (use engine='qnn' for this circuit)"
    )
