"""Keeping freed memory mapped: with `retain_freed_memory`, an 8-qubit forward + backward stops
faulting freshly freed pages back in (measured in a fresh process each way, as the setting is
process-wide, by the page-fault benchmark's own probe)."""

from __future__ import annotations

import json
import platform

import pytest

from benchmarks.page_faults import faults_per_step, main


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")
def test_retained_memory_is_not_faulted_in_again_by_an_8_qubit_step():
    # 50 steps, as the benchmark runs: a one-off growth of the heap (~1,000 faults) would be 100 per step over 10
    default, retained = faults_per_step("default", steps=50), faults_per_step("retain", steps=50)
    assert retained["applied"] and not default["applied"]
    # by default each step faults in ~1,000 pages (4 KiB) of states it freed the step before
    assert default["faults_per_step"] > 100
    assert retained["faults_per_step"] < default["faults_per_step"] / 10


def test_page_fault_benchmark_writes_both_rows(tmp_path):
    out = tmp_path / "faults.json"
    result = main(["--qubits", "4", "--batch", "8", "--steps", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert set(result["rows"]) == {"default", "retain"} and result["retain_speedup"] > 0
    with pytest.raises(ValueError, match="mode"):
        faults_per_step("jemalloc")
