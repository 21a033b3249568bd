"""The layer's circuit as a device runs it, as a differentiable torch density-matrix simulation.

The exact engine (hybrid.quantum.statevector) simulates the logical circuit. A device runs the
circuit transpiled to its gates and qubits, and every gate is followed by that gate's error on those
qubits (depolarizing, thermal relaxation: the noise model Aer builds from the device's calibration);
each measured bit is then misread with that qubit's readout error. Fitting one attenuation factor per
observable (hybrid.quantum.calibration) imitates only the average of that. This engine applies the
same channels Aer applies, to a density matrix over the qubits the transpiled circuit touches, so
training sees the noisy expectation values themselves, and the basis probabilities the device's
bitstrings are drawn from; with no shots it also says what the device's errors alone cost (on
fake_manila: nothing measurable, results/quantum_heads/noise_sources/RULE.md).

Transpiled circuits on IBM devices use fixed gates (sx, x, cx, ecr, ...) and parametric rz. The rz
gates are diagonal, so runs of them between fixed gates collapse into one phase on ρ; their angles
are mostly linear in the layer's inputs and weights (the ZZ feature map's are products of inputs,
evaluated as expressions).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from hybrid.quantum.statevector import z_string_signs

SKIPPED = {"barrier", "delay"}  # no noise model used here puts errors on them
# ρ is (batch, 4**n) complex numbers and training keeps one per gate for the backward pass: 10 qubits at batch 128
# is already 2 GB a gate
MAX_QUBITS = 10


def linear_angle(value: Any, position: dict) -> tuple[np.ndarray, float]:
    """`value` (a number or a ParameterExpression of the layer's parameters) as (coefficients, offset)
    over `position`'s parameter order; a non-linear expression is refused."""
    coefficients = np.zeros(len(position))
    if not hasattr(value, "parameters"):
        return coefficients, float(value)
    for parameter in value.parameters:
        slope = value.gradient(parameter)
        if hasattr(slope, "parameters") and slope.parameters:
            raise ValueError(f"the transpiled angle {value} is not linear in {parameter}")
        coefficients[position[parameter]] = float(slope)
    offset = float(value.bind({p: 0.0 for p in value.parameters}))
    return coefficients, offset


TORCH_FUNCTIONS = {"sin": torch.sin, "cos": torch.cos, "exp": torch.exp, "sqrt": torch.sqrt, "log": torch.log}


def angle_function(value: Any, position: dict) -> Callable[[torch.Tensor], torch.Tensor]:
    """A non-linear angle (the ZZ feature map's (π - x_i)(π - x_j)) as `params (B, n_params) -> (B,)`."""
    import sympy

    expression = value.sympify()
    symbols = {str(s): s for s in expression.free_symbols}
    parameters = list(value.parameters)
    evaluate = sympy.lambdify([symbols[p.name] for p in parameters], expression, modules=[TORCH_FUNCTIONS])
    columns = [position[p] for p in parameters]
    return lambda params: evaluate(*[params[:, c] for c in columns])


def channel_superoperator(unitary: np.ndarray, kraus: Sequence[np.ndarray] | None) -> np.ndarray:
    """S with S[(a,b),(c,d)] = Σ_i K_i[a,c] conj(K_i[b,d]) for the Kraus operators of (error ∘ gate)."""
    operators = [unitary] if kraus is None else [k @ unitary for k in kraus]
    return sum(np.kron(k, k.conj()) for k in operators)


class DensityProgram:
    """`(x (B, n_in), weights (n_w,)) -> (values (B, n_obs), probabilities (B, 2**n_logical))` under noise.

    Args:
        circuit: the transpiled (ISA) circuit; its layout maps the logical qubits onto the device's.
        input_params, weight_params: the layer's parameters, in the order of x's columns and weights.
        labels: the layer's observables, Z-strings over the logical qubits (Qiskit order).
        gate_error: `(gate name, physical qubits) -> QuantumError or None`, applied after the gate.
        readout_error: `physical qubit -> (2, 2) P(read j | was i) or None`.
    """

    def __init__(self, circuit: Any, input_params: Sequence, weight_params: Sequence, labels: Sequence[str],
                 gate_error: Callable[[str, tuple], Any], readout_error: Callable[[int], Any]) -> None:
        from qiskit.quantum_info import Kraus, Operator

        if any(set(label) - {"I", "Z"} for label in labels):
            raise ValueError(f"the density engine reads observables from basis probabilities; {list(labels)} "
                             "are not all Z-strings")
        position = {p: i for i, p in enumerate(list(input_params) + list(weight_params))}
        self.circuit = circuit  # what it simulates (summaries describe this one, not another transpilation)
        self.labels = tuple(labels)
        ops = [(inst.operation, tuple(circuit.find_bit(q).index for q in inst.qubits)) for inst in circuit.data
               if inst.operation.name not in SKIPPED]
        measured = circuit.layout.final_index_layout() if circuit.layout is not None else list(range(len(labels[0])))
        self.physical = sorted({q for _, qubits in ops for q in qubits} | set(measured))
        if len(self.physical) > MAX_QUBITS:
            raise ValueError(f"the transpiled circuit touches {len(self.physical)} qubits; a density matrix of more "
                             f"than {MAX_QUBITS} is too large to simulate batch by batch (use aer_noisy to evaluate)")
        compact = {q: i for i, q in enumerate(self.physical)}
        self.n = len(self.physical)
        # (2**n, n): z of each compact qubit on each basis state
        self.signs = torch.stack([z_string_signs("I" * (self.n - 1 - q) + "Z" + "I" * q) for q in range(self.n)], 1)
        self.steps: list[tuple] = []  # ("phase", slopes, offsets, non-linear angles) or ("channel", rows, cols, S)
        for operation, qubits in ops:
            error = gate_error(operation.name, qubits)
            if operation.name == "rz" and error is None:
                self._add_phase(compact[qubits[0]], operation.params[0], position)
                continue
            if any(hasattr(p, "parameters") for p in operation.params):
                raise ValueError(f"the density engine takes fixed gates and rz; {operation.name} with parameters "
                                 f"{operation.params} is neither (transpile to the device's basis first)")
            kraus = None if error is None else Kraus(error).data
            superop = channel_superoperator(Operator(operation).data, kraus)
            self.steps.append(("channel", *self._axes([compact[q] for q in qubits]), torch.as_tensor(superop)))
        # the phases' slopes and offsets were summed in numpy while compiling; the forward pass wants tensors
        self.steps = [("phase", torch.as_tensor(step[1].T), torch.as_tensor(step[2]), step[3])
                      if step[0] == "phase" else step for step in self.steps]
        self.readout = [(compact[q], torch.as_tensor(np.asarray(m, dtype=float)))
                        for q in self.physical if (m := readout_error(q)) is not None]
        self.logical = [compact[q] for q in measured]
        self.observable_signs = torch.stack([z_string_signs(label) for label in labels], dim=1)

    def _axes(self, qubits: list[int]) -> tuple[list[int], list[int]]:
        """The row and column axes of `qubits` in ρ viewed as (B, 2, ..., 2), most significant (matrix bit
        k - 1, qubits[-1]) first: the order a k-qubit matrix's index reads them in."""
        n = self.n
        return [n - q for q in reversed(qubits)], [2 * n - q for q in reversed(qubits)]

    def _add_phase(self, qubit: int, angle: Any, position: dict) -> None:
        """Fold rz(angle) on `qubit` into the pending diagonal phase: a linear angle into its slopes and
        offset, any other into a function of the parameters."""
        if not self.steps or self.steps[-1][0] != "phase":
            self.steps.append(("phase", np.zeros((self.n, len(position))), np.zeros(self.n), []))
        _, slopes, offsets, others = self.steps[-1]
        try:
            coefficients, offset = linear_angle(angle, position)
        except ValueError:
            others.append((qubit, angle_function(angle, position)))
            return
        slopes[qubit] += coefficients
        offsets[qubit] += offset

    def __call__(self, x: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params = torch.cat([x.double(), weights.double().expand(len(x), -1)], dim=1)  # (B, n_params)
        dim = 2**self.n
        rho = torch.zeros(len(x), dim, dim, dtype=torch.complex128)
        rho[:, 0, 0] = 1.0
        for step in self.steps:
            rho = self._phase(rho, params, *step[1:]) if step[0] == "phase" else self._channel(rho, *step[1:])
        probabilities = self._read(rho.diagonal(dim1=1, dim2=2).real)
        return probabilities @ self.observable_signs, probabilities

    def _phase(self, rho: torch.Tensor, params: torch.Tensor, slopes: torch.Tensor, offsets: torch.Tensor,
               others: list) -> torch.Tensor:
        """ρ[j,k] · exp(-i Σ_q θ_q (z_q(j) - z_q(k)) / 2): every rz since the last fixed gate at once."""
        angles = params @ slopes + offsets  # (B, n)
        for qubit, function in others:
            angles = angles + function(params)[:, None] * (torch.arange(self.n) == qubit)
        half = 0.5 * angles @ self.signs.T  # (B, dim): Σ_q θ_q z_q(j) / 2
        return rho * torch.polar(torch.ones_like(half), -half)[:, :, None] * torch.polar(
            torch.ones_like(half), half)[:, None, :]

    def _channel(self, rho: torch.Tensor, rows: list[int], cols: list[int], superop: torch.Tensor) -> torch.Tensor:
        """S applied to the (row, column) indices of a gate's qubits (axes from `_axes`)."""
        n, batch, k = self.n, len(rho), len(rows)
        tensor = rho.reshape(batch, *[2] * (2 * n))
        moved = torch.movedim(tensor, rows + cols, list(range(2 * k)))
        shape = moved.shape
        out = (superop @ moved.reshape(4**k, -1)).reshape(shape)
        return torch.movedim(out, list(range(2 * k)), rows + cols).reshape(batch, 2**n, 2**n)

    def _read(self, probabilities: torch.Tensor) -> torch.Tensor:
        """Readout errors on every qubit, then the marginal over the logical qubits (bit i = logical i)."""
        n, batch = self.n, len(probabilities)
        p = probabilities.clamp_min(0.0).reshape(batch, *[2] * n)
        for qubit, matrix in self.readout:
            axis = n - qubit
            p = torch.movedim(torch.tensordot(p, matrix, dims=([axis], [0])), -1, axis)
        order = self._axes(self.logical)[0]  # most significant logical qubit first
        others = [a for a in range(1, n + 1) if a not in order]
        p = p.sum(dim=others) if others else p
        kept = sorted(order)
        p = p.permute(0, *[1 + kept.index(a) for a in order])
        return p.reshape(batch, -1)


def device_density_program(spec: Any, noise_model: Any, pass_manager: Any) -> DensityProgram:
    """The layer circuit `spec` transpiled by `pass_manager`, under an Aer `noise_model` of the device's qubits."""
    circuit = pass_manager.run(spec.circuit)
    labels = [obs.paulis[0].to_label() for obs in spec.observables]
    if any(len(obs) != 1 or obs.coeffs[0] != 1 for obs in spec.observables):
        raise ValueError("the density engine takes single Pauli-string observables with coefficient 1")
    return DensityProgram(circuit, spec.input_params, spec.weight_params, labels,
                          gate_error=lambda name, qubits: aer_gate_error(noise_model, name, qubits),
                          readout_error=lambda qubit: aer_readout_error(noise_model, qubit))


def aer_gate_error(noise_model: Any, name: str, qubits: tuple) -> Any:
    """The QuantumError Aer applies after `name` on `qubits`: the qubit-specific one, else the all-qubit one."""
    local = noise_model._local_quantum_errors.get(name, {})  # Aer keeps no public per-qubit lookup
    if qubits in local:
        return local[qubits]
    return noise_model._default_quantum_errors.get(name)


def aer_readout_error(noise_model: Any, qubit: int) -> Any:
    """P(read j | was i) for `qubit`, or None."""
    error = noise_model._local_readout_errors.get((qubit,), noise_model._default_readout_error)
    return None if error is None else error.probabilities
