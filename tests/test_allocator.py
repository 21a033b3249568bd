"""Keeping freed memory mapped: with `retain_freed_memory`, an 8-qubit forward + backward stops
faulting freshly freed pages back in (measured in a fresh process each way, as the setting is
process-wide)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

STEPS = """
import json, resource, sys, torch
torch.set_num_threads(1)
from hybrid.allocator import retain_freed_memory
from hybrid.quantum import QuantumConfig, QuantumLayer
applied = retain_freed_memory() if sys.argv[1] == "retain" else {"applied": False}
layer = QuantumLayer(QuantumConfig(n_qubits=8), engine="statevector", seed=0)
x = torch.rand(256, 8, dtype=torch.float64, requires_grad=True)
for _ in range(3):
    layer(x).sum().backward()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    layer(x).sum().backward()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
print(json.dumps({"applied": applied["applied"], "faults_per_step": faults}))
"""


def _faults_per_step(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, timeout=300,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")
def test_retained_memory_is_not_faulted_in_again_by_an_8_qubit_step():
    default, retained = _faults_per_step("default"), _faults_per_step("retain")
    assert retained["applied"] and not default["applied"]
    # by default each step faults in ~1,000 pages (4 KiB) of states it freed the step before
    assert default["faults_per_step"] > 100
    assert retained["faults_per_step"] < default["faults_per_step"] / 10
