"""Forward-only execution of the quantum layer on a V2 estimator, one job per batch.

`EstimatorRunner` maps a batch of angles `(B, n_in)` and the layer's weights `(n_w,)` to
expectation values `(B, n_obs)` with a single PUB: the ISA circuit, the observables laid
out on it, and a `(B, 1, n_params)` parameter array, which broadcasts against the `(n_obs,)`
observables to `(B, n_obs)`. Every job is planned before it is sent (executed circuits and
shots, twirling randomizations included, and on a QPU the estimated seconds), so a dry run
(`dry_run=True`: plan, submit nothing, answer with exact values) counts exactly what a real
run then does. Jobs, circuits, shots, wall time and (on IBM Runtime) reported QPU seconds
are counted in an `ExecutionStats`. A failed or timed-out job raises `JobError` with a
message for people; nothing is retried behind the caller's back.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from backends.budget import QpuRate, circuit_summary

log = logging.getLogger("backends.runner")

SECRET_ENV = ("QISKIT_IBM_TOKEN",)  # values that must never reach a message, log or file
COUNTS = ("jobs", "circuits", "shots", "samples", "wall_seconds")
OPTIONAL = ("qpu_seconds", "estimated_qpu_seconds")  # None where nothing reports or estimates them


def redact(text: str) -> str:
    """`text` with any secret from the environment replaced by `***`."""
    for name in SECRET_ENV:
        secret = os.environ.get(name)
        if secret:
            text = text.replace(secret, "***")
    return text


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one redacted line: `Type: first line of the message`."""
    lines = str(exc).strip().splitlines()
    message = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    message = redact(message)
    return message if len(message) <= limit else message[: limit - 3] + "..."


class JobError(RuntimeError):
    """A backend job failed or did not finish in time."""


@dataclass
class ExecutionStats:
    """What running the quantum layer cost: counted per job, summed over a run."""

    jobs: int = 0
    circuits: int = 0  # circuit executions: one per parameter binding (per measurement basis)
    shots: int = 0  # total shots over all circuits (0 for exact estimators)
    samples: int = 0  # rows of angles evaluated
    wall_seconds: float = 0.0  # submit-to-result time, queueing included
    qpu_seconds: float | None = None  # QPU time the service reports; None where none does
    estimated_qpu_seconds: float | None = None  # the plan's estimate (backends.budget); None off QPUs

    def add(self, other: "ExecutionStats | dict") -> None:
        other = other if isinstance(other, dict) else other.to_dict()
        for key in COUNTS:
            setattr(self, key, getattr(self, key) + other.get(key, 0))
        for key in OPTIONAL:
            if other.get(key) is not None:
                setattr(self, key, (getattr(self, key) or 0.0) + other[key])

    def to_dict(self) -> dict:
        return asdict(self)

    def since(self, before: dict) -> dict:
        """The difference between now and an earlier `to_dict()` snapshot."""
        now = self.to_dict()
        delta = {k: now[k] - before[k] for k in COUNTS}
        for key in OPTIONAL:
            delta[key] = None if now[key] is None else now[key] - (before.get(key) or 0.0)
        return delta


def wait_for(job: Any, timeout: float | None, label: str) -> Any:
    """`job.result()`, polling `job.done()` so that a timeout works for every job type."""
    if timeout is None:
        return job.result()
    deadline = time.monotonic() + timeout
    interval = 0.01
    # `done()` is False for a failed job; a final state (done, error, cancelled) is what ends the wait
    finished = getattr(job, "in_final_state", None) or job.done
    while not finished():
        if time.monotonic() > deadline:
            try:  # its results would be discarded: do not let it use QPU time
                cancelled = job.cancel() is not False
            except Exception:
                cancelled = False
            raise JobError(f"job {_job_id(job)} on {label} did not finish within {timeout:g} s"
                           + (" and was cancelled" if cancelled else ""))
        time.sleep(interval)
        interval = min(interval * 2, 5.0)  # remote jobs: at most one status call per 5 s
    return job.result()


def _job_id(job: Any) -> str:
    try:
        return str(job.job_id())
    except Exception:
        return "?"


def _qpu_seconds(job: Any) -> float | None:
    """QPU seconds from IBM Runtime job metrics (key name differs between service versions)."""
    try:
        usage = job.metrics().get("usage", {})
    except Exception:
        return None
    value = usage.get("quantum_seconds", usage.get("qpu_charge_time_seconds"))
    return float(value) if value is not None else None


def shots_per_circuit(pub_result: Any, result: Any = None) -> int:
    """Shots each executed circuit ran, wherever this estimator's results keep them (0: exact).

    Qiskit's estimators put `shots` in the PUB metadata; IBM Runtime's client-side estimator
    puts the shots per randomization under `metadata["executor"]` and the requested shots
    on the job-level result.
    """
    meta = dict(getattr(pub_result, "metadata", {}) or {})
    shots = meta.get("shots") or (meta.get("executor") or {}).get("shots")
    if not shots and result is not None:
        shots = (getattr(result, "metadata", None) or {}).get("shots")
    return int(shots or 0)


def measurement_bases(observables: list, estimator: Any) -> int:
    """Circuits a sampling estimator runs per binding: BackendEstimatorV2 measures each qubit-wise-commuting
    group of the observables' Pauli terms in its own basis (each distinct term, without `abelian_grouping`)."""
    from qiskit.quantum_info import PauliList

    terms = PauliList(sorted({label for obs in observables for label in obs.paulis.to_labels()}))
    if getattr(getattr(estimator, "options", None), "abelian_grouping", True):
        return len(terms.group_commuting(qubit_wise=True))
    return len(terms)


def check_fits(spec: Any, num_qubits: int | None, label: str) -> None:
    """Refuse a layer wider than the device, before the transpiler does so less clearly."""
    if num_qubits is not None and spec.circuit.num_qubits > num_qubits:
        raise ValueError(f"the quantum layer needs {spec.circuit.num_qubits} qubits but {label} has "
                         f"{num_qubits}; choose a larger device or fewer --n-qubits")


class EstimatorRunner:
    """`(angles (B, n_in), weights (n_w,)) -> (B, n_obs)` on an estimator, one job per call.

    Args:
        spec: the layer's `CircuitSpec` (circuit, input and weight parameters, observables).
        estimator: any Qiskit V2 estimator (Aer, BackendEstimatorV2, IBM Runtime's Estimator).
        pass_manager: turns the circuit into an ISA circuit; observables follow its layout.
        stats: where to count jobs, circuits and shots (shared by a backend's runners).
        timeout: seconds to wait for one job before giving up (None: wait forever).
        report_usage: read QPU seconds from the job's metrics (IBM Runtime, live).
        num_qubits: qubits the device has, to fail early when the circuit does not fit.
        planner: `pub -> {"circuits", "shots"}` executed for that PUB (IBM Runtime: with its
            twirling and TREX circuits); default one circuit of `shots` shots per binding and
            measurement basis.
        shots: shots per circuit for the default planner (0: exact).
        target: the device's target, for the ISA circuit's duration.
        qpu_rate: estimates QPU seconds per job (None: not a QPU).
        dry_run: plan every job and answer with exact values; nothing is submitted.
    """

    def __init__(self, spec: Any, estimator: Any, pass_manager: Any = None, *,
                 stats: ExecutionStats | None = None, timeout: float | None = None,
                 report_usage: bool = False, num_qubits: int | None = None, label: str = "backend",
                 planner: Callable[[tuple], dict] | None = None, shots: int = 0, target: Any = None,
                 qpu_rate: QpuRate | None = None, dry_run: bool = False) -> None:
        check_fits(spec, num_qubits, label)
        self.spec = spec
        self.estimator = estimator
        self.stats = stats if stats is not None else ExecutionStats()
        self.timeout = timeout
        self.report_usage = report_usage
        self.label = label
        self.planner = planner
        self.shots = int(shots or 0)
        self.qpu_rate = qpu_rate
        self.dry_run = dry_run
        if pass_manager is not None:
            self.circuit = pass_manager.run(spec.circuit)
            layout = self.circuit.layout
            self.observables = [obs.apply_layout(layout) for obs in spec.observables]
        else:
            self.circuit = spec.circuit
            self.observables = list(spec.observables)
        self.summary = circuit_summary(self.circuit, target)
        # the default plan: exact estimators run one circuit per binding, sampling ones one per measurement basis
        self.bases = measurement_bases(self.observables, estimator) if self.shots and planner is None else 1
        # A PUB's parameter columns follow `circuit.parameters`, which Qiskit sorts by name,
        # not the [inputs..., weights...] order of our arrays: map them explicitly.
        ours = list(spec.input_params) + list(spec.weight_params)
        position = {p: i for i, p in enumerate(ours)}
        unknown = [p.name for p in self.circuit.parameters if p not in position]
        if unknown:
            raise ValueError(f"the transpiled circuit has parameters {unknown} that are neither inputs nor weights")
        self.columns = np.array([position[p] for p in self.circuit.parameters], dtype=int)
        self.n_inputs = len(spec.input_params)
        self.n_weights = len(spec.weight_params)

    def _values(self, angles: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """`(B, n_inputs + n_weights)` in our [inputs..., weights...] order."""
        angles = np.asarray(angles, dtype=float)
        weights = np.asarray(weights, dtype=float).reshape(-1)
        if angles.ndim != 2 or angles.shape[1] != self.n_inputs or weights.shape != (self.n_weights,):
            raise ValueError(f"expected angles (B, {self.n_inputs}) and weights ({self.n_weights},), "
                             f"got {angles.shape} and {weights.shape}")
        return np.concatenate([angles, np.broadcast_to(weights, (len(angles), self.n_weights))], axis=1)

    def pub(self, angles: np.ndarray, weights: np.ndarray) -> tuple:
        """The single PUB for a batch: bindings `(B, 1)` broadcast against `(n_obs,)` observables."""
        return (self.circuit, self.observables, self._values(angles, weights)[:, self.columns][:, None, :])

    def plan(self, pub: tuple) -> dict:
        """What running `pub` executes: one job, one PUB, its circuits and shots, estimated QPU seconds."""
        batch = len(pub[2])
        circuits = batch * self.bases
        planned = self.planner(pub) if self.planner is not None else {"circuits": circuits,
                                                                     "shots": circuits * self.shots}
        estimate = None
        if self.qpu_rate is not None:
            estimate = self.qpu_rate.seconds(1, planned["shots"], self.summary["duration_seconds"] or 0.0)
        return {"jobs": 1, "pubs": 1, "circuits": int(planned["circuits"]), "shots": int(planned["shots"]),
                "samples": batch, "estimated_qpu_seconds": estimate}

    def __call__(self, angles: np.ndarray, weights: np.ndarray) -> np.ndarray:
        pub = self.pub(angles, weights)
        batch = len(pub[2])
        if batch == 0:
            return np.zeros((0, len(self.observables)))
        planned = self.plan(pub)
        if self.dry_run:  # counted as planned; no wall time, no usage
            self.stats.add({k: planned[k] for k in ("jobs", "circuits", "shots", "samples", "estimated_qpu_seconds")})
            return self._exact(angles, weights)
        started = time.perf_counter()
        job = None
        try:
            job = self.estimator.run([pub])
            result = wait_for(job, self.timeout, self.label)
        except JobError:
            raise
        except Exception as exc:
            where = f"job {_job_id(job)}" if job is not None else "submitting a job"
            raise JobError(f"{where} on {self.label} failed ({one_line(exc)})") from None
        wall = time.perf_counter() - started
        evs = np.asarray(result[0].data.evs, dtype=float)
        if evs.shape != (batch, len(self.observables)):
            raise JobError(f"{self.label} returned expectation values of shape {evs.shape}, "
                           f"expected {(batch, len(self.observables))}")
        shots = self._executed_shots(planned, result)
        qpu = _qpu_seconds(job) if self.report_usage else None
        self.stats.add({"jobs": 1, "circuits": planned["circuits"], "shots": shots, "samples": batch,
                        "wall_seconds": wall, "qpu_seconds": qpu,
                        "estimated_qpu_seconds": planned["estimated_qpu_seconds"]})
        log.debug("job %s on %s: %d samples in %.2f s", _job_id(job), self.label, batch, wall)
        return evs

    def _executed_shots(self, planned: dict, result: Any) -> int:
        """Shots the job ran, from its results; a plan that disagrees is reported, the result wins."""
        per_circuit = shots_per_circuit(result[0], result)
        shots = per_circuit * planned["circuits"]
        if shots != planned["shots"]:
            log.warning("%s ran %d shots where %d were planned; counting what it ran", self.label, shots,
                        planned["shots"])
        return shots

    def _exact(self, angles: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Exact expectation values of the logical circuit (a dry run's stand-in for the job's)."""
        from hybrid.quantum.calibration import exact_expectations

        self._values(angles, weights)  # checks the shapes
        return exact_expectations(self.spec, angles, weights)
