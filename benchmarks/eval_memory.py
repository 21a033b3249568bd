"""Memory and speed of `hybrid.evaluate` on a large external file (streamed in batches).

    python -m benchmarks.eval_memory                         # 100,000 images at 28 px vs 10,000
    python -m benchmarks.eval_memory --run runs/default      # a trained run of yours
    python -m benchmarks.eval_memory --images 2000 --reference-images 500 --out /tmp/m.json

Builds an .npz of real PneumoniaMNIST test images (tiled to the size asked, labels kept), then
runs `python -m hybrid.evaluate --run RUN --data FILE` as a child process for the large file and
for the reference size, and records each child's peak resident memory (wait4's ru_maxrss) and
images/s. Streaming means the peak grows with the file's uint8 pixels (784 bytes an image), not with
float tensors of every image; `peak_ratio` (large / reference) shows it in the same run. Without
--run, a small run (width 0.35, one epoch on 300 images, the default TTA adabn) is trained first.
Goal (#17): 100,000 images evaluate with a peak under 3 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
GOAL_MB = 3 * 1024


def make_file(path: Path, n: int, data_root) -> None:
    """`n` real test images (tiled) with their labels, as images/labels."""
    from hybrid.data import load_medmnist

    test = load_medmnist("pneumoniamnist", data_root).test
    idx = np.arange(n) % len(test)
    np.savez(path, images=test.images[idx, ..., 0], labels=test.labels[idx])


def measure(command: list[str], images: int) -> dict:
    """Run one child; its wall time, peak RSS and images/s."""
    env = os.environ | {"OMP_NUM_THREADS": str(os.environ.get("OMP_NUM_THREADS", "1"))}
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe: a long progress bar must not fill it and block
        child = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        log.seek(0)
        err = log.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{err[-2000:]}")
    peak_mb = usage.ru_maxrss / 1024  # kilobytes on Linux
    return {"images": images, "seconds": seconds, "images_per_s": images / seconds, "peak_rss_mb": peak_mb}


def train_small_run(out: Path, data_root) -> Path:
    from hybrid import train

    argv = ["--epochs", "1", "--max-train-samples", "300", "--width-mult", "0.35", "--stem-stride", "2",
            "--n-bootstrap", "0", "--quiet", "--out", str(out)] + (["--data-root", str(data_root)] if data_root else [])
    if train.main(argv) != 0:
        raise SystemExit("training the benchmark's run failed")
    return out


def main(argv: list[str] | None = None) -> dict:
    from hybrid.data import resolve_data_root

    parser = argparse.ArgumentParser(prog="python -m benchmarks.eval_memory", description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, help="trained run to evaluate (default: train a small one)")
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--reference-images", type=int, default=10_000)
    parser.add_argument("--data-root", help="folder with pneumoniamnist.npz (default: $HYBRID_DATA_ROOT)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "eval_memory.json")
    args = parser.parse_args(argv)
    data_root = resolve_data_root(args.data_root)
    with tempfile.TemporaryDirectory(prefix="eval_memory_") as tmp:
        tmp = Path(tmp)
        run = args.run or train_small_run(tmp / "run", data_root)
        rows = {}
        for label, n in (("reference", args.reference_images), ("large", args.images)):
            data = tmp / f"{label}.npz"
            make_file(data, n, data_root)
            command = [sys.executable, "-m", "hybrid.evaluate", "--run", str(run), "--data", str(data),
                       "--name", f"memory_{label}", "--device", "cpu"]
            rows[label] = measure(command, n) | {"file_mb": data.stat().st_size / 2**20}
            print(f"{label:9s} {n:7d} images: {rows[label]['seconds']:6.1f} s, "
                  f"{rows[label]['images_per_s']:7.0f} images/s, peak {rows[label]['peak_rss_mb']:6.0f} MB", flush=True)
    large, ref = rows["large"], rows["reference"]
    result = {"run": str(args.run) if args.run else "small run trained by the benchmark", "rows": rows,
              "peak_ratio": large["peak_rss_mb"] / ref["peak_rss_mb"],
              "images_ratio": large["images"] / ref["images"],
              "goal_peak_mb": GOAL_MB, "goal_met": large["peak_rss_mb"] < GOAL_MB,
              "threads": os.environ.get("OMP_NUM_THREADS"), "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(f"peak memory x{result['peak_ratio']:.2f} for x{result['images_ratio']:.0f} the images; "
          f"goal < {GOAL_MB} MB: {'met' if result['goal_met'] else 'NOT met'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
