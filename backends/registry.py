"""A small registry of backends for the quantum layer.

    get_backend("statevector")                              # exact, Qiskit StatevectorEstimator
    get_backend("aer", shots=1024, seed=0)                  # Aer, shot noise
    get_backend("aer_noisy", noise_model="fake_brisbane")   # Aer with a device's noise and coupling map
    get_backend("torch_noisy", noise_model="fake_manila")   # the same noise, simulated in torch
    get_backend("ibm_runtime", ibm_backend="fake_manila")   # IBM Runtime local testing mode

Each factory takes explicit keyword options; one that does not apply to the backend is an
error rather than silently ignored. Qiskit packages are imported inside the factories, so
`--backend aer` never imports qiskit_ibm_runtime.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from backends.budget import QpuRate
from backends.runner import EstimatorRunner, ExecutionStats

BACKENDS: dict[str, Callable[..., "Backend"]] = {}
# the backends whose default (no options) is exact, so a model can train on them; the others sample or add noise
EXACT_BY_DEFAULT = ("statevector", "aer")
# `name:arg` in a backend spec sets this option (aer_noisy:fake_brisbane, ibm_runtime:fake_manila)
POSITIONAL_OPTION = {"aer": "shots", "aer_noisy": "noise_model", "torch_noisy": "noise_model",
                     "ibm_runtime": "ibm_backend"}


class BackendError(ValueError):
    """A backend cannot be built as asked: unknown name or device, bad option, no credentials."""


@dataclass
class Backend:
    name: str
    description: str
    estimator: Any = None  # a Qiskit V2 estimator
    pass_manager: Any = None  # turns the layer's circuit into an ISA circuit (None: runs as is)
    num_qubits: int | None = None  # qubits available (None: unlimited simulator)
    exact: bool = True  # exact expectation values: train and evaluate with the torch engine
    options: dict = field(default_factory=dict)  # non-secret options, safe to write into reports
    label: str = ""  # short id for file names, e.g. "aer_noisy-fake_brisbane-shots1024"
    job_timeout: float | None = None  # seconds to wait for one job (None: no limit)
    reports_usage: bool = False  # the service reports QPU seconds per job
    stats: ExecutionStats = field(default_factory=ExecutionStats)
    closer: Callable[[], None] | None = None  # ends a Runtime batch
    shots: int = 0  # shots per circuit (0: exact), for planning jobs before they run
    planner: Callable[[tuple], dict] | None = None  # pub -> executed circuits and shots (see EstimatorRunner)
    target: Any = None  # the device's target: gate durations for the ISA circuit's duration
    qpu_rate: QpuRate | None = None  # estimates QPU seconds (None: not a QPU)
    dry_run: bool = False  # plan every job, submit none
    circuit_summary: dict | None = None  # the ISA circuit of the last runner made: depth, 2-qubit gates
    runner_factory: Callable[[Any, Any], Any] | None = None  # (backend, spec) -> runner, for those without an estimator

    def __post_init__(self) -> None:
        self.label = self.label or self.name

    def layer_kwargs(self, gradients: bool = False) -> dict:
        """Keyword arguments for `QuantumLayer`.

        Exact backends use the fast torch engine. Others run forward-only through
        `make_runner` (one job per batch), or through EstimatorQNN when `gradients` are needed.
        """
        if self.exact:
            return {"engine": "statevector"}
        if gradients:
            if self.estimator is None:  # EstimatorQNN would silently fall back to an exact estimator
                raise BackendError(f"{self.name} runs no Qiskit estimator, so EstimatorQNN cannot differentiate "
                                   "through it; train through its noise with --q-noise-channel density")
            return {"engine": "qnn", "estimator": self.estimator, "pass_manager": self.pass_manager}
        return {"engine": "estimator", "make_runner": self.make_runner}

    def make_runner(self, spec: Any) -> EstimatorRunner:
        """An `EstimatorRunner` for the layer's circuit, counting into this backend's `stats` (or the runner of
        `runner_factory`, which counts there itself)."""
        if self.runner_factory is not None:
            runner = self.runner_factory(self, spec)
            self.circuit_summary = runner.summary
            return runner
        runner = EstimatorRunner(spec, self.estimator, self.pass_manager, stats=self.stats,
                                 timeout=self.job_timeout, report_usage=self.reports_usage,
                                 num_qubits=self.num_qubits, label=self.label, planner=self.planner,
                                 shots=self.shots, target=self.target, qpu_rate=self.qpu_rate,
                                 dry_run=self.dry_run)
        self.circuit_summary = runner.summary
        return runner

    def close(self) -> None:
        if self.closer is not None:
            self.closer()
            self.closer = None


def register_backend(name: str):
    def decorator(factory: Callable[..., Backend]):
        BACKENDS[name] = factory
        return factory

    return decorator


def get_backend(name: str, *, job_timeout: float | None = None, dry_run: bool = False, **options) -> Backend:
    """Build a backend by name; unknown names and options raise a ValueError listing valid ones.

    With `dry_run`, its runners plan every job and submit none (and IBM Runtime opens no batch).
    """
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; valid backends: {', '.join(sorted(BACKENDS))}"
                           + _device_hint(name))
    factory = BACKENDS[name]
    parameters = inspect.signature(factory).parameters
    accepted = [p for p in parameters if p not in ("self", "dry_run")]  # dry_run is get_backend's own
    options = {k: v for k, v in options.items() if v is not None}
    wrong = sorted(set(options) - set(accepted))
    if wrong:
        raise BackendError(f"option(s) {', '.join(wrong)} do not apply to backend {name!r}; "
                           f"it takes: {', '.join(accepted) or 'no options'}")
    _check_common(name, options)
    if dry_run and "dry_run" in parameters:
        options["dry_run"] = True
    backend = factory(**options)
    backend.job_timeout = job_timeout
    backend.dry_run = dry_run
    return backend


def _device_hint(name: str) -> str:
    """A near miss of a backend's name, or a device named where a backend belongs: the spec that runs it."""
    import difflib

    close = difflib.get_close_matches(name, list(BACKENDS), n=1, cutoff=0.8)
    if close:
        return f"; did you mean {close[0]}?"
    if name.startswith("fake_"):
        return (f"; {name} is a device: name a backend before it, e.g. aer_noisy:{name} (its noise model "
                f"simulated), torch_noisy:{name} or ibm_runtime:{name}")
    if name.startswith("ibm_"):
        return (f"; {name} looks like an IBM QPU: run on it with ibm_runtime:{name}, or simulate its noise with "
                f"aer_noisy:fake_{name.removeprefix('ibm_')}")
    return ""


def parse_backend_spec(spec: str) -> tuple[str, dict]:
    """`name[:arg][:key=value...]` -> (name, options); numbers are converted.

    `aer:shots=1024`, `aer:1024`, `aer_noisy:fake_brisbane:shots=512`, `ibm_runtime:fake_manila`.
    """
    name, *parts = spec.strip().split(":")
    if name not in BACKENDS:  # before any work: a benchmark row that fails late helps nobody
        raise BackendError(f"backend spec {spec!r}: unknown backend {name!r}; valid backends: "
                           f"{', '.join(sorted(BACKENDS))}" + _device_hint(name))
    options: dict[str, Any] = {}
    for part in parts:
        if "=" in part:
            key, value = part.split("=", 1)
            options[key.strip().replace("-", "_")] = _number(value.strip())
        elif name in POSITIONAL_OPTION:
            options[POSITIONAL_OPTION[name]] = _number(part.strip())
        else:
            raise BackendError(f"backend spec {spec!r}: {name!r} takes no positional option; use key=value")
    return name, options


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_common(name: str, options: dict) -> None:
    """`seed` and `optimization_level`, which most backends take, checked here with one message each."""
    seed = options.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        raise BackendError(f"backend {name!r}: seed must be a non-negative whole number, got {seed!r}")
    level = options.get("optimization_level")
    if level is not None and level not in (0, 1, 2, 3):
        raise BackendError(f"backend {name!r}: optimization_level must be 0, 1, 2 or 3, got {level!r}")


def shots_from(shots: int | None, precision: float | None, default: int | None) -> int | None:
    """Shots from either `shots` or a target `precision` (shots = ceil(1 / precision**2))."""
    if shots is not None and precision is not None:
        raise BackendError("give either shots or precision, not both")
    if shots is not None:
        if not _is_number(shots) or shots < 1 or not float(shots).is_integer():
            raise BackendError(f"shots must be a positive integer, got {shots!r}")
        return int(shots)
    if precision is not None:
        if not _is_number(precision) or not 0 < precision < 1:
            raise BackendError(f"precision must be a number in (0, 1), got {precision!r}")
        return math.ceil(round(1 / precision**2, 6))
    return default


def sampling_estimator(simulator: Any, shots: int, seed: int | None) -> Any:
    """Qiskit's BackendEstimatorV2 on an Aer simulator: real shots, measured in Pauli bases.

    Unlike Aer's own EstimatorV2 (exact values plus Gaussian noise of std `precision`, and
    blind to readout errors), this samples `shots` measurement outcomes per circuit, the way
    IBM Runtime's local testing mode does.
    """
    from qiskit.primitives import BackendEstimatorV2

    # BackendEstimatorV2 runs ceil(1 / precision**2) shots; the 1e-9 keeps rounding from adding one
    precision = (1 + 1e-9) / math.sqrt(shots)
    return BackendEstimatorV2(backend=simulator, options={"default_precision": precision, "seed_simulator": seed})


@register_backend("statevector")
def statevector_backend(seed: int | None = None) -> Backend:
    """Exact; `seed` is accepted (and unused) so that one seed can be passed to every backend."""
    from qiskit.primitives import StatevectorEstimator

    return Backend(
        name="statevector",
        description="exact statevector (Qiskit StatevectorEstimator, precision 0)",
        estimator=StatevectorEstimator(default_precision=0.0),
        exact=True,
    )


@register_backend("aer")
def aer_backend(shots: int | None = None, precision: float | None = None, seed: int | None = None) -> Backend:
    """AerSimulator: exact expectation values by default; `shots` (or `precision`) samples."""
    shots = shots_from(shots, precision, default=None)
    if not shots:
        from qiskit_aer.primitives import EstimatorV2 as AerEstimator

        return Backend(name="aer", description="Aer simulator, exact expectation values",
                       estimator=AerEstimator(options={"default_precision": 0.0}), exact=True)
    from qiskit_aer import AerSimulator

    return Backend(
        name="aer",
        description=f"Aer simulator, {shots} shots (sampling noise only)",
        estimator=sampling_estimator(AerSimulator(seed_simulator=seed), shots, seed),
        exact=False,
        options={"shots": shots, "seed": seed},
        label=f"aer-shots{shots}",
        shots=shots,
    )
