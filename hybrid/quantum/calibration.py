"""Fit how a device attenuates each of the layer's expectation values, for noise-aware training.

On a noisy device <O>_device ≈ a_O <O>_exact + shot noise: readout errors on the qubits O measures,
and the gate errors and decoherence in its light cone, shrink it toward 0 by a factor of its own.
The factors are a property of the circuit and the device, not of the data or the trained weights,
so they are fitted on random inputs and random weights before training, and the exact engine
then trains with them (hybrid.quantum.noise).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from hybrid.quantum.layer import CircuitSpec

# fitted factors are rounded (they are reproducible from a seeded simulator, and read in a config)
DIGITS = 3


def fit_attenuation(exact: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Least-squares `measured ≈ a * exact` per column (through the origin), clipped to (0, 1].

    A column the circuit keeps near 0 carries no information about its factor; it is refused
    rather than guessed."""
    exact, measured = np.asarray(exact, dtype=float), np.asarray(measured, dtype=float)
    if exact.shape != measured.shape or exact.ndim != 2:
        raise ValueError(f"expected two (samples, observables) arrays of one shape, got {exact.shape} "
                         f"and {measured.shape}")
    energy = (exact**2).sum(axis=0)
    if np.any(energy < 1e-6 * len(exact)):
        raise ValueError("an observable stays at 0 on every calibration input; its attenuation cannot be fitted")
    factors = (exact * measured).sum(axis=0) / energy
    return np.clip(factors, 10.0**-DIGITS, 1.0)


def exact_expectations(spec: CircuitSpec, angles: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Exact values of the logical circuit for a batch of inputs and one weight vector (Qiskit's own)."""
    from qiskit.primitives import StatevectorEstimator

    values = np.concatenate([angles, np.broadcast_to(weights, (len(angles), len(weights)))], axis=1)
    position = {p: i for i, p in enumerate(list(spec.input_params) + list(spec.weight_params))}
    columns = [position[p] for p in spec.circuit.parameters]
    job = StatevectorEstimator().run([(spec.circuit, list(spec.observables), values[:, columns][:, None, :])])
    return np.asarray(job.result()[0].data.evs, dtype=float)


def calibrate_attenuation(spec: CircuitSpec, run: Callable[[np.ndarray, np.ndarray], np.ndarray], *,
                          n_weight_draws: int = 8, n_inputs: int = 64, seed: int = 0) -> tuple[float, ...]:
    """Per-observable attenuation of the device behind `run((B, n_in) angles, weights) -> (B, n_obs)`.

    Inputs and weights are drawn uniformly from [-π, π] (every angle a layer can be given, modulo 2π);
    each weight draw is one job of `n_inputs` circuits."""
    rng = np.random.default_rng(seed)
    exact, measured = [], []
    for _ in range(n_weight_draws):
        angles = rng.uniform(-np.pi, np.pi, (n_inputs, len(spec.input_params)))
        weights = rng.uniform(-np.pi, np.pi, len(spec.weight_params))
        measured.append(np.asarray(run(angles, weights), dtype=float))
        exact.append(exact_expectations(spec, angles, weights))
    factors = fit_attenuation(np.concatenate(exact), np.concatenate(measured))
    return tuple(round(float(a), DIGITS) for a in factors)


def format_attenuation(factors: tuple[float, ...]) -> str:
    """The config's text form of the factors, `"0.905,0.91,..."`."""
    return ",".join(f"{a:g}" for a in factors)
