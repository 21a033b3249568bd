"""The quantum feature-enhancement layer and the compiler behind its fast engine.

`layer` builds the circuit and the `QuantumLayer` module (qiskit-machine-learning, estimator
and statevector engines); `statevector` compiles a circuit into torch; `gates` holds the
gate algebra the compiler uses.
"""

from hybrid.quantum.layer import (ENGINES, ENTANGLEMENTS, FEATURE_MAPS, PRECISIONS, CircuitSpec, QuantumConfig,
                                  QuantumLayer, build_circuit, qiskit_expectations)

__all__ = ["ENGINES", "ENTANGLEMENTS", "FEATURE_MAPS", "PRECISIONS", "CircuitSpec", "QuantumConfig",
           "QuantumLayer", "build_circuit", "qiskit_expectations"]
