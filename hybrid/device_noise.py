"""`--q-noise-device SPEC`: train for the device the layer will run on.

Before training, the layer's circuit runs on that backend (e.g. `aer_noisy:fake_manila`) with random
inputs and weights, and each observable's attenuation is fitted (hybrid.quantum.calibration). The
factors go into the run's config as `q_attenuation`, so the run records the noise it trained with
and a rerun or a resume needs no backend.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from hybrid.config import TrainConfig
from hybrid.model import quantum_config
from hybrid.quantum import build_circuit
from hybrid.quantum.calibration import calibrate_attenuation, format_attenuation

log = logging.getLogger("hybrid.device_noise")
CALIBRATION_SEED = 0  # one device, one noise model: every training seed trains with the same factors


def with_device_attenuation(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with `q_attenuation` fitted on `cfg.q_noise_device`; unchanged when no device is named or the
    factors are already there."""
    if not cfg.q_noise_device or cfg.q_attenuation:
        return cfg
    if not cfg.quantum or cfg.quantum_layer not in ("pqc", "separable"):
        raise ValueError("--q-noise-device calibrates the circuit in the quantum slot; this model has none "
                         f"(quantum={cfg.quantum}, quantum_layer={cfg.quantum_layer!r})")
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
