"""QPU budget: plan an evaluation before sending it, refuse plans over budget, learn the rate.

    plan = plan_forward(model, domains, backend, tta=..., batch_size=...)   # backend built with dry_run=True
    print(plan_text(plan)); check_budget(plan, max_qpu_seconds=60)

A dry run executes the same forward passes as the real evaluation with a backend whose
runners plan every job (PUB, circuits with twirling, shots, estimated QPU seconds) and submit
none, so its counts are what the real run then does. The estimate's rate
(`backends.budget.QpuRate`) is calibrated per device by the live runs recorded in the run
directory (`backends.budget.calibrate`).
"""

from __future__ import annotations

from contextlib import contextmanager

from hybrid.inference import predict_probs


class BudgetError(ValueError):
    """A plan's estimated QPU time is over the budget the user set."""


@contextmanager
def quantum_layer_through(model, make_runner):
    """Temporarily run the model's quantum layer through `make_runner` (same weights)."""
    from hybrid.quantum import QuantumLayer

    original = model.quantum
    layer = QuantumLayer(original.config, engine="estimator", make_runner=make_runner)
    layer.load_state_dict(original.state_dict())
    model.quantum = layer
    try:
        yield layer
    finally:
        model.quantum = original


def plan_forward(model, domains: dict, backend, *, tta: str, batch_size: int, progress: bool = False) -> dict:
    """The plan of scoring `domains` with `model`, whose quantum layer runs on the dry-run `backend`."""
    import torch

    if not backend.exact and not backend.dry_run:
        raise ValueError("plan_forward needs a backend built with dry_run=True; this one would submit jobs")
    before = backend.stats.to_dict()
    samples = 0
    with torch.no_grad():
        for name, (x, _) in domains.items():
            predict_probs(model, x, tta, batch_size, progress, desc=f"planning {name}")
            samples += len(x)
    return plan_summary(backend, before, samples, batch_size)


def plan_summary(backend, before: dict, samples: int, batch_size: int) -> dict:
    counted = backend.stats.since(before)
    rate = backend.qpu_rate
    return {
        "kind": "plan", "backend": backend.label, "description": backend.description, "options": backend.options,
        "exact": backend.exact, "submitted_jobs": 0, "jobs": counted["jobs"], "pubs": counted["jobs"],
        "circuits": counted["circuits"], "shots": counted["shots"], "samples": samples, "batch_size": batch_size,
        "isa_circuit": backend.circuit_summary, "estimated_qpu_seconds": counted["estimated_qpu_seconds"],
        "rate": rate.to_dict() if rate is not None else None,
    }


def plan_text(plan: dict) -> str:
    """The plan for people: what would be sent, the ISA circuit, and the QPU seconds it costs."""
    if plan["exact"]:
        return (f"dry run on {plan['backend']}: exact, scored on this machine with the torch engine; "
                f"0 jobs for {plan['samples']} samples")
    lines = [f"dry run on {plan['backend']} (nothing submitted): {plan['jobs']} jobs, {plan['pubs']} PUBs "
             f"(one per job, batches of {plan['batch_size']}), {plan['circuits']:,} circuits, "
             f"{plan['shots']:,} shots for {plan['samples']} samples"]
    isa = plan["isa_circuit"]
    if isa:
        duration = f", {isa['duration_seconds'] * 1e6:.1f} µs" if isa["duration_seconds"] is not None else ""
        lines.append(f"ISA circuit: {isa['qubits']} qubits, depth {isa['depth']}, "
                     f"{isa['two_qubit_gates']} two-qubit gates{duration}")
    if plan["estimated_qpu_seconds"] is None:
        lines.append("QPU time: none (a simulator on this machine)")
    else:
        lines.append(f"this evaluation costs about {plan['estimated_qpu_seconds']:.1f} QPU seconds "
                     f"({plan['rate']['source']})")
    return "\n".join(lines)


def check_budget(plans: list[dict], max_qpu_seconds: float | None,
                 samples_flag: str = "--max-samples") -> None:
    """Refuse (BudgetError) when the plans' estimated QPU seconds exceed `max_qpu_seconds`; the message names the
    calling tool's option for fewer images (`samples_flag`)."""
    if max_qpu_seconds is None:
        return
    if max_qpu_seconds < 0:
        raise ValueError(f"--max-qpu-seconds must be >= 0, got {max_qpu_seconds:g}")
    total = sum(p["estimated_qpu_seconds"] or 0.0 for p in plans)
    if total > max_qpu_seconds:
        raise BudgetError(f"the plan needs about {total:.1f} QPU seconds, more than --max-qpu-seconds "
                          f"{max_qpu_seconds:g}; nothing was submitted: evaluate fewer samples ({samples_flag}), "
                          "fewer shots, or raise the budget (see --dry-run)")
