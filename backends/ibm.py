"""`ibm_runtime`: IBM Runtime's client-side Estimator on a real QPU, or on a fake device locally.

The estimator is `qiskit_ibm_runtime.executor_estimator.Estimator` (qiskit-ibm-runtime 0.50
deprecated the server-side `EstimatorV2`): it turns each `run()` into one Executor job and
does twirling, TREX and dynamical decoupling on this machine, so the circuits it executes are
the bindings times the twirling randomizations, plus TREX's calibration circuits. The plan of
every job (`ibm_plan`) is built by the same preparation step the estimator runs, without
submitting, which is how dry runs and the QPU-seconds estimate count exactly what runs.

Live runs need credentials: `QISKIT_IBM_TOKEN` (and `QISKIT_IBM_INSTANCE`) in the environment,
or an account saved with `QiskitRuntimeService.save_account(...)`. The token is handed to
`QiskitRuntimeService` and nowhere else: it is not an option, so it cannot reach a report,
and error messages are redacted. A `fake_*` device name runs the same code path in
qiskit-ibm-runtime's local testing mode (Aer with the device's noise model), which is how the
tests cover this backend offline. Jobs go in **batch** mode by default (sessions are not
available on the open plan); `batch_mode=False` submits plain jobs.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from backends.budget import default_rate
from backends.noisy import fake_device
from backends.registry import Backend, BackendError, register_backend, shots_from
from backends.runner import one_line


CHANNEL = "ibm_quantum_platform"
DEFAULT_RESILIENCE_LEVEL = 1  # IBM's default (TREX readout mitigation), stated in every report
CREDENTIALS_HELP = ("IBM Runtime needs credentials: set QISKIT_IBM_TOKEN (and QISKIT_IBM_INSTANCE) or save an "
                    "account with QiskitRuntimeService.save_account(...); for an offline run use "
                    "--ibm-backend fake_manila")


def runtime_service() -> Any:
    """A `QiskitRuntimeService` from the environment or a saved account; one-sentence errors."""
    from qiskit_ibm_runtime import QiskitRuntimeService

    token = os.environ.get("QISKIT_IBM_TOKEN")
    instance = os.environ.get("QISKIT_IBM_INSTANCE") or None
    if not token:
        try:
            saved = QiskitRuntimeService.saved_accounts()
        except Exception:  # an unreadable account file is the same as none for the user
            saved = {}
        if not saved:
            raise BackendError(CREDENTIALS_HELP)
    try:
        if token:
            return QiskitRuntimeService(channel=CHANNEL, token=token, instance=instance)
        return QiskitRuntimeService(instance=instance)
    except Exception as exc:
        raise BackendError(f"could not connect to IBM Runtime ({one_line(exc)}); check the token, instance and "
                           "network, or use --ibm-backend fake_manila for an offline run") from None


def _device(service: Any, name: str | None) -> Any:
    try:
        if name:
            return service.backend(name)
        return service.least_busy(operational=True, simulator=False)
    except Exception as exc:
        what = f"device {name!r}" if name else "a least-busy device"
        raise BackendError(f"IBM Runtime could not provide {what} ({one_line(exc)}); "
                           "list yours with QiskitRuntimeService().backends()") from None


def ibm_plan(estimator: Any, device: Any) -> Callable[[tuple], dict]:
    """`pub -> {"circuits", "shots"}` that `estimator.run([pub])` would execute on `device`.

    Runs the estimator's own preparation (twirling randomizations, TREX calibration, DD) with
    its current options; nothing is submitted.
    """
    from qiskit_ibm_runtime.executor_estimator.prepare import prepare

    def plan(pub: tuple) -> dict:
        program, _ = prepare([pub], estimator.options, None, add_tags=False, backend=device)
        circuits = sum(int(item.size()) for item in program.items)
        return {"circuits": circuits, "shots": int(program.shots) * circuits}

    return plan


def _reason(exc: Exception) -> str:
    """What pydantic found wrong, without its "not an instance of UnsetType" alternatives."""
    errors = getattr(exc, "errors", lambda: [])()
    reasons = [e.get("msg", "") for e in errors if e.get("type") != "is_instance_of"]
    return "; ".join(dict.fromkeys(r for r in reasons if r)) or one_line(exc)


def _set(opts: Any, path: str, value: Any, option: str) -> None:
    """`opts.<path> = value`; IBM Runtime's refusal (a pydantic ValidationError) becomes a BackendError."""
    *parents, attr = path.split(".")
    for parent in parents:
        opts = getattr(opts, parent)
    try:
        setattr(opts, attr, value)
    except (TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        raise BackendError(f"ibm_runtime option {option}={value!r} is not valid ({_reason(exc)})") from None


def estimator_options(*, shots, precision, resilience_level, dd, twirling, seed, local: bool) -> Any:
    """Validated options of the client-side Estimator, built before any batch is opened."""
    from qiskit_ibm_runtime.options_models.estimator import EstimatorOptions

    for name, value in (("dd", dd), ("twirling", twirling)):
        if value is not None and not isinstance(value, bool):  # pydantic would take 1 or "yes" as True
            raise BackendError(f"ibm_runtime option {name} must be true or false, got {value!r}")
    opts = EstimatorOptions()
    _set(opts, "resilience_level", resilience_level, "resilience_level")
    if shots is not None:
        _set(opts, "default_shots", int(shots), "shots")
    elif precision is not None:
        _set(opts, "default_precision", precision, "precision")
    if dd is not None:
        _set(opts, "dynamical_decoupling.enable", dd, "dd")
    if twirling is not None:
        _set(opts, "twirling.enable_gates", twirling, "twirling")
        _set(opts, "twirling.enable_measure", twirling, "twirling")
    if local and seed is not None:
        _set(opts, "simulator.seed_simulator", seed, "seed")  # the executor path honours every seed, 0 included
    return opts


def _open_estimator(device: Any, options: Any, batch_mode: bool, dry_run: bool) -> tuple[Any, Any]:
    """(estimator, batch or None). The batch is opened last, once nothing else can fail, and closed again if the
    estimator cannot be made on it: a live batch left open keeps its slot on the service."""
    from qiskit_ibm_runtime import Batch
    from qiskit_ibm_runtime.executor_estimator import Estimator

    batch = Batch(backend=device) if batch_mode and not dry_run else None
    try:
        return Estimator(mode=batch or device, options=options), batch
    except BaseException:
        if batch is not None:
            batch.close()
        raise


@register_backend("ibm_runtime")
def ibm_runtime_backend(ibm_backend: str | None = None, shots: int | None = None, precision: float | None = None,
                        resilience_level: int | None = None, dd: bool | None = None, twirling: bool | None = None,
                        batch_mode: bool | None = None, seed: int | None = None,
                        optimization_level: int = 1, dry_run: bool = False) -> Backend:
    """The client-side Estimator on `ibm_backend` (default: the least busy QPU); `fake_*` names run locally.

    With `dry_run` no batch is opened (a live batch starts on the service when it is created).
    """
    from qiskit.transpiler import generate_preset_pass_manager

    resilience_level = DEFAULT_RESILIENCE_LEVEL if resilience_level is None else resilience_level
    if resilience_level not in (0, 1, 2) or isinstance(resilience_level, bool):
        raise BackendError(f"resilience_level must be 0, 1 or 2, got {resilience_level!r}")
    shots_from(shots, precision, default=None)  # validates both; IBM takes either as an option
    if ibm_backend is not None and not isinstance(ibm_backend, str):
        raise BackendError(f"ibm_backend must be a device name such as ibm_brisbane or fake_manila, got "
                           f"{ibm_backend!r}")
    batch_mode = True if batch_mode is None else batch_mode
    if not isinstance(batch_mode, bool):
        raise BackendError(f"ibm_runtime option batch_mode must be true or false, got {batch_mode!r}")
    local = bool(ibm_backend) and ibm_backend.lower().startswith("fake_")
    estimator_opts = estimator_options(shots=shots, precision=precision, resilience_level=resilience_level, dd=dd,
                                       twirling=twirling, seed=seed, local=local)
    device = fake_device(ibm_backend) if local else _device(runtime_service(), ibm_backend)
    # everything that can fail is built before the batch opens
    pass_manager = generate_preset_pass_manager(optimization_level=optimization_level, backend=device,
                                                seed_transpiler=seed)
    qpu_rate = default_rate(device)
    options = {"ibm_backend": device.name, "local": local, "batch_mode": batch_mode, "shots": shots,
               "precision": precision if not shots else None, "resilience_level": resilience_level, "dd": dd,
               "twirling": twirling, "seed": seed, "optimization_level": optimization_level}
    where = (f"local testing mode on {device.name} (Aer with its noise model)" if local
             else f"{device.name} ({device.num_qubits} qubits)")
    budget = f"{shots} shots" if shots else (f"precision {precision:g}" if precision else "default precision")
    estimator, batch = _open_estimator(device, estimator_opts, batch_mode, dry_run)
    return Backend(
        name="ibm_runtime",
        description=(f"IBM Runtime Estimator (client-side, Executor jobs), {where}, "
                     f"{'batch' if batch_mode else 'job'} mode, {budget}, resilience level {resilience_level}"),
        estimator=estimator,
        pass_manager=pass_manager,
        num_qubits=device.num_qubits,
        exact=False,
        options={k: v for k, v in options.items() if v is not None},
        label=f"ibm_runtime-{device.name}" + (f"-shots{shots}" if shots else f"-precision{precision:g}" if precision
                                               else ""),  # other shots, other result files
        reports_usage=not local,
        closer=batch.close if batch is not None else None,
        planner=ibm_plan(estimator, device),
        target=device.target,
        qpu_rate=qpu_rate,
    )
