"""hybrid.recovery_map: noise-aware rounds placed by their exact cost and their device gain."""

from __future__ import annotations

import json

import pytest

from hybrid.studies import recovery_map

BACKEND = "torch_noisy:fake_manila"


def _pooled(folder, seeds, shots=1024):
    """A sweep_pool recovery.json from per-seed (exact-trained exact, on device, noise-aware exact, on device)."""
    from hybrid.studies.shot_sweep import recovery
    from hybrid.studies.sweep_pool import pool

    sweeps = []
    for exact_first, device_first, exact_second, device_second in seeds:
        runs = [{"run": f"runs/{name}", "exact": {"auc": exact}, "samples_per_domain": 100, "domains": ["d"],
                 "curves": {BACKEND: [{"shots": shots, "auc": device}]}}
                for name, exact, device in (("exact", exact_first, device_first), ("aware", exact_second, device_second))]
        sweeps.append({"runs": runs, "recovery": recovery(*runs)})
    folder.mkdir(parents=True)
    (folder / "recovery.json").write_text(json.dumps(pool(sweeps)))
    return folder


def test_each_round_lands_at_its_exact_cost_and_device_gain_over_the_exact_trained_loss(tmp_path, capsys):
    # costs 0.0075 at exact, loses 0.0075 instead of 0.015 on the device: x = -0.5, own exact 50%, so y = 0
    traded = _pooled(tmp_path / "traded", [(0.90, 0.88, 0.89, 0.885), (0.92, 0.91, 0.915, 0.905)])
    # no exact cost, loses 0.005 instead of 0.02: x = 0, y = 0.75
    kept = _pooled(tmp_path / "kept", [(0.90, 0.88, 0.90, 0.895)])
    out = tmp_path / "map"
    assert recovery_map.main([f"traded={traded}", f"kept={kept}", "--out", str(out)]) == 0
    rounds = {r["label"]: r for r in json.loads((out / "recovery_map.json").read_text())["rounds"]}
    t, k = rounds["traded"], rounds["kept"]
    assert (t["loss"], t["x"], t["y"], t["own_exact"]) == pytest.approx((0.015, -0.5, 0.0, 0.5))
    assert t["y"] == pytest.approx(t["x"] + t["own_exact"])  # device AUC = exact AUC - loss
    assert t["seed_x"] == pytest.approx([-0.01 / 0.015, -0.005 / 0.015])
    assert t["seed_y"] == pytest.approx([0.005 / 0.015, -0.005 / 0.015])
    assert (k["x"], k["y"], k["meets_goal"], t["meets_goal"]) == pytest.approx((0.0, 0.75, True, False))
    assert t["row"] == f"{BACKEND}@1024"
    md = (out / "recovery_map.md").read_text()
    assert "| traded | torch_noisy:fake_manila@1024 | 2 | +0.0150 | -0.0075 | +0.0000 | -0.50 | 0% | 50% | not met |" in md
    assert "| kept |" in md and md.rstrip().endswith("| met |")
    assert f"Made by `python -m hybrid.recovery_map traded={traded} kept={kept} --out {out}`" in md  # to rerun it
    assert (out / "recovery_map.png").stat().st_size > 10_000
    assert "not met" in capsys.readouterr().out
    # pools written before sweep_pool recorded the device difference: the same point from the losses and exact AUCs
    old = json.loads((traded / "recovery.json").read_text())
    for row in old["rows"].values():
        for key in ("auc_difference", "mean_auc_difference", "recovered_on_device", "per_seed_on_device"):
            del row[key]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "recovery.json").write_text(json.dumps(old))
    assert recovery_map.main([f"old={tmp_path / 'old'}", "--out", str(tmp_path / "map_old")]) == 0
    again = json.loads((tmp_path / "map_old" / "recovery_map.json").read_text())["rounds"][0]
    assert (again["x"], again["y"]) == pytest.approx((t["x"], t["y"])) and again["seed_y"] == pytest.approx(t["seed_y"])


def test_the_map_says_what_it_cannot_place(tmp_path, capsys):
    good = _pooled(tmp_path / "good", [(0.90, 0.88, 0.90, 0.89)])
    nothing_lost = _pooled(tmp_path / "flat", [(0.90, 0.90, 0.90, 0.89)])
    other_shots = _pooled(tmp_path / "other", [(0.90, 0.88, 0.90, 0.89)], shots=128)
    single = tmp_path / "single"
    single.mkdir()
    (single / "recovery.json").write_text(json.dumps({"kind": "loss_pooled", "rows": {}}))
    cases = [([str(good)], "LABEL=FOLDER"), ([f"a={tmp_path / 'nowhere'}"], "no such file"),
             ([f"a={single}"], "--compare-run"), ([f"a={other_shots}"], "give --row"),
             ([f"a={nothing_lost}"], "nothing to recover"), ([f"a={good}", f"a={other_shots}"], "repeated: a")]
    for entries, message in cases:
        assert recovery_map.main([*entries, "--out", str(tmp_path / "o")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert recovery_map.main([f"a={other_shots}", "--row", "fake_manila@128", "--out", str(tmp_path / "o")]) == 0
