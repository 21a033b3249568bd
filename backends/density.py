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

from backends.noisy import DEFAULT_SHOTS, aer_noise, simple_noise
from backends.registry import Backend, BackendError, register_backend


class DensityRunner:
    """`runner(angles (B, n_in), weights (n_w,)) -> (B, n_obs)`: one counted job per batch."""

    def __init__(self, backend: Backend, spec: Any, noise_model: Any, pass_manager: Any, device: Any,
                 seed: int | None) -> None:
        import torch

        from backends.budget import circuit_summary
        from backends.runner import check_fits
        from hybrid.quantum.density import device_density_program
        from hybrid.quantum.noise import ZStrings

        check_fits(spec, backend.num_qubits, backend.label)  # before the transpiler fails less clearly
        self.spec = spec
        self.program = device_density_program(spec, noise_model, pass_manager)
        # the circuit the program simulates: transpiling again could lay it out differently
        self.summary = circuit_summary(self.program.circuit, device.target if device is not None else None)
        self.shots, self.stats, self.dry_run = backend.shots, backend.stats, backend.dry_run
        self.signs = ZStrings(self.program.labels) if self.shots else None
        self.generator = torch.Generator()
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)

    def __call__(self, angles: np.ndarray, weights: np.ndarray) -> np.ndarray:
        import torch

        angles = np.asarray(angles, dtype=float)
        if len(angles) == 0:
            return np.zeros((0, len(self.program.labels)))
        counts = {"jobs": 1, "circuits": len(angles), "shots": len(angles) * self.shots, "samples": len(angles)}
        if self.dry_run:  # counted as planned, like EstimatorRunner's dry run; exact values stand in
            from hybrid.quantum.calibration import exact_expectations

            self.stats.add(counts)
            return exact_expectations(self.spec, angles, np.asarray(weights, dtype=float).reshape(-1))
        started = time.perf_counter()
        with torch.no_grad():
            values, probabilities = self.program(torch.as_tensor(angles),
                                                 torch.as_tensor(np.asarray(weights, dtype=float)))
            if self.shots:
                values = self.signs.bitstring_estimates(probabilities, self.shots, generator=self.generator)
        self.stats.add(counts | {"wall_seconds": time.perf_counter() - started})
        return values.numpy()


def _shots(shots: Any) -> int:
    """0 (noisy expectation values) or a whole number of shots; `1e3` from a spec counts as 1000."""
    if shots is None:
        return DEFAULT_SHOTS
    if isinstance(shots, bool) or not isinstance(shots, (int, float)) or shots < 0 or not float(shots).is_integer():
        raise BackendError(f"shots must be 0 (the noisy expectation values) or a positive whole number, got {shots!r}")
    return int(shots)


@register_backend("torch_noisy")
def torch_noisy_backend(noise_model: str | None = None, depolarizing: Any = None, readout_error: float | None = None,
                        shots: int | None = None, seed: int | None = None, optimization_level: int = 1) -> Backend:
    """`aer_noisy`'s noise, simulated exactly in torch; `shots=0`: noisy expectation values without shot noise."""
    shots = _shots(shots)
    model, pass_manager, device = aer_noise(noise_model, depolarizing, readout_error, seed, optimization_level)
    options = {"shots": shots, "seed": seed, "optimization_level": optimization_level}
    if device is not None:
        what, label = f"noise model of {device.name}", f"torch_noisy-{device.name}"
        options["noise_model"] = device.name
    else:  # the noise goes into the label and options, so results with other noise never share a file
        noise, tag = simple_noise(depolarizing, readout_error)
        p1, p2 = noise["depolarizing"]
        what = f"depolarizing p1={p1:g}, p2={p2:g}, readout error {noise['readout_error']:g}"
        label = f"torch_noisy-{tag}"
        options |= {"noise_model": None} | noise
    return Backend(
        name="torch_noisy",
        description=f"torch density-matrix simulation with the {what}, "
                    + (f"{shots} shots (joint bitstrings)" if shots else "noisy expectation values (no shots)"),
        pass_manager=pass_manager,
        num_qubits=device.num_qubits if device is not None else None,
        exact=False,
        options=options,
        label=label + (f"-{shots}" if shots else "-noshots"),
        shots=shots,
        runner_factory=lambda backend, spec: DensityRunner(backend, spec, model, pass_manager, device, seed),
    )
