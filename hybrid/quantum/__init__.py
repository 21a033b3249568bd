"""The quantum feature-enhancement layer and the compiler behind its fast engine.

`layer` builds the circuit and the `QuantumLayer` module (qiskit-machine-learning, estimator
and statevector engines); `statevector` compiles a circuit into torch; `gates` holds the
gate algebra the compiler uses; `noise` imitates shots and device noise on expectation values
for noise-aware training; `calibration` fits a device's attenuation of them.
"""

from hybrid.quantum.layer import (ENGINES, ENTANGLEMENTS, FEATURE_MAPS, OBSERVABLE_SETS, PRECISIONS, CircuitSpec,
                                  QuantumConfig, QuantumLayer, build_circuit, pauli_observables,
                                  qiskit_expectations)
from hybrid.quantum.noise import SHOT_NOISE, ExpectationNoise, NoiseModel

__all__ = ["ENGINES", "ENTANGLEMENTS", "FEATURE_MAPS", "OBSERVABLE_SETS", "PRECISIONS", "SHOT_NOISE", "CircuitSpec",
           "ExpectationNoise", "NoiseModel", "QuantumConfig", "QuantumLayer", "build_circuit", "pauli_observables",
           "qiskit_expectations"]
