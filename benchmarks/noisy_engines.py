"""The two simulators of a noisy device, side by side: `aer_noisy` (Aer samples shots, measured in Pauli bases
by BackendEstimatorV2) and `torch_noisy` (the same noise model as a torch density matrix, hybrid.quantum.density).

    python -m benchmarks.noisy_engines                      # fake_manila, 4-qubit z+zz circuit, 1,024 shots
    python -m benchmarks.noisy_engines --batch 64 --rounds 3 --out /tmp/noisy.json

Both run the layer's circuit of the adopted dressed recipe (angle map, z+zz observables) on the same random
inputs and weights, one job per batch; timed in the same process, so `speedup` (Aer's seconds / torch's) is a
ratio measured in one run. `agreement`: torch's noisy expectation values without shots against Aer's
`--check-shots` estimates, in units of the estimates' standard error (|z| beyond 4 would mean the engines differ).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LABELS = ("IIIZ", "IIZI", "IZII", "ZIII", "IIZZ", "IZZI", "ZZII")


def timed(runner, angles: np.ndarray, weights: np.ndarray, rounds: int) -> tuple[float, np.ndarray]:
    """Median seconds of `rounds` calls after one warm-up, and the last call's values."""
    values = runner(angles, weights)
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        values = runner(angles, weights)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), values


def main(argv: list[str] | None = None) -> dict:
    from backends import get_backend
    from hybrid.quantum import QuantumConfig, build_circuit

    parser = argparse.ArgumentParser(prog="python -m benchmarks.noisy_engines", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="fake_manila", help="fake IBM device whose noise model both simulate")
    parser.add_argument("--shots", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--check-shots", type=int, default=100_000, help="Aer shots of the agreement check")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "noisy_engines.json")
    args = parser.parse_args(argv)
    spec = build_circuit(QuantumConfig(n_qubits=4, feature_map="angle", observables=LABELS))
    rng = np.random.default_rng(args.seed)
    angles = rng.uniform(0, np.pi, (args.batch, 4))
    weights = rng.uniform(-np.pi, np.pi, len(spec.weight_params))
    rows = {}
    for name in ("aer_noisy", "torch_noisy"):
        runner = get_backend(name, noise_model=args.device, shots=args.shots, seed=args.seed).make_runner(spec)
        seconds, _ = timed(runner, angles, weights, args.rounds)
        rows[name] = {"seconds_per_batch": seconds, "samples_per_s": args.batch / seconds}
        print(f"{name:12s} {args.shots} shots, batch {args.batch}: {seconds * 1e3:8.1f} ms "
              f"({rows[name]['samples_per_s']:8.0f} samples/s)", flush=True)
    few = angles[:8]
    noisy = get_backend("torch_noisy", noise_model=args.device, shots=0).make_runner(spec)(few, weights)
    sampled = get_backend("aer_noisy", noise_model=args.device, shots=args.check_shots,
                          seed=args.seed).make_runner(spec)(few, weights)
    z = (sampled - noisy) / np.sqrt(np.clip(1 - noisy**2, 1e-12, None) / args.check_shots)
    result = {"device": args.device, "shots": args.shots, "batch": args.batch, "rounds": args.rounds, "rows": rows,
              "speedup": rows["aer_noisy"]["seconds_per_batch"] / rows["torch_noisy"]["seconds_per_batch"],
              "agreement": {"check_shots": args.check_shots, "samples": len(few), "max_abs_z": float(np.abs(z).max()),
                            "rms_z": float(np.sqrt((z**2).mean()))},
              "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(f"torch_noisy is {result['speedup']:.1f}x faster than aer_noisy; its shot-free noisy values vs Aer at "
          f"{args.check_shots} shots: max |z| {result['agreement']['max_abs_z']:.2f}, "
          f"rms {result['agreement']['rms_z']:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
