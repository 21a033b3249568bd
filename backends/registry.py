"""A small registry of backends for the quantum layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

BACKENDS: dict[str, Callable[..., "Backend"]] = {}


@dataclass
class Backend:
    name: str
    description: str
    estimator: Any = None  # a Qiskit V2 estimator (None: exact torch simulation)
    pass_manager: Any = None  # turns the layer's circuit into an ISA circuit
    num_qubits: int | None = None  # qubits available (None: unlimited simulator)
    exact: bool = True  # exact expectation values: train and evaluate with the torch engine
    options: dict = field(default_factory=dict)

    def layer_kwargs(self) -> dict:
        """Keyword arguments for `QuantumLayer`: the fast engine when exact, else the QNN."""
        if self.exact:
            return {"engine": "statevector"}
        return {"engine": "qnn", "estimator": self.estimator, "pass_manager": self.pass_manager}


def register_backend(name: str):
    def decorator(factory: Callable[..., Backend]):
        BACKENDS[name] = factory
        return factory

    return decorator


def get_backend(name: str, **options) -> Backend:
    """Build a backend by name; unknown names raise a ValueError listing the valid ones."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; valid backends: {', '.join(sorted(BACKENDS))}")
    options = {k: v for k, v in options.items() if v is not None}
    return BACKENDS[name](**options)


@register_backend("statevector")
def statevector_backend(**_: Any) -> Backend:
    from qiskit.primitives import StatevectorEstimator

    return Backend(
        name="statevector",
        description="exact statevector (Qiskit StatevectorEstimator, precision 0)",
        estimator=StatevectorEstimator(default_precision=0.0),
        exact=True,
    )


@register_backend("aer")
def aer_backend(shots: int | None = None, seed: int | None = None, **_: Any) -> Backend:
    """Aer's estimator: exact by default; `shots` adds sampling noise."""
    from qiskit_aer.primitives import EstimatorV2 as AerEstimator

    if shots:
        options = {"default_precision": 1 / shots**0.5, "run_options": {"seed": seed}}
        description = f"Aer simulator, {shots} shots"
    else:
        options = {"default_precision": 0.0}
        description = "Aer simulator, exact expectation values"
    estimator = AerEstimator(options={k: v for k, v in options.items()})
    return Backend(
        name="aer",
        description=description,
        estimator=estimator,
        exact=not shots,
        options={"shots": shots, "seed": seed},
    )
