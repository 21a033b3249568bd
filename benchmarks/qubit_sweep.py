"""The qubit sweep of `benchmarks/qnn_throughput.py --qubit-sweep 8,12`: at each width, the exact
engine (float64) against PennyLane default.qubit backprop on the same circuit, forward + backward
at one batch, timed side by side; the goal is a speedup of at least 10x at every width.

The timing and circuit helpers are passed in (they live in qnn_throughput), so this module
imports nothing from it.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from hybrid.quantum import QuantumConfig, QuantumLayer

SWEEP_GOAL = 10.0  # minimum speedup over PennyLane at every width
FUSED_MAX_TIMED = 10  # the fused path is timed up to here (at 12 qubits one step took 136 s)


def engine_paths(layer: QuantumLayer, n: int) -> dict[str, Callable]:
    """The same circuit compiled with each path for its weight runs, so the sweep shows where
    FUSE_MAX_QUBITS should sit: one fused 2**n x 2**n unitary, or Kronecker blocks on the state."""
    from hybrid.quantum.statevector import compile_circuit

    spec = layer.spec
    paths = {"blocks": 0} | ({"fused": n} if n <= FUSED_MAX_TIMED else {})
    programs = {name: compile_circuit(spec.circuit, spec.input_params, spec.weight_params, spec.observables,
                                      fuse_max_qubits=fuse) for name, fuse in paths.items()}
    return {name: (lambda v, program=program: program(v, layer.weight)) for name, program in programs.items()}


def qubit_sweep(widths: list[int], *, batch: int, reps: int, seed: int, timing: dict,
                pennylane_forward: Callable, training_step: Callable, measure: Callable,
                agreement: Callable) -> list[dict]:
    rows = []
    for n in widths:
        config = QuantumConfig(n_qubits=n, feature_map="zz", feature_map_reps=2, reps=reps, entanglement="linear")
        layer = QuantumLayer(config, engine="statevector", precision="float64", seed=seed)
        x_all = torch.rand(batch, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * math.pi
        steps = {"statevector-float64": training_step(layer, x_all.clone().requires_grad_(), [layer.weight])}
        for path, forward in engine_paths(layer, n).items():
            steps[path] = training_step(forward, x_all.clone().requires_grad_(), [layer.weight])
        row = {"qubits": n, "batch": batch, "pennylane": None, "check": None}
        try:
            circuit = pennylane_forward(config)
        except (ImportError, ValueError) as exc:
            row["note"] = f"PennyLane skipped: {exc}"
        else:
            weights = layer.weight.detach().clone().requires_grad_()

            def pennylane(v, circuit=circuit, weights=weights):
                return circuit(v, weights)

            row["check"] = agreement(pennylane, weights, layer, x_all[:8])
            steps["pennylane-float64"] = training_step(pennylane, x_all.clone().requires_grad_(), [weights])
        cells = measure(steps, batch, **timing)
        row["statevector"] = cells["statevector-float64"]["samples_per_s"]
        row["paths"] = {path: cells[path]["samples_per_s"] for path in ("blocks", "fused") if path in cells}
        if "pennylane-float64" in cells:
            row["pennylane"] = cells["pennylane-float64"]["samples_per_s"]
        row["speedup"] = row["statevector"] / row["pennylane"] if row["pennylane"] else None
        row["pass"] = None if row["speedup"] is None else bool(row["speedup"] >= SWEEP_GOAL and row["check"]["pass"])
        rows.append(row)
    return rows


def format_sweep(rows: list[dict]) -> list[str]:
    lines = ["", f"Qubit sweep (forward + backward, float64; goal >= {SWEEP_GOAL:.0f}x PennyLane at every width):", "",
             "| qubits | batch | statevector samples/s | (blocks / fused path) | PennyLane samples/s | speedup "
             "| same circuit | result |",
             "|---:|---:|---:|---|---:|---:|---|---|"]
    for r in rows:
        speed = "-" if r["speedup"] is None else f"{r['speedup']:.1f}x"
        same = "-" if r["check"] is None else f"max diff {r['check']['max_abs_diff']:.0e}"
        verdict = {True: "PASS", False: "FAIL", None: "not measured"}[r["pass"]]
        pl = "-" if r["pennylane"] is None else f"{r['pennylane']:,.1f}"
        paths = " / ".join(f"{r.get('paths', {}).get(p, 0):,.0f}" if p in r.get("paths", {}) else "-"
                           for p in ("blocks", "fused"))
        lines.append(f"| {r['qubits']} | {r['batch']} | {r['statevector']:,.1f} | {paths} | {pl} | {speed} | {same} "
                     f"| {verdict} |")
    return lines
