"""Gate matrices, diagonal phases, permutations and gate angles in torch, for the statevector engine.

Qiskit's little-endian convention throughout: basis index k = sum_q bit_q * 2**q, and the
first qubit argument of a multi-qubit gate is the least significant bit of its matrix.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

# name -> (n_qubits, n_params)
SINGLE = {"h": 0, "x": 0, "y": 0, "z": 0, "s": 0, "sdg": 0, "t": 0, "tdg": 0, "sx": 0,
          "sxdg": 0, "id": 0, "rx": 1, "ry": 1, "rz": 1, "p": 1, "u": 3, "u1": 1, "u2": 2, "u3": 3}
TWO = {"cx": 0, "cy": 0, "cz": 0, "swap": 0, "cp": 1, "crx": 1, "cry": 1, "crz": 1,
       "rzz": 1, "rxx": 1, "ryy": 1}
DIAGONAL = {"z", "s", "sdg", "t", "tdg", "id", "rz", "p", "u1", "cz", "cp", "crz", "rzz"}
PERMUTATION = {"x", "cx", "swap"}
REAL_GATES = {"ry", "h", "x", "z", "cx", "cz", "swap", "id", "cry"}  # real matrices for real angles
SUPPORTED = sorted(set(SINGLE) | set(TWO))
_FIXED_PHASE = {"z": math.pi, "s": math.pi / 2, "sdg": -math.pi / 2, "t": math.pi / 4,
                "tdg": -math.pi / 4, "id": 0.0}


class UnsupportedGateError(ValueError):
    """A gate or parameter expression the statevector engine cannot compile."""


# --- parameter expressions
def compile_expression(value: Any) -> tuple[Callable[[dict], Any], set[str]]:
    """A ParameterExpression (or number) as a function of {parameter name: tensor}."""
    if not hasattr(value, "parameters"):
        constant = float(value)
        return (lambda env: constant), set()
    names = {p.name for p in value.parameters}
    sym = value.sympify()

    def build(node):
        import sympy

        if node.is_Symbol:
            name = node.name
            return lambda env: env[name]
        if node.is_Number:
            c = float(node)
            return lambda env: c
        args = [build(a) for a in node.args]
        if isinstance(node, sympy.Add):
            return lambda env: _fold(args, env, lambda a, b: a + b)
        if isinstance(node, sympy.Mul):
            return lambda env: _fold(args, env, lambda a, b: a * b)
        if isinstance(node, sympy.Pow):
            return lambda env: args[0](env) ** args[1](env)
        funcs = {sympy.sin: torch.sin, sympy.cos: torch.cos, sympy.exp: torch.exp,
                 sympy.tan: torch.tan, sympy.acos: torch.acos, sympy.asin: torch.asin}
        for sym_f, torch_f in funcs.items():
            if isinstance(node, sym_f):
                return lambda env: torch_f(torch.as_tensor(args[0](env)))
        raise UnsupportedGateError(f"cannot compile parameter expression {node!r}")

    return build(sym), names


def _fold(args, env, op):
    out = args[0](env)
    for a in args[1:]:
        out = op(out, a(env))
    return out


class AngleBank:
    """Evaluates a list of gate angles as one (B, G) tensor (or (G,) without inputs).

    ``x1=None`` (``weights=None``) is allowed when no angle depends on the inputs (weights),
    as for the constant and weight-only pieces the compiler evaluates without a batch.
    """

    def __init__(self, values: list, input_names: list[str], weight_names: list[str], dtype):
        import sympy

        self.dtype = dtype
        self.size = len(values)
        self.mode = "empty" if not values else None
        symbols = [sympy.Symbol(name) for name in input_names]
        exprs = [v.sympify() if hasattr(v, "parameters") else sympy.Float(float(v)) for v in values]
        if self.mode is None and all(not (e.free_symbols - set(symbols)) for e in exprs):
            self._try_polynomial(exprs, symbols)
        weight_index = {name: i for i, name in enumerate(weight_names)}
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

    def _try_polynomial(self, exprs: list, symbols: list) -> None:
        """Mode "poly" when every angle is a polynomial of degree <= 2 in the inputs."""
        import sympy

        n_in = len(symbols)
        # degree <= 2 monomials over [x_0..x_{n-1}, 1]: pairs (i, j), index n_in means "1"
        pairs = [(i, j) for i in range(n_in + 1) for j in range(i, n_in + 1)]
        coef = torch.zeros(len(pairs), len(exprs), dtype=self.dtype)
        for g, e in enumerate(exprs):
            poly = sympy.Poly(e, *symbols) if symbols else None
            if poly is None or poly.total_degree() > 2:
                return
            for monom, c in poly.terms():
                idx = [i for i, power in enumerate(monom) for _ in range(power)]
                idx += [n_in] * (2 - len(idx))
                coef[pairs.index(tuple(sorted(idx))), g] += float(c)
        used = coef.abs().sum(dim=1) > 0
        self.mode = "poly"
        self.coef = coef[used]
        self.left = torch.tensor([p[0] for p, u in zip(pairs, used) if u])
        self.right = torch.tensor([p[1] for p, u in zip(pairs, used) if u])

    def monomials(self, x1: torch.Tensor) -> torch.Tensor:
        """The (B, M) monomials of the "poly" mode: the angles are monomials @ coef."""
        return x1[:, self.left] * x1[:, self.right]

    def columns(self, x1: torch.Tensor) -> torch.Tensor:
        """The "poly" angles transposed, (G, B), computed in that orientation (no transposed copy)."""
        return self.coef.T @ self.monomials(x1).T

    def __call__(self, x1: torch.Tensor | None, weights: torch.Tensor | None) -> torch.Tensor:
        if self.mode == "poly":
            if x1 is None:  # input-free angles use only the monomial "1"
                return self.coef.sum(dim=0)
            return self.monomials(x1) @ self.coef
        if self.mode == "gather":
            if weights is None:  # weight-free angles are the constants
                return self.constant
            return torch.where(self.is_weight, weights[self.index], self.constant)
        env = {} if weights is None else {name: weights[i] for i, name in enumerate(self.weight_names)}
        if x1 is not None:
            env.update({name: x1[:, i] for i, name in enumerate(self.input_names)})
        cols = [torch.as_tensor(f(env), dtype=self.dtype) for f in self.functions]
        if any(c.dim() > 0 for c in cols):
            return torch.stack([c.expand(x1.shape[0]) for c in cols], dim=-1)
        return torch.stack(cols)


# --- gate matrices
def gate_matrix(name: str, params: list, dtype: torch.dtype) -> torch.Tensor:
    """Matrix of a gate; params may be Python floats or tensors of shape (B,) (batched)."""
    c = lambda v: torch.as_tensor(v, dtype=dtype)  # noqa: E731
    p = [c(v) for v in params]
    batch = next((v.shape for v in p if v.dim() > 0), torch.Size())
    one = torch.ones(batch, dtype=dtype)
    zero = torch.zeros(batch, dtype=dtype)

    def mat(rows):
        return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)

    def e(phi):
        return torch.exp(1j * phi)

    i = 1j
    if name in ("rx", "ry", "rz", "p", "u1", "u", "u3", "u2"):
        if name == "rx":
            h = p[0] / 2
            return mat([[torch.cos(h) * one, -i * torch.sin(h)], [-i * torch.sin(h), torch.cos(h) * one]])
        if name == "ry":  # the ansatz's gate: cos and sin once, one stack (fewer kernels and graph nodes)
            h = p[0] / 2
            c, s = torch.cos(h), torch.sin(h)
            return torch.stack([c, -s, s, c], dim=-1).reshape(h.shape + (2, 2))
        if name == "rz":
            h = p[0] / 2
            return mat([[e(-h), zero], [zero, e(h)]])
        if name in ("p", "u1"):
            return mat([[one, zero], [zero, e(p[0])]])
        theta, phi, lam = (c(math.pi / 2), p[0], p[1]) if name == "u2" else (p[0], p[1], p[2])
        ct, st = torch.cos(theta / 2) * one, torch.sin(theta / 2) * one
        return mat([[ct, -e(lam) * st], [e(phi) * st, e(phi + lam) * ct]])
    fixed = {
        "h": [[1 / math.sqrt(2), 1 / math.sqrt(2)], [1 / math.sqrt(2), -1 / math.sqrt(2)]],
        "x": [[0, 1], [1, 0]], "y": [[0, -1j], [1j, 0]], "z": [[1, 0], [0, -1]],
        "s": [[1, 0], [0, 1j]], "sdg": [[1, 0], [0, -1j]], "id": [[1, 0], [0, 1]],
        "t": [[1, 0], [0, complex(math.cos(math.pi / 4), math.sin(math.pi / 4))]],
        "tdg": [[1, 0], [0, complex(math.cos(math.pi / 4), -math.sin(math.pi / 4))]],
        "sx": [[0.5 + 0.5j, 0.5 - 0.5j], [0.5 - 0.5j, 0.5 + 0.5j]],
        "sxdg": [[0.5 - 0.5j, 0.5 + 0.5j], [0.5 + 0.5j, 0.5 - 0.5j]],
    }
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    if name in fixed:
        return torch.tensor(fixed[name], dtype=cdtype)
    # Two-qubit gates, basis index = 2*b(q1) + b(q0) where q0 is the first qubit argument
    # (Qiskit's little-endian convention: the first qubit is the least significant bit).
    if name in ("cx", "cy", "cz", "cp", "crx", "cry", "crz"):
        target = {"cx": "x", "cy": "y", "cz": "z", "cp": "p", "crx": "rx", "cry": "ry", "crz": "rz"}[name]
        u = gate_matrix(target, params, dtype).to(cdtype)
        full = torch.zeros(u.shape[:-2] + (4, 4), dtype=cdtype)
        full[..., 0, 0] = 1  # control (q0) = 0: identity on target
        full[..., 2, 2] = 1
        full[..., 1::2, 1::2] = u  # control = 1: indices 1 (t=0) and 3 (t=1)
        return full
    if name == "swap":
        return torch.tensor([[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=cdtype)
    if name in ("rzz", "rxx", "ryy"):
        pauli = gate_matrix({"rzz": "z", "rxx": "x", "ryy": "y"}[name], [], dtype)
        pp = torch.kron(pauli, pauli)
        h = (p[0] / 2).to(cdtype)[..., None, None]
        eye = torch.eye(4, dtype=cdtype)
        return torch.cos(h) * eye - 1j * torch.sin(h) * pp
    raise UnsupportedGateError(f"gate {name!r} is not supported")


def diagonal_phase(name: str, qubits: Sequence[int], dim: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Phase of a diagonal gate on each basis state as `angle * slope + offset`."""
    k = torch.arange(dim)
    bits = [(k >> q) & 1 for q in qubits]
    b = bits[0].to(dtype)
    zero = torch.zeros(dim, dtype=dtype)
    if name in _FIXED_PHASE:
        return zero, _FIXED_PHASE[name] * b
    if name == "rz":
        return b - 0.5, zero
    if name in ("p", "u1"):
        return b, zero
    both = (bits[0] & bits[1]).to(dtype)
    if name == "cz":
        return zero, math.pi * both
    if name == "cp":
        return both, zero
    if name == "crz":
        return bits[0].to(dtype) * (bits[1].to(dtype) - 0.5), zero
    if name == "rzz":
        return (bits[0] ^ bits[1]).to(dtype) - 0.5, zero
    raise UnsupportedGateError(name)


def permutation(name: str, qubits: Sequence[int], dim: int) -> torch.Tensor:
    """Index map p with P|k> = |p[k]>."""
    k = torch.arange(dim)
    if name == "x":
        return k ^ (1 << qubits[0])
    if name == "cx":
        return torch.where((k >> qubits[0]) & 1 == 1, k ^ (1 << qubits[1]), k)
    if name == "swap":
        a, b = qubits
        differ = ((k >> a) & 1) != ((k >> b) & 1)
        return torch.where(differ, k ^ ((1 << a) | (1 << b)), k)
    raise UnsupportedGateError(name)


def apply_gate_columns(state: torch.Tensor, matrix: torch.Tensor, qubits: Sequence[int], n: int) -> torch.Tensor:
    """Apply a 2**k x 2**k matrix, or one per state (B, 2**k, 2**k), on `qubits` of a (2**n, B) state."""
    batch = state.shape[1]
    k = len(qubits)
    # Tensor axes: axis n-1-q holds qubit q (most significant first), the last axis the batch.
    axes = [n - 1 - q for q in reversed(qubits)]  # most significant gate bit first
    order = axes + [a for a in range(n + 1) if a not in axes]
    t = state.reshape((2,) * n + (batch,)).permute(order).reshape(2**k, -1, batch)
    t = torch.einsum("bij,jrb->irb", matrix, t) if matrix.dim() == 3 else (matrix @ t.reshape(2**k, -1))
    inverse = [0] * (n + 1)
    for position, axis in enumerate(order):
        inverse[axis] = position
    return t.reshape((2,) * n + (batch,)).permute(inverse).reshape(2**n, batch)


def flatten_circuit(circuit) -> list:
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


def kron_states(qubit_states: list[torch.Tensor], batch: int) -> torch.Tensor:
    """The (2**n, B) product state of per-qubit (B, 2) or (2,) states, qubit 0 least significant."""
    state = qubit_states[0].expand(batch, 2).T
    for v in qubit_states[1:]:  # higher qubits are more significant
        state = (v.expand(batch, 2).T[:, None, :] * state[None, :, :]).reshape(-1, batch)
    return state


def to_build_dtype(m: torch.Tensor, real: bool, build_dtype: torch.dtype) -> torch.Tensor:
    """A gate matrix in the run's build dtype: real runs drop the (zero) imaginary part."""
    return m.real if real and m.is_complex() else m.to(build_dtype)
