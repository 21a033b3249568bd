"""The throughput benchmark runs end to end in --quick mode and writes well-formed results."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    from benchmarks import qnn_throughput

    return qnn_throughput


def test_quick_benchmark_writes_complete_results(bench, tmp_path):
    out = tmp_path / "q.json"
    returned = bench.main(["--quick", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["batches"] == returned["batches"] == [2, 4]
    assert result["config"]["n_qubits"] == 4 and result["config"]["feature_map"] == "zz"
    assert set(result["engines"]) == set(bench.ROWS)
    for key, row in result["engines"].items():
        if key.startswith("pennylane") and row["status"] == "skipped":
            assert row["note"] and row["cells"] == []
            continue
        assert row["status"] == "measured", key
        assert [c["batch"] for c in row["cells"]] == result["batches"], key
        assert all(c["samples_per_s"] > 0 for c in row["cells"]), key
    # the qnn cells larger than the sub-batch are extrapolated, and say so
    qnn = result["engines"]["qnn-float64"]
    assert qnn["cells"][-1]["extrapolated"] and "sub-batch" in qnn["note"]
    assert result["checks"]["qnn_vs_statevector"]["max_abs_diff"] < 1e-6  # float32 connector
    pl = result["checks"].get("pennylane_vs_statevector")
    if result["engines"]["pennylane-float64"]["status"] == "measured":
        assert pl["pass"] and pl["max_abs_diff"] < 1e-8
        assert pl["input_grad_max_abs_diff"] < 1e-8 and pl["weight_grad_max_abs_diff"] < 1e-8
    for goal in result["goals"]:
        assert goal["batch"] == 4  # --goal-batch 256 is not run in quick mode: the largest is
        assert goal["pass"] in (True, False, None) and goal["target"] > 1
    assert result["machine"]["torch_threads"] >= 1 and result["machine"]["torch_version"]


def test_qubit_sweep_times_each_width_against_pennylane(bench, tmp_path):
    out = tmp_path / "sweep.json"
    bench.main(["--quick", "--qubit-sweep", "3,9", "--goal-batch", "4", "--out", str(out)])
    rows = json.loads(out.read_text())["qubit_sweep"]
    assert [r["qubits"] for r in rows] == [3, 9] and all(r["statevector"] > 0 for r in rows)
    for r in rows:  # 9 qubits: above FUSE_MAX_QUBITS, applied gate by gate, still the same circuit
        if r["pennylane"] is not None:
            assert r["check"]["pass"] and r["speedup"] == pytest.approx(r["statevector"] / r["pennylane"])
            assert r["pass"] == (r["speedup"] >= 10)
        assert set(r["paths"]) == {"blocks", "fused"} and min(r["paths"].values()) > 0  # both engine paths timed


def test_goals_compare_statevector_float64_with_each_baseline(bench):
    def row(rate):
        return {"cells": [{"batch": 256, "samples_per_s": rate}]}

    engines = {"statevector-float64": row(100_000.0), "pennylane-float64": row(5_000.0),
               "qnn-float64": row(20.0)}
    agree = {"pennylane_vs_statevector": {"pass": True}}
    by_baseline = {g["baseline"]: g for g in bench.goals(engines, agree, 256)}
    assert by_baseline["pennylane-float64"]["speedup"] == 20.0
    assert by_baseline["pennylane-float64"]["pass"] is True
    assert by_baseline["qnn-float64"]["speedup"] == 5_000.0
    assert by_baseline["qnn-float64"]["pass"] is False  # below 10,000x
    # a PennyLane circuit that disagrees with ours is not a valid baseline
    disagree = {"pennylane_vs_statevector": {"pass": False}}
    assert bench.goals(engines, disagree, 256)[0]["pass"] is False
    # an unmeasured baseline is neither a pass nor a failure
    engines["pennylane-float64"] = {"cells": []}
    assert bench.goals(engines, agree, 256)[0]["pass"] is None


def test_pennylane_is_an_optional_import(bench, monkeypatch):
    monkeypatch.setitem(sys.modules, "pennylane", None)  # as if not installed
    with pytest.raises(ImportError):
        bench.pennylane_forward(bench.QuantumConfig())


@pytest.mark.slow
def test_epoch_time_benchmark_compares_every_configuration_with_the_plain_loop(tmp_path, data_root, capsys):
    from benchmarks import epoch_time

    out = tmp_path / "epoch_time.json"
    returned = epoch_time.main(["--steps", "1", "--rounds", "1", "--max-train-samples", "300", "--threads", "1",
                                "--data-root", str(data_root), "--out", str(out)])
    result = json.loads(out.read_text())
    rows = result["configurations"]
    assert list(rows) == ["plain", "full", "full_nchw", "no_quantum", "dressed8"] == list(returned["configurations"])
    assert rows["plain"]["ratio_to_plain"] == 1.0
    for name, row in rows.items():
        assert row["images_per_s"] == pytest.approx(result["batch_size"] / row["median_step_s"]), name
        assert row["ratio_to_plain"] == pytest.approx(row["images_per_s"] / rows["plain"]["images_per_s"]), name
        assert row["steps_timed"] == 1 and row["first_step_s"] > 0
    assert result["full_vs_plain"] == rows["full"]["ratio_to_plain"]
    assert result["pass_speedup"] == (result["full_vs_plain"] >= result["goal_speedup"] == 1.3)
    ratio = rows["full"]["median_step_s"] / rows["no_quantum"]["median_step_s"]
    assert result["quantum_overhead"] == pytest.approx(ratio - 1)
    dressed = rows["dressed8"]["median_step_s"] / rows["no_quantum"]["median_step_s"] - 1
    assert result["dressed8_overhead"] == pytest.approx(dressed) and result["goal_dressed8_overhead"] == 0.15
    assert "| full |" in capsys.readouterr().out


@pytest.mark.slow
def test_scaling_benchmark_times_one_and_two_processes(tmp_path, data_root, monkeypatch):
    from benchmarks import scaling

    monkeypatch.setenv("HYBRID_DATA_ROOT", str(data_root))
    out = tmp_path / "scaling.json"
    result = scaling.main(["--steps", "1", "--warmup", "0", "--rounds", "1", "--batch-size", "16",
                           "--processes", "2", "--out", str(out)])
    rows = json.loads(out.read_text())["configurations"]
    assert list(rows) == ["1proc_1thread", "1proc_2threads", "2proc_1thread"] == list(result["configurations"])
    assert rows["1proc_1thread"]["speedup_vs_1proc_1thread"] == 1.0
    for row in rows.values():
        assert row["images_per_s"] == pytest.approx(16 / row["median_step_s"]) and row["steps_timed"] == 1
    assert rows["2proc_1thread"]["processes"] == 2


def test_eval_memory_benchmark_measures_both_sizes(tiny_run, data_root, tmp_path):
    from benchmarks import eval_memory

    out = tmp_path / "m.json"
    result = eval_memory.main(["--run", str(tiny_run), "--images", "1200", "--reference-images", "300",
                               "--data-root", str(data_root), "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert set(result["rows"]) == {"reference", "large"} and result["images_ratio"] == 4
    for row in result["rows"].values():
        assert row["peak_rss_mb"] > 50 and row["images_per_s"] > 0 and row["file_mb"] > 0
    assert result["peak_ratio"] > 0 and isinstance(result["goal_met"], bool)


def test_quick_benchmark_records_the_allocator_setting(bench, tmp_path):
    out = tmp_path / "default.json"
    bench.main(["--quick", "--batches", "2", "--allocator", "default", "--out", str(out)])
    alloc = json.loads(out.read_text())["machine"]["allocator"]
    assert alloc == {"applied": False, "reason": "--allocator default"}
    assert bench.parse_args([]).allocator == "default"  # the goal is judged as training runs
    with pytest.raises(SystemExit):
        bench.parse_args(["--allocator", "jemalloc"])
