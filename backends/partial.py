"""Partial results of an evaluation on a remote backend, so a failed job loses nothing.

A JSON-lines file in the run directory: a header with the settings the results depend on,
then one line per finished batch (domain, start index, class probabilities, and what that
batch cost: jobs, shots, seconds). `--resume` reuses the finished batches when the settings
match; the file is removed once the evaluation's report is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from backends.registry import BackendError
from backends.runner import ExecutionStats


def _normalized(settings: dict) -> dict:
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


class PartialResults:
    def __init__(self, path: Path, settings: dict, stats: ExecutionStats, *, resume: bool = False) -> None:
        self.path = Path(path)
        self.settings = _normalized(settings)
        self.stats = stats
        self.records: dict[tuple[str, int], dict] = {}
        self.reused = 0
        if resume and self.path.is_file():
            self._load()
        else:
            self.path.write_text(json.dumps({"kind": "header", "settings": self.settings}) + "\n")
        self._last = stats.to_dict()

    def _load(self) -> None:
        lines = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        if not lines or lines[0].get("kind") != "header":
            raise BackendError(f"{self.path} is not a partial-results file; delete it or rerun without --resume")
        if lines[0]["settings"] != self.settings:
            changed = sorted(k for k in set(self.settings) | set(lines[0]["settings"])
                             if self.settings.get(k) != lines[0]["settings"].get(k))
            raise BackendError(f"{self.path} was written with different settings ({', '.join(changed)}); rerun "
                               "with the same options, or without --resume to start over")
        for record in lines[1:]:
            self.records[(record["domain"], record["start"])] = record

    def get(self, domain: str, start: int) -> np.ndarray | None:
        """Saved probabilities of the batch at `start` of `domain`, or None."""
        record = self.records.get((domain, start))
        if record is None:
            return None
        self.reused += 1
        return np.asarray(record["probs"], dtype=np.float32)

    def add(self, domain: str, start: int, probs: np.ndarray) -> None:
        """Append a finished batch, with what it cost since the previous one, and flush."""
        cost = self.stats.since(self._last)
        self._last = self.stats.to_dict()
        record = {"domain": domain, "start": start, "n": len(probs), "probs": np.asarray(probs).tolist(),
                  "execution": cost}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
        self.records[(domain, start)] = record

    @property
    def n_samples(self) -> int:
        return sum(r["n"] for r in self.records.values())

    def totals(self) -> dict:
        """Execution summed over every saved batch, from this session and earlier ones."""
        total = ExecutionStats()
        for record in self.records.values():
            total.add(record["execution"])
        return total.to_dict()

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
