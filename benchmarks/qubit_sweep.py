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


def qubit_sweep(widths: list[int], *, batch: int, reps: int, seed: int, timing: dict,
                pennylane_forward: Callable, training_step: Callable, measure: Callable,
                agreement: Callable) -> list[dict]:
    rows = []
    for n in widths:
        config = QuantumConfig(n_qubits=n, feature_map="zz", feature_map_reps=2, reps=reps, entanglement="linear")
        layer = QuantumLayer(config, engine="statevector", precision="float64", seed=seed)
        x_all = torch.rand(batch, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * math.pi
        steps = {"statevector-float64": training_step(layer, x_all.clone().requires_grad_(), [layer.weight])}
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
        if "pennylane-float64" in cells:
            row["pennylane"] = cells["pennylane-float64"]["samples_per_s"]
        row["speedup"] = row["statevector"] / row["pennylane"] if row["pennylane"] else None
        row["pass"] = None if row["speedup"] is None else bool(row["speedup"] >= SWEEP_GOAL and row["check"]["pass"])
        rows.append(row)
    return rows


def format_sweep(rows: list[dict]) -> list[str]:
    lines = ["", f"Qubit sweep (forward + backward, float64; goal >= {SWEEP_GOAL:.0f}x PennyLane at every width):", "",
             "| qubits | batch | statevector samples/s | PennyLane samples/s | speedup | same circuit | result |",
             "|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        speed = "-" if r["speedup"] is None else f"{r['speedup']:.1f}x"
        same = "-" if r["check"] is None else f"max diff {r['check']['max_abs_diff']:.0e}"
        verdict = {True: "PASS", False: "FAIL", None: "not measured"}[r["pass"]]
        pl = "-" if r["pennylane"] is None else f"{r['pennylane']:,.1f}"
        lines.append(f"| {r['qubits']} | {r['batch']} | {r['statevector']:,.1f} | {pl} | {speed} | {same} | {verdict} |")
    return lines
