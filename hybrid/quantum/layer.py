"""The quantum feature-enhancement layer: one Qiskit circuit, three engines.

`build_circuit(config)` is the single source of truth. The `qnn` engine runs it through
qiskit-machine-learning (`EstimatorQNN` + `TorchConnector`) on any estimator, with
gradients; the `estimator` engine runs it forward-only through a runner made by a backend
(`backends.EstimatorRunner`: one job per batch, counted), which is how shots, noise and
real QPUs are reached at inference; the `statevector` engine compiles the *same* circuit
into batched torch tensor algebra (see `hybrid.quantum.statevector`), which is what makes training
practical. All read the same `nn.Parameter`, so a layer trained with one engine is
evaluated with another from the same `state_dict`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
from torch import nn

FEATURE_MAPS = ("angle", "ry", "zz")
ENTANGLEMENTS = ("linear", "circular", "full")
ENGINES = ("auto", "statevector", "qnn", "estimator")
PRECISIONS = {"float64": torch.float64, "float32": torch.float32}


@dataclass(frozen=True)
class QuantumConfig:
    n_qubits: int = 4  # one angle per qubit; 2**n amplitudes are simulated exactly
    feature_map: str = "zz"  # "angle" (RY/RZ per qubit), "ry" (RY per qubit) or "zz" (Qiskit's zz_feature_map)
    feature_map_reps: int = 2  # repetitions of the encoding block (Qiskit's default for zz)
    reps: int = 2  # ansatz repetitions (RY layers + entangling CX layers)
    entanglement: str = "linear"  # "linear", "circular" or "full", for feature map and ansatz
    observables: tuple[str, ...] = ()  # Pauli strings (Qiskit order, qubit 0 rightmost); () = Z on each qubit
    reupload: int = 1  # data re-uploading: (feature map, ansatz) blocks repeated, each with its own weights
    separable: bool = False  # every entangling (multi-qubit) gate removed: the no-entanglement control

    def __post_init__(self) -> None:
        if not isinstance(self.n_qubits, int) or self.n_qubits < 1:
            raise ValueError(f"n_qubits must be a positive integer, got {self.n_qubits!r}")
        if self.feature_map not in FEATURE_MAPS:
            raise ValueError(
                f"unknown feature map {self.feature_map!r}; choose one of {', '.join(FEATURE_MAPS)}"
            )
        if self.entanglement not in ENTANGLEMENTS:
            raise ValueError(
                f"unknown entanglement {self.entanglement!r}; "
                f"choose one of {', '.join(ENTANGLEMENTS)}"
            )
        for name in ("reps", "feature_map_reps", "reupload"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for label in self.observables:
            if len(label) != self.n_qubits or set(label) - set("IXYZ"):
                raise ValueError(
                    f"observable {label!r} must be a Pauli string of {self.n_qubits} "
                    "characters from I, X, Y, Z"
                )

    @property
    def observable_labels(self) -> tuple[str, ...]:
        if self.observables:
            return tuple(self.observables)
        n = self.n_qubits
        return tuple("I" * (n - 1 - q) + "Z" + "I" * q for q in range(n))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class CircuitSpec(NamedTuple):
    circuit: Any  # qiskit.QuantumCircuit
    input_params: list  # ParameterVector elements fed by the features
    weight_params: list  # trainable parameters
    observables: list  # SparsePauliOp, one per output


def _angle_feature_map(n_qubits: int, reps: int, with_rz: bool = True):
    """RY(x) RZ(x) on each qubit (`with_rz=False`: RY(x) only; Mari et al.'s dressed circuit puts H before it,
    which the ansatz's first RY layer can absorb), `reps` times. Each of these encoding gates adds one to the
    highest frequency the outputs have in x."""
    from qiskit import QuantumCircuit
    from qiskit.circuit import ParameterVector

    x = ParameterVector("x", n_qubits)
    qc = QuantumCircuit(n_qubits)
    for _ in range(reps):
        for q in range(n_qubits):
            qc.ry(x[q], q)
            if with_rz:
                qc.rz(x[q], q)
    return qc


OBSERVABLE_SETS = ("z", "zz", "z+zz")


def pauli_observables(n_qubits: int, kind: str = "z") -> tuple[str, ...]:
    """Pauli labels (Qiskit order): "z" Z on each qubit, "zz" Z⊗Z on neighbours (i, i+1), "z+zz" both,
    so the layer can have more outputs than qubits."""
    if kind not in OBSERVABLE_SETS:
        raise ValueError(f"unknown observable set {kind!r}; choose one of {', '.join(OBSERVABLE_SETS)}")
    z = ["I" * (n_qubits - 1 - q) + "Z" + "I" * q for q in range(n_qubits)]
    zz = ["I" * (n_qubits - 2 - q) + "ZZ" + "I" * q for q in range(n_qubits - 1)]
    labels = {"z": z, "zz": zz, "z+zz": z + zz}[kind]
    if not labels:
        raise ValueError(f"observables {kind!r} need at least 2 qubits")
    return tuple(labels)


def _feature_map(config: QuantumConfig):
    from qiskit.circuit.library import zz_feature_map

    n = config.n_qubits
    if config.feature_map == "zz":
        if n < 2:  # its ZZ terms need a pair of qubits; Qiskit fails deep inside with a QiskitError
            raise ValueError("the zz feature map needs at least 2 qubits; use n_qubits >= 2, or the 'angle' or "
                             "'ry' feature map (--feature-map angle) for a single qubit")
        return zz_feature_map(n, reps=config.feature_map_reps, entanglement=config.entanglement)
    return _angle_feature_map(n, config.feature_map_reps, with_rz=config.feature_map == "angle")


def without_entanglers(circuit):
    """The same circuit with every multi-qubit gate removed (decomposed first, so a composite block
    loses only its entangling gates): what is left is a product of single-qubit circuits."""
    flat = circuit
    while any(inst.operation.num_qubits > 1 and inst.operation.name not in TWO_QUBIT_GATES for inst in flat.data):
        flat = flat.decompose()
    out = flat.copy_empty_like()
    for inst in flat.data:
        if inst.operation.num_qubits == 1:
            out.append(inst.operation, inst.qubits)
    return out


TWO_QUBIT_GATES = ("cx", "cz", "cy", "swap", "rzz", "rxx", "ryy", "cp", "crz", "crx", "cry", "ecr", "iswap")


def build_circuit(config: QuantumConfig) -> CircuitSpec:
    """The layer's circuit: feature map on `x`, then a RealAmplitudes ansatz on `θ`; with re-uploading,
    that pair `reupload` times (the same inputs, new weights per block: θ, θ1, θ2, ...)."""
    from qiskit.circuit.library import real_amplitudes
    from qiskit.quantum_info import SparsePauliOp

    n = config.n_qubits
    feature_map = _feature_map(config)
    circuit, weight_params = feature_map.copy(), []
    for block in range(config.reupload):
        if block:
            circuit.compose(feature_map, inplace=True)
        prefix = "θ" if block == 0 else f"θ{block}"  # block 0 keeps the names older checkpoints used
        ansatz = real_amplitudes(n, reps=config.reps, entanglement=config.entanglement, parameter_prefix=prefix)
        circuit.compose(ansatz, inplace=True)
        weight_params += sorted(ansatz.parameters, key=lambda p: p.index)
    if config.separable:
        circuit = without_entanglers(circuit)
    input_params = sorted(feature_map.parameters, key=lambda p: p.index)
    observables = [SparsePauliOp(label) for label in config.observable_labels]
    return CircuitSpec(circuit, input_params, weight_params, observables)


def resolve_engine(engine: str, estimator: Any = None) -> str:
    """`auto` means the exact torch engine unless an estimator (shots, noise, QPU) is given."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine == "auto":
        return "statevector" if estimator is None else "qnn"
    return engine


def build_qnn_connector(
    spec: CircuitSpec, *, estimator: Any = None, pass_manager: Any = None
) -> Any:
    """`TorchConnector(EstimatorQNN)` with input gradients, on the given estimator.

    The default estimator is Qiskit's exact `StatevectorEstimator` with precision 0; the
    QNN's own default precision (1/64) would add Gaussian noise to an exact simulator. A
    given estimator keeps its own precision (its shots), so the QNN passes none.

    With a pass manager the circuit is transpiled here, once, and the QNN gets that ISA
    circuit with the observables laid out on it. Given the pass manager too, EstimatorQNN
    (when the circuit has no layout) and its gradient would transpile again, and an
    unseeded transpiler may pick another layout: observables would be read on idle qubits.
    The ISA circuit's layout tells EstimatorQNN not to transpile, and the gradient's
    shifted circuits differ from it only in parameter values, so they need no pass manager.
    """
    from qiskit.primitives import StatevectorEstimator
    from qiskit_machine_learning.connectors import TorchConnector
    from qiskit_machine_learning.neural_networks import EstimatorQNN

    exact = estimator is None
    estimator = StatevectorEstimator(default_precision=0.0) if exact else estimator
    circuit = spec.circuit
    observables = spec.observables
    if pass_manager is not None:
        circuit = pass_manager.run(circuit)
        observables = [obs.apply_layout(circuit.layout) for obs in observables]
    qnn = EstimatorQNN(
        circuit=circuit,
        estimator=estimator,
        observables=observables,
        input_params=spec.input_params,
        weight_params=spec.weight_params,
        input_gradients=True,
        default_precision=0.0 if exact else None,
    )
    return TorchConnector(qnn)


class QuantumLayer(nn.Module):
    """`(batch, n_qubits)` angles -> `(batch, n_observables)` expectation values.

    Args:
        config: circuit configuration.
        engine: "statevector" (exact, batched torch), "qnn" (EstimatorQNN + TorchConnector),
            "estimator" (forward-only, one job per batch through `make_runner`) or "auto"
            (statevector unless an estimator is given).
        estimator, pass_manager: collaborators for the qnn engine (see `backends`).
        make_runner: for the estimator engine, `spec -> runner` with
            `runner(angles (B, n_in), weights (n_w,)) -> (B, n_obs)`, e.g. `Backend.make_runner`.
        precision: "float64" (default) or "float32" for the statevector engine.
    """

    def __init__(
        self,
        config: QuantumConfig | None = None,
        *,
        engine: str = "auto",
        estimator: Any = None,
        pass_manager: Any = None,
        precision: str = "float64",
        seed: int | None = None,
        make_runner: Callable[[CircuitSpec], Callable] | None = None,
    ) -> None:
        super().__init__()
        self.config = config or QuantumConfig()
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose float64 or float32")
        self.precision = precision
        self.spec = build_circuit(self.config)
        self.engine = resolve_engine(engine, estimator)
        self.n_inputs = len(self.spec.input_params)
        self.n_outputs = len(self.spec.observables)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        # Small uniform init keeps the ansatz near identity-ish rotations at the start.
        init = (torch.rand(len(self.spec.weight_params), generator=generator) * 2 - 1) * math.pi / 4
        self.weight = nn.Parameter(init.to(torch.float64))
        self._forward_impl = self._make_engine(estimator, pass_manager, make_runner)

    def _make_engine(self, estimator: Any, pass_manager: Any,
                     make_runner: Callable | None) -> Callable[[torch.Tensor], torch.Tensor]:
        if self.engine == "statevector":
            from hybrid.quantum.statevector import compile_circuit

            program = compile_circuit(
                self.spec.circuit,
                self.spec.input_params,
                self.spec.weight_params,
                self.spec.observables,
                dtype=PRECISIONS[self.precision],
            )
            # Stored outside the module registry: it holds no parameters of its own.
            object.__setattr__(self, "program", program)
            object.__setattr__(self, "_device_programs", {})
            return lambda x: program(x, self.weight) if x.device.type == "cpu" else self._run_on_device(x)
        if self.engine == "estimator":
            if make_runner is None:
                raise ValueError("the estimator engine needs make_runner (e.g. backends.get_backend(...).make_runner)")
            runner = make_runner(self.spec)
            object.__setattr__(self, "runner", runner)
            return self._run_estimator
        connector = build_qnn_connector(self.spec, estimator=estimator, pass_manager=pass_manager)
        # The connector's forward reads `_weights`; pointing it at our Parameter shares the
        # weights between engines, and keeping the connector unregistered keeps the
        # state_dict to the single `weight` entry.
        connector._weights = self.weight
        object.__setattr__(self, "connector", connector)
        return lambda x: connector(x)

    def _run_on_device(self, x: torch.Tensor) -> torch.Tensor:
        """The statevector engine on x's device: compiled once per device with that device as torch's
        default, so the precomputed tensors and those made during the forward pass live beside x."""
        with torch.device(x.device):
            return self._device_program(x.device)(x, self.weight.to(x.device))

    def _device_program(self, device: torch.device):
        from hybrid.quantum.statevector import compile_circuit

        if device not in self._device_programs:
            with torch.device(device):
                self._device_programs[device] = compile_circuit(
                    self.spec.circuit, self.spec.input_params, self.spec.weight_params, self.spec.observables,
                    dtype=PRECISIONS[self.precision])
        return self._device_programs[device]

    def with_probabilities(self, x: torch.Tensor, detach: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """`(forward(x), probabilities (B, 2**n))` from one simulation; the exact statevector engine only
        (the joint shot noise of noise-aware training draws bitstrings from them; the marginal one differentiates
        its shot variance through them, `detach=False`)."""
        if self.engine != "statevector":
            raise ValueError(f"basis probabilities need the statevector engine, not {self.engine!r}")
        if x.device.type == "cpu":
            values, probabilities = self.program.with_probabilities(x, self.weight, detach)
        else:
            with torch.device(x.device):
                values, probabilities = self._device_program(x.device).with_probabilities(x, self.weight.to(x.device),
                                                                                          detach)
        return (values.to(x.dtype) if x.is_floating_point() else values), probabilities

    def _run_estimator(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            # a silent cut in the graph would train nothing; say so instead
            raise RuntimeError("the estimator engine runs forward only, without gradients; call it under "
                               "torch.no_grad(), or use engine 'qnn' to differentiate through a sampling backend")
        out = self.runner(x.detach().cpu().double().numpy(), self.weight.detach().cpu().double().numpy())
        return torch.as_tensor(out, dtype=torch.float64, device=x.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.n_inputs:
            raise ValueError(
                f"QuantumLayer expects input of shape (batch, {self.n_inputs}), "
                f"got {tuple(x.shape)}"
            )
        out = self._forward_impl(x)
        return out.to(x.dtype) if x.is_floating_point() else out

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"n_qubits={c.n_qubits}, feature_map={c.feature_map}, feature_map_reps={c.feature_map_reps}, "
            f"reps={c.reps}, "
            f"entanglement={c.entanglement}, reupload={c.reupload}, separable={c.separable}, "
            f"engine={self.engine}, precision={self.precision}"
        )


def qiskit_expectations(spec: CircuitSpec, x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Reference values from Qiskit's own `Statevector`, one sample at a time (for tests)."""
    from qiskit.quantum_info import Statevector

    out = np.empty((len(x), len(spec.observables)))
    for i, row in enumerate(np.atleast_2d(x)):
        binding = dict(zip(spec.input_params, row)) | dict(zip(spec.weight_params, weights))
        state = Statevector(spec.circuit.assign_parameters(binding))
        out[i] = [state.expectation_value(obs).real for obs in spec.observables]
    return out
