"""Partial results of an evaluation on a remote backend, so a failed job loses nothing.

A JSON-lines file in the run directory: a header with the settings the results depend on,
then one line per finished batch (domain, start index, class probabilities, and what that
batch cost: jobs, shots, seconds). `--resume` reuses the finished batches when the settings
match; the file is removed once the evaluation's report is written.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from backends.registry import BackendError
from backends.runner import ExecutionStats

log = logging.getLogger("backends.partial")


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
        lines, torn = self._read_lines()
        if not lines or lines[0].get("kind") != "header":
            raise BackendError(f"{self.path} is not a partial-results file; delete it or rerun without --resume")
        if lines[0]["settings"] != self.settings:
            changed = sorted(k for k in set(self.settings) | set(lines[0]["settings"])
                             if self.settings.get(k) != lines[0]["settings"].get(k))
            raise BackendError(f"{self.path} was written with different settings ({', '.join(changed)}); rerun "
                               "with the same options, or without --resume to start over")
        for record in lines[1:]:
            try:
                self.records[(record["domain"], record["start"])] = record
            except (KeyError, TypeError):
                raise BackendError(f"{self.path} is damaged (a batch line lacks its domain or start); delete it or "
                                   "rerun without --resume to start over") from None
        if torn:  # rewritten without it, so the next batch is appended on a line of its own
            log.warning("%s: dropped its last line, a batch cut off mid-write; it will be recomputed", self.path)
            self.path.write_text("".join(json.dumps(line) + "\n" for line in lines))

    def _read_lines(self) -> tuple[list[dict], bool]:
        """The file's records, and whether its last line was torn. A torn last line is a batch killed mid-append:
        it never finished, so it is dropped; a bad line anywhere else means the file is damaged."""
        texts = [line for line in self.path.read_text().splitlines() if line.strip()]
        records = []
        for number, text in enumerate(texts, 1):
            try:
                records.append(json.loads(text))
            except json.JSONDecodeError:
                if number == len(texts) and number > 1:
                    return records, True
                raise BackendError(f"{self.path} is damaged (line {number} is not JSON); delete it or rerun "
                                   "without --resume to start over") from None
        return records, False

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
