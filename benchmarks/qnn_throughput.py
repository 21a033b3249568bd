"""Forward+backward throughput of the quantum layer against qiskit-machine-learning and PennyLane.

Every engine runs the same circuit (`hybrid.quantum.build_circuit`: zz feature map + RealAmplitudes)
and one training step: `layer(x).sum().backward()`, with gradients to the inputs and the weights.

    python -m benchmarks.qnn_throughput                    # full run, a minute or two
    python -m benchmarks.qnn_throughput --threads 1        # pin torch's intra-op threads
    python -m benchmarks.qnn_throughput --quick            # smoke run (tests), seconds
    python -m benchmarks.qnn_throughput --threads 1 --qubit-sweep 8,12   # + widths against PennyLane

Prints a markdown table of samples/s and the goals, and writes everything to `--out` as JSON.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from benchmarks.qubit_sweep import format_sweep, qubit_sweep
from hybrid.allocator import retain_freed_memory
from hybrid.quantum import QuantumConfig, QuantumLayer

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "qnn_throughput.json"
# flag -> (full-run default, --quick default); an explicit flag always wins
DEFAULTS = {
    "batches": ("32,256,1024", "2,4"),
    "min_seconds": (1.0, 0.1),  # timed seconds per cell, at least
    "repeats": (5, 3),  # the cell's value is the median over these repeats
    "qnn_max_seconds": (20.0, 3.0),  # whole qiskit-machine-learning section, construction included
    "qnn_sub_batch": (8, 2),  # samples per timed qnn step
}
GOALS = (  # (baseline row, minimum speedup of statevector-float64 over it)
    ("pennylane-float64", 10.0),
    ("qnn-float64", 10_000.0),
)
AGREEMENT_TOLERANCE = 1e-8
ROWS = {  # row key -> description, in table order
    "statevector-float64": "hybrid statevector",
    "statevector-float32": "hybrid statevector",
    "qnn-float64": "qiskit-machine-learning EstimatorQNN (parameter shift)",
    "pennylane-float64": "PennyLane default.qubit (backprop)",
}
QNN_NOTE = (
    "batches larger than {size} are timed on sub-batches of {size} samples and reported at that "
    "rate: parameter shift evaluates 2 shifted circuits per parameter for every sample, so "
    "samples/s is assumed not to improve with batch size"
)


def training_step(forward: Callable, x: torch.Tensor, params: list[torch.Tensor]) -> Callable[[], None]:
    """One `forward(x).sum().backward()` with fresh gradients, as `zero_grad(set_to_none)` gives."""

    def step() -> None:
        x.grad = None
        for p in params:
            p.grad = None
        forward(x).sum().backward()

    return step


def measure(steps: dict[str, Callable[[], None]], samples: int, *, min_seconds: float,
            repeats: int) -> dict[str, dict]:
    """Median samples/s of each step over `repeats` (or more) repeats, `min_seconds` in all.

    The engines take turns repeat by repeat, so a burst of load from other processes slows
    all of them a little rather than whichever one happened to be running.
    """
    iters, calls = {}, {}
    for key, step in steps.items():
        warm_start, calls[key] = time.perf_counter(), 0
        while calls[key] < 2 or time.perf_counter() - warm_start < min_seconds / 5:
            step()
            calls[key] += 1
        per_call = (time.perf_counter() - warm_start) / calls[key]
        iters[key] = max(1, math.ceil(min_seconds / repeats / per_call))
    rates: dict[str, list[float]] = {key: [] for key in steps}
    spent = dict.fromkeys(steps, 0.0)
    while any(len(rates[k]) < repeats or spent[k] < min_seconds for k in steps):
        for key, step in steps.items():
            if len(rates[key]) >= repeats and spent[key] >= min_seconds:
                continue
            t = time.perf_counter()
            for _ in range(iters[key]):
                step()
            took = time.perf_counter() - t
            spent[key] += took
            rates[key].append(samples * iters[key] / took)
    return {key: {"samples_per_s": statistics.median(rates[key]),
                  "repeats_samples_per_s": rates[key], "iterations_per_repeat": iters[key],
                  "warmup_calls": calls[key], "timed_seconds": spent[key], "timed_batch": samples}
            for key in steps}


def measure_qnn(config, seed, x, batches, *, max_seconds, sub_batch, reference) -> dict:
    """qiskit-machine-learning within `max_seconds` in all (construction, warm-up, agreement).

    A new step starts only while the last one's duration still fits; each timed size gets
    at least one step, and a step is never interrupted, so the cap can be overrun by that.
    """
    deadline = time.perf_counter() + max_seconds
    layer = QuantumLayer(config, engine="qnn", seed=seed)
    sizes = sorted({min(b, sub_batch) for b in batches})
    warm = x[:1].clone().requires_grad_()
    training_step(layer, warm, [layer.weight])()  # first-call costs stay out of the timings
    with torch.no_grad():
        probe = x[: sizes[-1]]
        diff = (layer(probe) - reference(probe)).abs().max().item()
    rates: dict[int, list[float]] = {}
    for k, size in enumerate(sizes):
        now = time.perf_counter()
        budget_end = now + max(0.0, deadline - now) / (len(sizes) - k)
        xs = x[:size].clone().requires_grad_()
        step = training_step(layer, xs, [layer.weight])
        rates[size] = []
        while True:
            t = time.perf_counter()
            step()
            took = time.perf_counter() - t
            rates[size].append(size / took)
            if time.perf_counter() + took > budget_end:
                break
    cells = []
    for b in batches:
        size = min(b, sub_batch)
        cells.append({"batch": b, "samples_per_s": statistics.median(rates[size]),
                      "repeats_samples_per_s": rates[size], "iterations_per_repeat": 1,
                      "timed_batch": size, "extrapolated": size < b})
    return {"cells": cells, "max_abs_diff_vs_statevector": diff,
            "note": QNN_NOTE.format(size=sub_batch) if any(c["extrapolated"] for c in cells) else None}


def pennylane_forward(config: QuantumConfig) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The layer's circuit gate by gate in PennyLane, `(x (B, n), weights) -> (B, n)` <Z_q>.

    `qml.from_qiskit` needs the pennylane-qiskit plugin, which brings its own Qiskit version
    range; a translation of Qiskit's decomposition (H, P(2x), CX-P(2(pi-x_i)(pi-x_j))-CX per
    pair; RY layers and a CX chain) keeps to the project's dependencies, and `agreement`
    checks that it is the same circuit. The batch is broadcast, not looped.
    """
    import pennylane as qml

    if config.feature_map != "zz" or config.entanglement != "linear" or config.observables:
        raise ValueError("the PennyLane reference is written for the zz feature map, linear "
                         "entanglement and Z observables only")
    n = config.n_qubits
    pairs = [(i, i + 1) for i in range(n - 1)]

    @qml.qnode(qml.device("default.qubit", wires=n), interface="torch", diff_method="backprop")
    def circuit(x, weights):
        for _ in range(config.feature_map_reps):
            for q in range(n):
                qml.Hadamard(wires=q)
                qml.PhaseShift(2 * x[:, q], wires=q)
            for i, j in pairs:
                qml.CNOT(wires=[i, j])
                qml.PhaseShift(2 * (math.pi - x[:, i]) * (math.pi - x[:, j]), wires=j)
                qml.CNOT(wires=[i, j])
        for layer in range(config.reps + 1):
            for q in range(n):
                qml.RY(weights[layer, q], wires=q)
            if layer < config.reps:
                for i, j in pairs:
                    qml.CNOT(wires=[i, j])
        return [qml.expval(qml.PauliZ(q)) for q in range(n)]

    return lambda x, weights: torch.stack(circuit(x, weights.reshape(config.reps + 1, n)), dim=-1)


def agreement(forward: Callable, weights: torch.Tensor, reference: QuantumLayer,
              x: torch.Tensor) -> dict:
    """Largest differences of outputs and of both gradients between two engines on the same x."""
    results = []
    for fn, w in ((forward, weights), (reference, reference.weight)):
        xi = x.clone().requires_grad_()
        out = fn(xi)
        results.append((out.detach(), *torch.autograd.grad(out.sum(), [xi, w])))
    (o1, x1, w1), (o2, x2, w2) = results
    diff = {"max_abs_diff": (o1 - o2).abs().max().item(),
            "input_grad_max_abs_diff": (x1 - x2).abs().max().item(),
            "weight_grad_max_abs_diff": (w1 - w2).abs().max().item(),
            "samples": len(x), "tolerance": AGREEMENT_TOLERANCE}
    diff["pass"] = max(v for k, v in diff.items() if k.endswith("diff")) < AGREEMENT_TOLERANCE
    return diff


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def machine_info() -> dict:
    return {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "cpus_available": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
        "load_average_at_start": _load_average(),
        **{f"{p.replace('-', '_')}_version": _version(p)
           for p in ("torch", "numpy", "qiskit", "qiskit-machine-learning", "pennylane")},
    }


def run(args: argparse.Namespace) -> dict:
    config = QuantumConfig(n_qubits=args.qubits, feature_map="zz", feature_map_reps=2,
                           reps=args.reps, entanglement="linear")
    batches = args.batches
    machine = machine_info()  # before the run, for the load average
    load = machine["load_average_at_start"]
    if load and load[0] >= machine["cpus_available"] and torch.get_num_threads() > 1:
        # seen here: 2 threads on 2 busy CPUs made every step wait ~170 ms for a preempted
        # thread, up to 100x slower than --threads 1
        logger.warning("load %.1f on %d CPUs with %d torch threads: timings may stall; "
                       "consider --threads 1", load[0], machine["cpus_available"],
                       torch.get_num_threads())
    gen = torch.Generator().manual_seed(args.seed)
    x_all = torch.rand(max(batches), config.n_qubits, generator=gen, dtype=torch.float64) * math.pi
    timing = {"min_seconds": args.min_seconds, "repeats": args.repeats}
    engines: dict[str, dict] = {key: {"description": desc, "engine": key.split("-")[0],
                                      "precision": key.split("-")[1], "status": "measured",
                                      "note": None, "cells": []} for key, desc in ROWS.items()}
    reference = QuantumLayer(config, engine="statevector", precision="float64", seed=args.seed)

    # key -> (forward, trainable tensors, input dtype), timed side by side batch by batch
    timed = {"statevector-float64": (reference, [reference.weight], torch.float64)}
    layer32 = QuantumLayer(config, engine="statevector", precision="float32", seed=args.seed)
    timed["statevector-float32"] = (layer32, [layer32.weight], torch.float32)
    checks: dict[str, dict] = {}
    pl = engines["pennylane-float64"]
    try:
        circuit = pennylane_forward(config)
    except (ImportError, ValueError) as exc:
        hint = "; pip install -e '.[bench]'" if isinstance(exc, ImportError) else ""
        pl.update(status="skipped", note=f"{exc}{hint}")
        logger.warning("PennyLane skipped: %s", pl["note"])
    else:
        weights = reference.weight.detach().clone().requires_grad_()

        def pennylane(v):
            return circuit(v, weights)

        checks["pennylane_vs_statevector"] = agreement(pennylane, weights, reference, x_all[:64])
        logger.info("PennyLane vs statevector: max |diff| %.2e",
                    checks["pennylane_vs_statevector"]["max_abs_diff"])
        timed["pennylane-float64"] = (pennylane, [weights], torch.float64)

    for b in batches:
        steps = {}
        for key, (forward, params, dtype) in timed.items():
            x = x_all[:b].to(dtype, copy=True).requires_grad_()
            steps[key] = training_step(forward, x, params)
        for key, cell in measure(steps, b, **timing).items():
            engines[key]["cells"].append({"batch": b, **cell})
            logger.info("%s batch %d: %.0f samples/s", key, b, cell["samples_per_s"])

    logger.info("qiskit-machine-learning: at most %.0f s", args.qnn_max_seconds)
    qnn = measure_qnn(config, args.seed, x_all, batches, max_seconds=args.qnn_max_seconds,
                      sub_batch=args.qnn_sub_batch, reference=reference)
    engines["qnn-float64"].update(cells=qnn["cells"], note=qnn["note"])
    for cell in qnn["cells"]:
        logger.info("qnn-float64 batch %d: %.2f samples/s", cell["batch"], cell["samples_per_s"])
    checks["qnn_vs_statevector"] = {
        "max_abs_diff": qnn["max_abs_diff_vs_statevector"],
        "note": "TorchConnector returns float32, so differences of ~1e-8 are expected"}

    goal_batch = args.goal_batch if args.goal_batch in batches else max(batches)
    sweep = qubit_sweep(args.qubit_sweep, batch=args.goal_batch, reps=args.reps, seed=args.seed, timing=timing,
                        pennylane_forward=pennylane_forward, training_step=training_step, measure=measure,
                        agreement=agreement) if args.qubit_sweep else []
    machine["load_average_at_end"] = _load_average()
    return {"benchmark": "qnn_throughput", "config": config.to_dict(), "batches": batches,
            "step": "layer(x).sum().backward(), gradients to inputs and weights",
            "timing": {**timing, "statistic": "median of repeats, engines taking turns",
                       "qnn_max_seconds": args.qnn_max_seconds, "qnn_sub_batch": args.qnn_sub_batch},
            "machine": machine, "engines": engines, "checks": checks,
            "goals": goals(engines, checks, goal_batch), "qubit_sweep": sweep}


def goals(engines: dict, checks: dict, batch: int) -> list[dict]:
    """Speedup of statevector-float64 over each baseline at `batch`, against its target."""

    def rate(key):
        cells = [c for c in engines[key]["cells"] if c["batch"] == batch]
        return cells[0]["samples_per_s"] if cells else None

    ours, out = rate("statevector-float64"), []
    for baseline, target in GOALS:
        theirs = rate(baseline)
        speedup = ours / theirs if theirs else None
        goal = {"name": f">= {target:,.0f}x {ROWS[baseline]} at batch {batch}",
                "baseline": baseline, "batch": batch, "target": target, "speedup": speedup,
                "pass": None if speedup is None else speedup >= target}
        if baseline.startswith("pennylane") and speedup is not None:
            if not checks["pennylane_vs_statevector"]["pass"]:
                goal["pass"] = False
                goal["note"] = "PennyLane and statevector disagree: not the same circuit"
        out.append(goal)
    return out


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def _fmt_load(load: list[float] | None) -> str:
    return "n/a" if load is None else " ".join(f"{v:.2f}" for v in load)


def format_report(result: dict) -> str:
    batches = result["batches"]
    lines = ["| engine | precision | " + " | ".join(f"batch {b}" for b in batches) + " |",
             "|---|---|" + "---:|" * len(batches)]
    notes = []
    for key, row in result["engines"].items():
        by_batch = {c["batch"]: c for c in row["cells"]}
        cells = []
        for b in batches:
            cell = by_batch.get(b)
            star = "*" if cell and cell.get("extrapolated") else ""
            cells.append(_fmt(cell and cell["samples_per_s"]) + star)
        lines.append(f"| {row['description']} | {row['precision']} | " + " | ".join(cells) + " |")
        if row["note"]:
            notes.append(f"{key}: {row['note']}")
    lines += ["", "samples/s, forward + backward (" + result["step"] + ")"]
    lines += [f"* {n}" for n in notes]
    lines += ["", "| goal (statevector float64) | speedup | result |", "|---|---:|---|"]
    for goal in result["goals"]:
        verdict = {True: "PASS", False: "FAIL", None: "not measured"}[goal["pass"]]
        speed = "-" if goal["speedup"] is None else f"{goal['speedup']:,.1f}x"
        lines.append(f"| {goal['name']} | {speed} | {verdict} |")
    pl = result["checks"].get("pennylane_vs_statevector")
    if pl:
        lines.append(f"\nPennyLane vs statevector on {pl['samples']} samples: max |diff| "
                     f"{pl['max_abs_diff']:.1e} (outputs), {pl['input_grad_max_abs_diff']:.1e} "
                     f"(input grads), {pl['weight_grad_max_abs_diff']:.1e} (weight grads); "
                     f"tolerance {pl['tolerance']:.0e}")
    m = result["machine"]
    lines.append(f"torch {m['torch_version']}, {m['torch_threads']} threads, "
                 f"{m['cpus_available']} CPUs, load average (1/5/15 min) at start "
                 f"{_fmt_load(m['load_average_at_start'])}, at end {_fmt_load(m['load_average_at_end'])}")
    if "allocator" in m:
        alloc = m["allocator"]
        lines.append("allocator: freed memory retained (glibc mallopt, every engine alike)" if alloc["applied"]
                     else f"allocator: the C library's default ({alloc['reason']})")
    if result.get("qubit_sweep"):
        lines += format_sweep(result["qubit_sweep"])
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", help="comma-separated batch sizes (default 32,256,1024)")
    parser.add_argument("--min-seconds", type=float, help="timed seconds per cell (default 1.0)")
    parser.add_argument("--repeats", type=int, help="repeats per cell, median reported (default 5)")
    parser.add_argument("--qnn-max-seconds", type=float,
                        help="cap on the whole qiskit-machine-learning section (default 20)")
    parser.add_argument("--qnn-sub-batch", type=int, help="samples per timed qnn step (default 8)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--qubits", type=int, default=4)
    parser.add_argument("--reps", type=int, default=2, help="RealAmplitudes repetitions")
    parser.add_argument("--goal-batch", type=int, default=256,
                        help="batch the goals are judged at (the largest batch if not run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--qubit-sweep", default="",
                        help="also time these widths (e.g. 8,12) against PennyLane at --goal-batch")
    parser.add_argument("--allocator", choices=("default", "retain"), default="default",
                        help="default: the C library's own behaviour, as training runs see it; retain: keep "
                             "freed memory mapped (glibc mallopt, hybrid.allocator), for every engine alike")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: batches 2,4, 0.1 s per cell, qnn capped at 3 s")
    args = parser.parse_args(argv)
    for name, (full, quick) in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    try:
        args.batches = [int(b) for b in str(args.batches).split(",")]
    except ValueError:
        parser.error(f"--batches must be comma-separated integers, got {args.batches!r}")
    try:
        args.qubit_sweep = [int(n) for n in str(args.qubit_sweep).split(",") if n.strip()]
    except ValueError:
        parser.error(f"--qubit-sweep must be comma-separated integers, got {args.qubit_sweep!r}")
    if min(args.batches) < 1 or args.qnn_sub_batch < 1 or args.repeats < 1:
        parser.error("batch sizes, --qnn-sub-batch and --repeats must be positive")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    # INFO for this benchmark only: Qiskit logs every transpiler pass at INFO
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logger.setLevel(logging.INFO)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    allocator = (retain_freed_memory() if args.allocator == "retain"
                 else {"applied": False, "reason": "--allocator default"})
    start = time.perf_counter()
    result = run(args)
    result["machine"]["allocator"] = allocator
    result["wall_seconds"] = time.perf_counter() - start
    result["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(format_report(result))
    logger.info("wrote %s", args.out)
    return result


if __name__ == "__main__":
    main()
