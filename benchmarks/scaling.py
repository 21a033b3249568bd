"""Data-parallel scaling: training throughput of 1 process against 2 (torchrun, gloo) on this machine.

    python -m benchmarks.scaling                  # default config, real PneumoniaMNIST, global batch 128
    python -m benchmarks.scaling --steps 20 --out /tmp/scaling.json

Configurations, all at the same global batch and on the same real images, each timed with
`hybrid.fit`'s own step (shifted batch, DANN forward/backward through DistributedDataParallel
where there are several ranks, AdamW):
- `1proc_1thread`: the reference;
- `1proc_Nthreads`: one process with every core as torch threads;
- `Nproc_1thread`: `torchrun --nproc-per-node N` (gloo), each rank one thread and half the batch.
Each reports images/s (global batch / median step time) and its ratio to the reference
measured in the same run; rounds alternate so that drift in machine load hits all alike.

On a GPU node, DDP with nccl splits the batch over GPUs: expect close to linear scaling while
each GPU's share stays large enough to keep it busy; no GPU figure is claimed here unless it
was measured on one (the JSON records the device).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def worker(args) -> None:
    """One rank: time `args.steps` training steps and (rank 0) print the step times as JSON."""
    from hybrid.algorithms import make_algorithm
    from hybrid.config import TrainConfig
    from hybrid.data import load_dataset, resolve_data_root
    from hybrid.distributed import Distributed
    from hybrid.domains import DomainSampler, split_to_tensors
    from hybrid.fit import Generators, make_batch
    from hybrid.model import HybridNet

    torch.set_num_threads(args.threads)
    cfg = TrainConfig(batch_size=args.batch_size)
    ddp = Distributed.from_env(torch.device("cpu"))
    bundle = load_dataset(cfg.dataset, resolve_data_root(None), size=cfg.size)
    x, y = split_to_tensors(bundle.train, cfg.input_size, bundle.n_channels)
    sampler = DomainSampler(cfg, None)
    torch.manual_seed(0)
    algorithm = make_algorithm(cfg.algorithm, HybridNet(cfg.model_config(), x.shape[1], 2), cfg,
                               n_domains=sampler.n_domains, total_steps=1_000_000)
    runner = ddp.wrap(algorithm, torch.device("cpu"))
    generators = Generators.seeded(0, ddp)
    times = []
    for step in range(args.warmup + args.steps):
        idx = ddp.shard(torch.randint(len(y), (cfg.batch_size,), generator=generators.order))
        t0 = time.perf_counter()
        xb, domains = make_batch(sampler, x, idx, generators.batch, cfg.augment)
        algorithm.update(xb, y[idx], domains, 500_000 + step, runner=runner)
        times.append(time.perf_counter() - t0)
    slowest = ddp.gather(times[args.warmup:])  # a step ends when the slowest rank's gradients arrive
    ddp.close()
    if ddp.is_main:
        print(json.dumps({"step_seconds": [max(ts) for ts in zip(*slowest)]}))


def _measure(name: str, procs: int, threads: int, args) -> list[float]:
    common = ["--worker", "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size",
              str(args.batch_size), "--threads", str(threads)]
    if procs == 1:
        cmd = [sys.executable, "-m", "benchmarks.scaling", *common]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs), "--master-port",
               str(29400 + os.getpid() % 500), "-m", "benchmarks.scaling", *common]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=os.environ | {"OMP_NUM_THREADS": str(threads)})
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["step_seconds"]


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration and round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128, help="global batch")
    parser.add_argument("--processes", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", default="benchmarks/results/scaling.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return None
    n = args.processes
    configs = {"1proc_1thread": (1, 1), f"1proc_{n}threads": (1, n), f"{n}proc_1thread": (n, 1)}
    steps = {name: [] for name in configs}
    for round_ in range(args.rounds):
        for name, (procs, threads) in configs.items():
            steps[name] += _measure(name, procs, threads, args)
            print(f"round {round_ + 1}/{args.rounds} {name}: median step {statistics.median(steps[name]):.3f} s",
                  flush=True)
    reference = statistics.median(steps["1proc_1thread"])
    rows = {name: {"processes": configs[name][0], "threads_per_process": configs[name][1],
                   "median_step_s": statistics.median(s), "images_per_s": args.batch_size / statistics.median(s),
                   "speedup_vs_1proc_1thread": reference / statistics.median(s), "steps_timed": len(s)}
            for name, s in steps.items()}
    print(f"\n{'configuration':16s} {'images/s':>9s} {'x 1proc_1thread':>16s}")
    for name, r in rows.items():
        print(f"{name:16s} {r['images_per_s']:9.1f} {r['speedup_vs_1proc_1thread']:16.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "scaling", "global_batch": args.batch_size, "device": "cpu", "cores": os.cpu_count(),
              "torch": torch.__version__, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "configurations": rows}
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")
    return result


if __name__ == "__main__":
    main()
