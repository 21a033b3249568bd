"""What a run will cost on a QPU: the ISA circuit's size and an estimate of QPU seconds.

IBM QPUs run the circuits of a job shot by shot, each shot followed by the device's
repetition delay (IBM Quantum documentation, "Qubit initialization" / dynamic repetition
rate execution; `backend.default_rep_delay`, 250 µs on the fake devices). So a job costs
about

    seconds_per_job + executed_shots * (rep_delay + ISA circuit duration)

where executed shots count every twirling randomization and TREX calibration circuit.
IBM publishes no per-job overhead; `DEFAULT_SECONDS_PER_JOB` is an assumption (the usage
small jobs typically report), and the whole estimate is multiplied by `scale`, which a live
run that reports its usage calibrates: `qpu_rates.json` in the run directory keeps the
reported and the uncalibrated estimated seconds summed over those runs, per device, and their
ratio is the scale of later estimates. It holds numbers only, never credentials.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

DEFAULT_REP_DELAY = 250e-6  # seconds; IBM's usual default_rep_delay, used when the device does not say
DEFAULT_SECONDS_PER_JOB = 2.0  # an assumption, not an IBM figure: calibrated by the first live run
RATE_FILE = "qpu_rates.json"
DEFAULT_SOURCE = ("default rate: device rep_delay + ISA circuit duration per executed shot (IBM Quantum docs, "
                  "dynamic repetition rate execution) and an assumed 2 s per job; not yet calibrated by a live run")


@dataclass(frozen=True)
class QpuRate:
    """Seconds a device spends per job and per executed shot, times a measured `scale`."""

    device: str
    rep_delay: float = DEFAULT_REP_DELAY
    seconds_per_job: float = DEFAULT_SECONDS_PER_JOB
    scale: float = 1.0  # reported / estimated, from live runs (1.0: uncalibrated)
    source: str = DEFAULT_SOURCE

    def raw_seconds(self, jobs: int, shots: int, circuit_seconds: float) -> float:
        """The estimate before calibration (what `scale` is measured against)."""
        return jobs * self.seconds_per_job + shots * (self.rep_delay + circuit_seconds)

    def seconds(self, jobs: int, shots: int, circuit_seconds: float) -> float:
        return self.scale * self.raw_seconds(jobs, shots, circuit_seconds)

    def to_dict(self) -> dict:
        return asdict(self)


def default_rate(device: Any) -> QpuRate:
    """The uncalibrated rate for `device` (its own repetition delay where it reports one)."""
    rep_delay = getattr(device, "default_rep_delay", None)
    return QpuRate(device=str(device.name), rep_delay=float(rep_delay) if rep_delay else DEFAULT_REP_DELAY)


def circuit_summary(circuit: Any, target: Any = None) -> dict:
    """Depth, gate counts and (where the target knows gate durations) the duration in seconds."""
    two_qubit = sum(1 for inst in circuit.data if inst.operation.num_qubits == 2)
    duration = None
    if target is not None:
        try:
            duration = float(circuit.estimate_duration(target, unit="s"))
        except Exception:  # a target without durations (simulators): no duration to report
            duration = None
    return {"qubits": circuit.num_qubits, "depth": circuit.depth(), "two_qubit_gates": two_qubit,
            "operations": dict(circuit.count_ops()), "duration_seconds": duration}


def stored_rate(folder: Path, rate: QpuRate | None) -> QpuRate | None:
    """`rate` calibrated by the live runs recorded in `folder/qpu_rates.json` (unchanged if none)."""
    if rate is None:
        return None
    entry = _read_rates(Path(folder)).get(rate.device)
    if not entry:
        return rate
    return replace(rate, scale=entry["scale"],
                   source=f"calibrated by {entry['runs']} live run(s) on {rate.device} recorded in "
                          f"{Path(folder) / RATE_FILE} (reported / estimated = {entry['scale']:.3g})")


def calibrate(folder: Path, rate: QpuRate, reported: float, estimated: float) -> dict:
    """Fold a live run's reported and estimated QPU seconds into `folder/qpu_rates.json`; the new entry."""
    path = Path(folder) / RATE_FILE
    rates = _read_rates(Path(folder))
    entry = rates.get(rate.device, {"reported_seconds": 0.0, "uncalibrated_estimate_seconds": 0.0, "runs": 0})
    entry["reported_seconds"] += float(reported)
    entry["uncalibrated_estimate_seconds"] += float(estimated) / rate.scale
    entry["runs"] += 1
    entry["scale"] = entry["reported_seconds"] / max(entry["uncalibrated_estimate_seconds"], 1e-12)
    entry["updated"] = time.strftime("%Y-%m-%d %H:%M:%S")
    rates[rate.device] = entry
    _write_atomically(path, json.dumps(rates, indent=2) + "\n")
    return entry


def _read_rates(folder: Path) -> dict:
    path = folder / RATE_FILE
    if not path.is_file():
        return {}
    try:
        rates = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} could not be read ({exc}); delete it to fall back to the default rate") from None
    return rates if isinstance(rates, dict) else {}


def _write_atomically(path: Path, text: str) -> None:
    """Replace `path` in one step, so that an interrupted write never leaves half a file; the file gets
    the user's umask (a temporary file from `tempfile` would be private to its owner)."""
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
