"""`aer_noisy`: Aer with a realistic noise model, transpiled for the device it imitates.

The noise comes from a named fake IBM device (`fake_brisbane`, `fake_manila`, ... from
qiskit_ibm_runtime.fake_provider: calibrated gate errors, T1/T2, readout errors, coupling map
and basis gates) or from two simple parameters: depolarizing error rates and a symmetric
readout error, on an all-to-all device with IBM's basis gates.
"""

from __future__ import annotations

import re
from typing import Any

from backends.registry import Backend, BackendError, register_backend, sampling_estimator, shots_from

DEFAULT_DEVICE = "fake_brisbane"
DEFAULT_SHOTS = 4096  # IBM Runtime's default precision, 1/64
SIMPLE_BASIS = ["cx", "rz", "sx", "x"]
_NOT_DEVICES = {"FakeProviderForBackendV2", "FakeFractionalBackend"}


def fake_device_names() -> list[str]:
    """Names of qiskit-ibm-runtime's fake devices (`fake_manila`, ...) without building them."""
    from qiskit_ibm_runtime import fake_provider

    names = [n for n in dir(fake_provider) if n.startswith("Fake") and n not in _NOT_DEVICES]
    return sorted("fake_" + re.sub(r"V2$", "", n[4:]).lower() for n in names)


def fake_device(name: str) -> Any:
    """A fake IBM device by name, e.g. `fake_brisbane`; unknown names list the valid ones."""
    from qiskit_ibm_runtime import fake_provider

    if not isinstance(name, str):  # `aer_noisy:0.01` meant a rate, not a device
        raise BackendError(f"noise_model takes a fake device name such as fake_brisbane, got {name!r}; for "
                           "simple noise give depolarizing=P (and readout_error=R) instead")
    key = name.lower().removeprefix("fake_").replace("_", "")
    for attr in dir(fake_provider):
        if attr.startswith("Fake") and attr not in _NOT_DEVICES:
            if re.sub(r"V2$", "", attr[4:]).lower() == key:
                return getattr(fake_provider, attr)()
    raise BackendError(f"unknown fake device {name!r}; valid names: {', '.join(fake_device_names())}")


def _rates(depolarizing: Any) -> tuple[float, float]:
    """`p` (both 1- and 2-qubit gates) or `"p1,p2"` / `"p1/p2"` -> (p1, p2)."""
    parts = depolarizing if isinstance(depolarizing, (tuple, list)) else re.split(r"[,/]", str(depolarizing))
    try:
        values = [float(v) for v in parts]
    except (TypeError, ValueError):
        values = []
    values = values * 2 if len(values) == 1 and not isinstance(depolarizing, (tuple, list)) else values
    if len(values) != 2 or not all(0 <= v <= 1 for v in values):
        raise BackendError(f"depolarizing must be a rate in [0, 1] or two rates 'P1,P2' for 1- and 2-qubit "
                           f"gates, got {depolarizing!r}")
    return values[0], values[1]


def _readout(readout_error: Any) -> float:
    """A symmetric readout error rate in [0, 0.5]."""
    try:
        r = float(readout_error or 0.0)
    except (TypeError, ValueError):
        r = -1.0
    if isinstance(readout_error, bool) or not 0 <= r <= 0.5:
        raise BackendError(f"readout_error must be a rate in [0, 0.5], got {readout_error!r}")
    return r


def simple_noise(depolarizing: Any = None, readout_error: Any = None) -> tuple[dict, str]:
    """The simple noise as report options and a label part: `({"depolarizing": [p1, p2], "readout_error": r},
    "p0.2-ro0.1")`, p1 shown only where it differs from p2, so that different noise never shares a label."""
    p1, p2 = _rates(depolarizing) if depolarizing is not None else (0.0, 0.0)
    r = _readout(readout_error)
    rates = f"p{p2:g}" if p1 == p2 else f"p{p1:g}_{p2:g}"
    return {"depolarizing": [p1, p2], "readout_error": r}, f"{rates}-ro{r:g}"


def simple_noise_model(depolarizing: Any = None, readout_error: float | None = None) -> Any:
    """Depolarizing errors on `sx`/`x` (p1) and `cx` (p2), and a symmetric readout error."""
    from qiskit_aer.noise import NoiseModel, ReadoutError, depolarizing_error

    model = NoiseModel(basis_gates=SIMPLE_BASIS)
    if depolarizing is not None:
        p1, p2 = _rates(depolarizing)
        if p1:
            model.add_all_qubit_quantum_error(depolarizing_error(p1, 1), ["sx", "x"])
        if p2:
            model.add_all_qubit_quantum_error(depolarizing_error(p2, 2), ["cx"])
    r = _readout(readout_error)
    if r:
        model.add_all_qubit_readout_error(ReadoutError([[1 - r, r], [r, 1 - r]]))
    return model


def aer_noise(noise_model: str | None = None, depolarizing: Any = None, readout_error: float | None = None,
              seed: int | None = None, optimization_level: int = 1) -> tuple[Any, Any, Any]:
    """(Aer NoiseModel, pass manager, fake device or None) of `aer_noisy` with these options: what the
    backend runs, for engines that simulate the same noise themselves (hybrid.quantum.density)."""
    from qiskit.transpiler import generate_preset_pass_manager
    from qiskit_aer.noise import NoiseModel

    if (depolarizing is not None or readout_error is not None) and noise_model is not None:
        raise BackendError("give either a device noise model (--noise-model fake_NAME) or simple noise "
                           "parameters (--depolarizing, --readout-error), not both")
    if depolarizing is not None or readout_error is not None:
        pass_manager = generate_preset_pass_manager(optimization_level=optimization_level, basis_gates=SIMPLE_BASIS,
                                                    seed_transpiler=seed)
        return simple_noise_model(depolarizing, readout_error), pass_manager, None
    device = fake_device(noise_model or DEFAULT_DEVICE)
    pass_manager = generate_preset_pass_manager(optimization_level=optimization_level, backend=device,
                                                seed_transpiler=seed)
    return NoiseModel.from_backend(device), pass_manager, device


@register_backend("aer_noisy")
def aer_noisy_backend(noise_model: str | None = None, depolarizing: Any = None, readout_error: float | None = None,
                      shots: int | None = None, precision: float | None = None, seed: int | None = None,
                      optimization_level: int = 1) -> Backend:
    """Aer with a fake device's noise model and coupling map, or with simple noise parameters."""
    from qiskit_aer import AerSimulator

    shots = shots_from(shots, precision, default=DEFAULT_SHOTS)
    simple = depolarizing is not None or readout_error is not None
    model, pass_manager, device = aer_noise(noise_model, depolarizing, readout_error, seed, optimization_level)
    options = {"shots": shots, "seed": seed, "optimization_level": optimization_level}
    if simple:
        simulator = AerSimulator(noise_model=model, seed_simulator=seed)
        noise, tag = simple_noise(depolarizing, readout_error)
        p1, p2 = noise["depolarizing"]
        what = f"depolarizing p1={p1:g}, p2={p2:g}, readout error {noise['readout_error']:g}"
        options |= noise
        label, num_qubits = f"aer_noisy-{tag}-shots{shots}", None  # shots too: other counts, other files
    else:
        simulator = AerSimulator.from_backend(device, noise_model=model, seed_simulator=seed)
        what = f"noise model and coupling map of {device.name} ({device.num_qubits} qubits)"
        options["noise_model"] = device.name
        label, num_qubits = f"aer_noisy-{device.name}-shots{shots}", device.num_qubits
    return Backend(
        name="aer_noisy",
        description=f"Aer simulator with {what}, {shots} shots",
        estimator=sampling_estimator(simulator, shots, seed),
        pass_manager=pass_manager,
        num_qubits=num_qubits,
        exact=False,
        options=options,
        label=label,
        shots=shots,
        target=None if simple else device.target,
    )
