"""`--q-noise-device SPEC`: train for the device the layer will run on.

Two ways (`--q-noise-channel`):
- attenuation: before training, the layer's circuit runs on that backend (e.g. `aer_noisy:fake_manila`)
  with random inputs and weights, and each observable's attenuation is fitted
  (hybrid.quantum.calibration). The factors go into the run's config as `q_attenuation`, so the run
  records the noise it trained with and a rerun or a resume needs no backend.
- density: while training, the quantum slot runs a density-matrix simulation of the circuit transpiled
  for the device, under the device's own noise model (hybrid.quantum.density): the noisy expectation
  values and the probabilities its bitstrings are drawn from. Evaluation stays exact.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from hybrid.config import TrainConfig
from hybrid.model import quantum_config
from hybrid.quantum import build_circuit
from hybrid.quantum.calibration import calibrate_attenuation, format_attenuation

log = logging.getLogger("hybrid.device_noise")
CALIBRATION_SEED = 0  # one device, one noise model: every training seed trains with the same factors
DENSITY_OPTIONS = ("noise_model", "depolarizing", "readout_error", "optimization_level", "seed")


def _check_slot(cfg: TrainConfig) -> None:
    if not cfg.quantum or cfg.quantum_layer not in ("pqc", "separable"):
        raise ValueError("--q-noise-device calibrates the circuit in the quantum slot (or simulates it, with "
                         "--q-noise-channel density); this model has none "
                         f"(quantum={cfg.quantum}, quantum_layer={cfg.quantum_layer!r})")


def with_device_attenuation(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with `q_attenuation` fitted on `cfg.q_noise_device`; unchanged when no device is named, the
    factors are already there, or the device's noise is simulated (`q_noise_channel` density)."""
    if not cfg.q_noise_device or cfg.q_attenuation:
        return cfg
    _check_slot(cfg)
    if cfg.q_noise_channel == "density":
        return cfg
    from backends import get_backend, parse_backend_spec

    name, options = parse_backend_spec(cfg.q_noise_device)
    backend = get_backend(name, **({"seed": CALIBRATION_SEED} | options))
    try:
        if backend.reports_usage:
            raise ValueError(f"--q-noise-device {cfg.q_noise_device} would spend QPU time on calibration jobs; "
                             "calibrate on a simulator of the device (aer_noisy:fake_NAME) or give --q-attenuation")
        qconfig = quantum_config(cfg.model_config())
        spec = build_circuit(qconfig)
        factors = calibrate_attenuation(spec, backend.make_runner(spec), seed=CALIBRATION_SEED)
    finally:
        backend.close()
    text = format_attenuation(factors)
    log.info("attenuation of %s on %s: %s", ", ".join(qconfig.observable_labels),
             backend.label, text)
    return replace(cfg, q_attenuation=text)


def density_channel(cfg: TrainConfig) -> Any:
    """The `DensityProgram` of `cfg`'s circuit on `cfg.q_noise_device` (an `aer_noisy` spec), transpiled with
    the run's seed unless the spec gives one (a benchmark with the run's seed then runs the same layout)."""
    from backends import parse_backend_spec
    from backends.noisy import aer_noise
    from hybrid.quantum.density import device_density_program

    name, options = parse_backend_spec(cfg.q_noise_device)
    unknown = sorted(set(options) - set(DENSITY_OPTIONS))
    if name != "aer_noisy" or unknown:
        raise ValueError(f"--q-noise-channel density simulates an Aer noise model: --q-noise-device must be "
                         f"aer_noisy:fake_NAME or aer_noisy with depolarizing= / readout_error= "
                         f"(options {', '.join(DENSITY_OPTIONS)}), got {cfg.q_noise_device!r}"
                         + (f"; the training shots come from --q-train-shots, not {', '.join(unknown)}"
                            if unknown else ""))
    noise_model, pass_manager, _ = aer_noise(**({"seed": cfg.seed} | options))
    program = device_density_program(build_circuit(quantum_config(cfg.model_config())), noise_model, pass_manager)
    log.info("training through %s's noise model: %d qubits simulated (physical %s)", cfg.q_noise_device,
             program.n, program.physical)
    return program


def attach_noise_channel(network: Any, cfg: TrainConfig) -> None:
    """With `--q-noise-channel density`, the network's quantum slot trains through the device's noise."""
    if cfg.q_noise_device and cfg.q_noise_channel == "density":
        _check_slot(cfg)
        network.use_noise_channel(density_channel(cfg))
