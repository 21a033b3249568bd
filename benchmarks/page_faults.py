"""Page faults and time of an 8-qubit forward + backward, with the C library's allocator and with
freed memory retained (`hybrid.allocator`), each in a fresh process (the setting is process-wide).

    python -m benchmarks.page_faults                      # 8 qubits, batch 256, 50 steps each way
    python -m benchmarks.page_faults --qubits 12 --steps 5

Prints a table and writes `--out` as JSON. Both rows run the same exact engine; the time ratio
between them is measured in this one run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "page_faults.json"
MODES = ("default", "retain")
STEPS = """
import json, resource, sys, time, torch
torch.set_num_threads(1)
from hybrid.allocator import retain_freed_memory
from hybrid.quantum import QuantumConfig, QuantumLayer
mode, qubits, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
applied = retain_freed_memory() if mode == "retain" else {"applied": False}
layer = QuantumLayer(QuantumConfig(n_qubits=qubits), engine="statevector", seed=0)
x = torch.rand(batch, qubits, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_()
for _ in range(3):
    layer(x).sum().backward()
before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(steps):
    layer(x).sum().backward()
seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"mode": mode, "applied": applied["applied"], "faults_per_step": (after.ru_minflt - before.ru_minflt) / steps,
                  "system_seconds_per_step": (after.ru_stime - before.ru_stime) / steps, "seconds_per_step": seconds / steps}))
"""


def faults_per_step(mode: str, qubits: int = 8, batch: int = 256, steps: int = 10) -> dict:
    """One fresh process: minor page faults, system time and wall time per forward + backward."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    done = subprocess.run([sys.executable, "-c", STEPS, mode, str(qubits), str(batch), str(steps)],
                          capture_output=True, text=True, timeout=600, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qubits", type=int, default=8)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    rows = {mode: faults_per_step(mode, args.qubits, args.batch, args.steps) for mode in MODES}
    result = {"benchmark": "page_faults", "qubits": args.qubits, "batch": args.batch, "steps": args.steps,
              "rows": rows, "retain_speedup": rows["default"]["seconds_per_step"] / rows["retain"]["seconds_per_step"]}
    print("| allocator | page faults / step | system s / step | s / step |\n|---|---:|---:|---:|")
    for mode, r in rows.items():
        print(f"| {mode} | {r['faults_per_step']:,.0f} | {r['system_seconds_per_step']:.4f} | {r['seconds_per_step']:.4f} |")
    print(f"retained memory: {result['retain_speedup']:.2f}x the default's speed (same run)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
