"""`torch_noisy`: the layer's circuit under an `aer_noisy` noise model, simulated in torch (hybrid.quantum.density).

The same noise `aer_noisy` samples (the circuit transpiled for the device, Aer's error channel after every gate,
each qubit's readout error), computed as a density matrix: with `shots=0` the noisy expectation values themselves,
otherwise every observable read from the same `shots` bitstrings per sample, as a device measures them. With
shots=0 a benchmark separates what the device's noise costs from what its shots cost; with shots it stands in for
`aer_noisy` at a fraction of its time (`benchmarks/noisy_engines.py`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from backends.noisy import DEFAULT_SHOTS, aer_noise
from backends.registry import Backend, BackendError, register_backend


class DensityRunner:
    """`runner(angles (B, n_in), weights (n_w,)) -> (B, n_obs)`: one counted job per batch."""

    def __init__(self, backend: Backend, spec: Any, noise_model: Any, pass_manager: Any, device: Any,
                 seed: int | None) -> None:
        import torch

        from backends.budget import circuit_summary
        from hybrid.quantum.density import device_density_program
        from hybrid.quantum.noise import ZStrings

        self.program = device_density_program(spec, noise_model, pass_manager)
        self.summary = circuit_summary(pass_manager.run(spec.circuit), device.target if device is not None else None)
        self.shots, self.stats = backend.shots, backend.stats
        self.signs = ZStrings(self.program.labels) if self.shots else None
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def __call__(self, angles: np.ndarray, weights: np.ndarray) -> np.ndarray:
        import torch

        started = time.perf_counter()
        with torch.no_grad():
            values, probabilities = self.program(torch.as_tensor(np.asarray(angles, dtype=float)),
                                                 torch.as_tensor(np.asarray(weights, dtype=float)))
            if self.shots:
                values = self.signs.bitstring_estimates(probabilities, self.shots, generator=self.generator)
        self.stats.add({"jobs": 1, "circuits": len(angles), "shots": len(angles) * self.shots, "samples": len(angles),
                        "wall_seconds": time.perf_counter() - started})
        return values.numpy()


@register_backend("torch_noisy")
def torch_noisy_backend(noise_model: str | None = None, depolarizing: Any = None, readout_error: float | None = None,
                        shots: int | None = None, seed: int | None = None, optimization_level: int = 1) -> Backend:
    """`aer_noisy`'s noise, simulated exactly in torch; `shots=0`: noisy expectation values without shot noise."""
    shots = DEFAULT_SHOTS if shots is None else shots
    if not isinstance(shots, int) or shots < 0:
        raise BackendError(f"shots must be 0 (the noisy expectation values) or a positive whole number, got {shots!r}")
    model, pass_manager, device = aer_noise(noise_model, depolarizing, readout_error, seed, optimization_level)
    what = f"noise model of {device.name}" if device is not None else (
        f"depolarizing {depolarizing if depolarizing is not None else 0}, readout error {readout_error or 0:g}")
    label = f"torch_noisy-{device.name}" if device is not None else "torch_noisy-simple"
    return Backend(
        name="torch_noisy",
        description=f"torch density-matrix simulation with the {what}, "
                    + (f"{shots} shots (joint bitstrings)" if shots else "noisy expectation values (no shots)"),
        pass_manager=pass_manager,
        num_qubits=device.num_qubits if device is not None else None,
        exact=False,
        options={"noise_model": device.name if device is not None else None, "shots": shots, "seed": seed,
                 "optimization_level": optimization_level},
        label=label + (f"-{shots}" if shots else "-noshots"),
        shots=shots,
        runner_factory=lambda backend, spec: DensityRunner(backend, spec, model, pass_manager, device, seed),
    )
