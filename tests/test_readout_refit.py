"""The noise-aware readout refit: its objective, its device draws, its arithmetic, and the tool end to end."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hybrid.quantum.noise import ZStrings
from hybrid.studies import head_geometry, readout_refit as rr
from hybrid.studies import refit_runs

LABELS = ("ZI", "IZ", "ZZ")


@pytest.fixture()
def toy():
    """Two-qubit states whose Z, Z and ZZ means carry the class, with a readout to start from."""
    torch.manual_seed(0)
    probabilities = torch.distributions.Dirichlet(torch.full((4,), 0.7)).sample((400,)).double()
    values = probabilities @ ZStrings(LABELS).matrix.double()
    targets = (values[:, 0] + 0.3 * torch.randn(400).double() > 0).long()
    start = (torch.tensor([[-2.0, 1.0, -1.5], [2.0, -1.0, 1.5]], dtype=torch.float64), torch.zeros(2).double())
    return values, probabilities, targets, start


def test_penalty_is_half_the_trace_of_the_hessian_times_the_shot_covariance(toy):
    values, probabilities, _, (w, b) = toy
    logits = values @ w.T + b
    signs = ZStrings(LABELS).matrix.double()
    expected = []
    for p, z in zip(probabilities, logits):
        cov_q = signs.T @ torch.diag(p) @ signs - torch.outer(p @ signs, p @ signs)
        s = z.softmax(0)
        hessian = torch.diag(s) - torch.outer(s, s)
        expected.append(0.5 * torch.trace(hessian @ w @ cov_q @ w.T) / 256)
    assert rr.readout_penalty(probabilities, logits, w, LABELS, 256).item() == pytest.approx(
        torch.stack(expected).mean().item(), rel=1e-9)


def test_exact_refit_reaches_the_cross_entropy_minimum(toy):
    values, probabilities, targets, start = toy
    w, b = rr.refit_readout(values, probabilities, targets, start, LABELS, weight=0.0, shots=1024)
    w.requires_grad_(True), b.requires_grad_(True)
    loss = F.cross_entropy(values @ w.T + b, targets)
    loss.backward()
    assert loss.item() < F.cross_entropy(values @ start[0].T + start[1], targets).item()
    assert w.grad.abs().max().item() < 1e-4 and b.grad.abs().max().item() < 1e-4


def test_a_heavier_penalty_trades_cross_entropy_for_less_shot_loss(toy):
    values, probabilities, targets, start = toy
    penalties, losses = [], []
    for weight in (0.0, 1.0, 8.0, 64.0):
        w, b = rr.refit_readout(values, probabilities, targets, start, LABELS, weight=weight, shots=64)
        logits = values @ w.T + b
        penalties.append(rr.readout_penalty(probabilities, logits, w, LABELS, 64).item())
        losses.append(F.cross_entropy(logits, targets).item())
    assert penalties == sorted(penalties, reverse=True) and penalties[-1] < 0.5 * penalties[0]
    assert losses == sorted(losses)
    assert start[0].tolist() == [[-2.0, 1.0, -1.5], [2.0, -1.0, 1.5]]  # the start is not modified


def test_positive_score_ranks_as_the_positive_probability():
    torch.manual_seed(1)
    values = torch.randn(50, 3).double()
    readout = (torch.randn(3, 3).double(), torch.randn(3).double())
    for positive_class in range(3):
        score = rr.positive_score(values, readout, positive_class)
        probability = (values @ readout[0].T + readout[1]).softmax(1)[:, positive_class].numpy()
        assert (np.argsort(score) == np.argsort(probability)).all()


def test_device_draws_are_joint_shot_estimates_and_reproducible(toy):
    _, probabilities, _, _ = toy
    p = probabilities[:1].repeat(4000, 1)
    draws = rr.draw_device_values(p, LABELS, shots=32, draws=2, seed=5)
    mean = (probabilities[:1] @ ZStrings(LABELS).matrix.double())[0]
    assert len(draws) == 2 and not torch.equal(draws[0], draws[1])
    assert torch.allclose(draws[0].mean(0), mean, atol=0.02)
    assert draws[0][:, 0].var().item() == pytest.approx((1 - mean[0] ** 2).item() / 32, rel=0.1)
    again = rr.draw_device_values(p, LABELS, shots=32, draws=2, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(draws, again))


def _run(seed: int, trained: tuple[float, list[float]], refit: tuple[float, list[float]]) -> dict:
    return {"run": f"r{seed}", "seed": seed, "centers": {
        "a": {rr.TRAINED: {"exact": trained[0], "device": trained[1]}, "weight 1": {"exact": refit[0],
                                                                                   "device": refit[1]}}}}


def test_summary_recovers_against_the_trained_readouts_device_loss():
    runs = [_run(0, (0.95, [0.93, 0.93]), (0.94, [0.935, 0.935])), _run(1, (0.90, [0.89, 0.89]), (0.90, [0.90, 0.90]))]
    summary = rr.summarize(runs)
    assert summary[rr.TRAINED]["device_loss"] == pytest.approx(0.015)
    assert summary[rr.TRAINED]["recovered_on_device"] == 0.0
    assert summary["weight 1"]["gained_per_run"] == pytest.approx([0.005, 0.01])
    assert summary["weight 1"]["recovered_on_device"] == pytest.approx(0.0075 / 0.015)
    lossless = [_run(0, (0.95, [0.95, 0.96]), (0.94, [0.94, 0.94]))]  # the trained head loses nothing on the device
    assert rr.summarize(lossless)["weight 1"]["recovered_on_device"] is None
    line = next(x for x in rr.pooled_lines(lossless, 1024, 2, lambda n: n != rr.TRAINED) if x.startswith("weight 1"))
    assert "recovered –" in line and "nan" not in line


def test_pooled_lines_print_every_head_and_name_the_best_candidate_only():
    runs = [_run(0, (0.95, [0.93, 0.93]), (0.94, [0.935, 0.935])), _run(1, (0.90, [0.89, 0.89]), (0.90, [0.90, 0.90]))]
    lines = rr.pooled_lines(runs, 1024, 2, lambda name: name.startswith("weight"))
    assert "1024 shots, 2 draws" in lines[0] and "over 2 runs" in lines[0]
    assert lines[1].startswith(f"{rr.TRAINED}    exact 0.9250 device 0.9100 loss +0.0150 recovered +0%")
    assert lines[2].startswith("weight 1   exact 0.9200 device 0.9175") and "recovered +50%" in lines[2]
    assert lines[-1] == "highest device AUC among the candidates: weight 1"
    with pytest.raises(ValueError):  # no candidate at all is an error, not a silent pick of the trained head
        rr.pooled_lines(runs, 1024, 2, lambda name: False)


@pytest.fixture(scope="module")
def dressed_zz_run(tmp_path_factory, data_root):
    from hybrid import train

    out = tmp_path_factory.mktemp("readout") / "dressed"
    assert train.main(["--epochs", "1", "--max-train-samples", "300", "--width-mult", "0.35", "--n-bootstrap", "0",
                       "--batch-size", "64", "--quiet", "--data-root", str(data_root), "--quantum-head", "dressed",
                       "--q-observables", "z+zz", "--eval-max-samples", "50", "--no-figures", "--out", str(out)]) == 0
    return out


def test_the_tool_refits_scores_and_writes_its_table_and_plot(dressed_zz_run, data_root, tmp_path):
    assert rr.main(["--runs", str(dressed_zz_run), "--weights", "2", "--draws", "2", "--samples", "30",
                    "--train-samples", "200", "--data-root", str(data_root), "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "readout_refit.json").read_text())
    assert list(result["summary"]) == [rr.TRAINED, "weight 0", "weight 2"]
    run = result["runs"][0]
    assert run["heads"]["weight 2"]["weight"] != run["heads"][rr.TRAINED]["weight"]
    assert run["heads"]["weight 2"]["circuit"] == run["heads"][rr.TRAINED]["circuit"]  # the readout alone
    center = next(iter(run["centers"].values()))
    assert all(len(center[name]["device"]) == 2 for name in result["summary"])
    assert not any(name == "clean" or name.startswith(("real:", "tgt_")) for name in run["centers"])
    markdown = (tmp_path / "readout_refit.md").read_text()
    assert markdown.count("\n| weight ") == 2 and "python -m hybrid.readout_refit" in markdown
    assert (tmp_path / "readout_refit.png").stat().st_size > 0


def test_a_saved_refit_is_the_same_network_with_the_new_readout(dressed_zz_run, data_root, tmp_path):
    from hybrid.rundir import load_run

    saved = tmp_path / "saved"
    assert rr.main(["--runs", str(dressed_zz_run), "--weights", "4", "--draws", "1", "--samples", "20",
                    "--train-samples", "100", "--data-root", str(data_root), "--out", str(tmp_path / "out"),
                    "--save-to", str(saved)]) == 0
    result = json.loads((tmp_path / "out" / "readout_refit.json").read_text())
    refit_dir = saved / "weight4" / dressed_zz_run.name
    original, refit = load_run(dressed_zz_run).model.state_dict(), load_run(refit_dir).model.state_dict()
    expected = torch.tensor(result["runs"][0]["heads"]["weight 4"]["weight"], dtype=refit["classifier.weight"].dtype)
    assert torch.allclose(refit["classifier.weight"], expected)
    assert not torch.equal(refit["classifier.weight"], original["classifier.weight"])
    assert all(torch.equal(v, refit[k]) for k, v in original.items() if not k.startswith("classifier."))
    assert json.loads((refit_dir / "readout_refit.json").read_text())["weight"] == 4
    assert rr.main(["--runs", str(dressed_zz_run), "--weights", "4", "--draws", "1", "--samples", "20",
                    "--train-samples", "100", "--data-root", str(data_root), "--out", str(tmp_path / "again"),
                    "--save-to", str(saved)]) == 2  # an existing network is not overwritten


def test_load_design_gives_the_dressed_network_its_programs_and_its_data(dressed_zz_run, data_root):
    cfg, model, ckpt, programs, bundle = rr.load_design(dressed_zz_run, "torch_noisy:fake_manila", str(data_root))
    assert model.head_kind == "dressed" and len(programs.labels) == 7  # z+zz on 4 qubits
    assert len(bundle.train) > 0 and bundle.positive_class == ckpt["positive_class"] and cfg.quantum_head == "dressed"


def test_validation_inputs_are_the_design_centers_and_read_what_is_asked(dressed_zz_run, data_root):
    cfg, model, ckpt, _, bundle = rr.load_design(dressed_zz_run, "torch_noisy:fake_manila", str(data_root))
    slots = rr.validation_slot_inputs(cfg, bundle, model, ckpt, 12)
    embedded = rr.validation_slot_inputs(cfg, bundle, model, ckpt, 12, read=rr.embeddings)
    assert slots and list(slots) == list(embedded)
    assert not any(name == "clean" or name.startswith(("real:", "tgt_")) for name in slots)
    for name, (z, positive) in slots.items():
        f, same_positive = embedded[name]
        assert z.shape == (12, 4) and f.shape == (12, cfg.embed_dim) and np.array_equal(positive, same_positive)
        # the same seeded images under the same adabn statistics: the projection of their embeddings is z
        assert torch.allclose(model.slot_inputs(f.float()).double(), z, atol=1e-5)


def test_batched_reads_match_one_pass_over_all_images(dressed_zz_run):
    _, model, _, _ = rr.load_dressed(dressed_zz_run, "torch_noisy:fake_manila")
    torch.manual_seed(5)
    x = torch.rand(11, 1, 28, 28)
    model.eval()
    with torch.no_grad():
        f = model.features(x)
        z = model.slot_inputs(f)
    embedded = rr.embeddings(model, x, batch_size=4)  # three batches: 4, 4, 3
    assert embedded.dtype == torch.float64 and embedded.shape == f.shape and not embedded.requires_grad
    assert torch.allclose(embedded, f.double(), atol=1e-5)
    assert torch.allclose(rr.slot_inputs(model, x, batch_size=4), z.double(), atol=1e-5)


def test_the_tool_refuses_networks_without_a_dressed_circuit_and_unknown_devices(tiny_run, dressed_zz_run, tmp_path):
    with pytest.raises(ValueError, match="dressed head"):
        rr.load_dressed(tiny_run, "torch_noisy:fake_manila")
    with pytest.raises(ValueError, match="torch_noisy:NOISE_MODEL"):
        rr.load_dressed(dressed_zz_run, "aer:1024")
    for weights in ("-1", "one", ""):
        assert rr.main(["--runs", str(dressed_zz_run), "--weights", weights, "--out", str(tmp_path)]) == 2


def test_every_run_of_repeated_runs_options_is_checked_before_the_first_refit(tiny_run, dressed_zz_run, tmp_path,
                                                                              capsys):
    out = tmp_path / "out"
    assert rr.main(["--runs", str(dressed_zz_run), "--runs", str(tiny_run), "--out", str(out)]) == 2
    assert f"{tiny_run}: refitting the readout needs a dressed head" in capsys.readouterr().err
    assert rr.main(["--runs", f"{dressed_zz_run},{dressed_zz_run}", "--out", str(out)]) == 2
    assert "named twice" in capsys.readouterr().err
    assert not out.exists()


def test_the_head_refit_saves_networks_with_their_own_threshold(dressed_zz_run, data_root, tmp_path):
    from hybrid.checkpoints import load_checkpoint

    saved = tmp_path / "saved"
    args = ["--runs", str(dressed_zz_run), "--refit", "head", "--weights", "4", "--draws", "1", "--samples", "20",
            "--train-samples", "60", "--data-root", str(data_root), "--save-to", str(saved)]
    assert rr.main(args + ["--out", str(tmp_path / "out")]) == 0
    result = json.loads((tmp_path / "out" / "readout_refit.json").read_text())
    assert result["refit"] == "head" and list(result["summary"]) == [rr.TRAINED, "weight 4"]
    refit_dir = saved / "weight4" / dressed_zz_run.name
    provenance = json.loads((refit_dir / "readout_refit.json").read_text())
    assert provenance["refit"] == "head" and provenance["weight"] == 4.0
    threshold = load_checkpoint(refit_dir / "best.pt", "checkpoint")["threshold"]
    assert threshold == pytest.approx(refit_runs.refit_threshold(refit_dir, str(data_root)))
    assert 0.0 < threshold < 1.0


def test_saving_refuses_runs_that_would_collide_before_refitting(dressed_zz_run, data_root, tmp_path):
    import shutil

    twin = tmp_path / "other" / dressed_zz_run.name
    shutil.copytree(dressed_zz_run, twin)
    assert rr.main(["--runs", f"{dressed_zz_run},{twin}", "--weights", "1", "--data-root", str(data_root),
                    "--save-to", str(tmp_path / "saved"), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "saved").exists() and not (tmp_path / "out").exists()


def _inputs(model, n: int = 48) -> torch.Tensor:
    torch.manual_seed(3)
    return rr.slot_inputs(model, torch.rand(n, 1, 28, 28))


def test_head_refit_at_weight_zero_is_the_trained_head(dressed_zz_run):
    _, model, _, programs = rr.load_dressed(dressed_zz_run, "torch_noisy:fake_manila")
    start = rr.trained_head(model)
    z = _inputs(model)
    anchor = rr.exact_logits(start, z, programs)
    assert all(torch.equal(a, b) for a, b in zip(rr.refit_head(z, anchor, programs, start, 0.0, 1024), start))


def test_head_refit_lowers_the_shot_penalty_and_keeps_the_ranking(dressed_zz_run):
    _, model, _, programs = rr.load_dressed(dressed_zz_run, "torch_noisy:fake_manila")
    start, z = rr.trained_head(model), _inputs(model)
    with torch.no_grad():
        anchor = rr.exact_logits(start, z, programs)  # as the tool anchors
        torch.testing.assert_close(anchor, rr.head_outputs(start, z, programs)["exact"] @ start.weight.T + start.bias)

    def objective(head, weight):
        out = rr.head_outputs(head, z, programs)
        logits = out["device"] @ head.weight.T + head.bias
        penalty = rr.readout_penalty(out["probabilities"], logits, head.weight, programs.labels, 64).item()
        kl = F.kl_div(logits.log_softmax(1), anchor.softmax(1), reduction="batchmean").item()
        return penalty, kl + weight * penalty, logits

    refit = rr.refit_head(z, anchor, programs, start, 4.0, 64, max_iter=30)
    (before, start_objective, _), (after, refit_objective, logits) = objective(start, 4.0), objective(refit, 4.0)
    assert after < 0.8 * before and refit_objective < start_objective
    assert not torch.equal(refit.scale, start.scale) and not torch.equal(refit.circuit, start.circuit)
    ranks = [torch.argsort(torch.argsort(v[:, 1] - v[:, 0])).double() for v in (anchor, logits)]
    assert torch.corrcoef(torch.stack(ranks))[0, 1].item() > 0.7  # the anchor keeps most of the images' order


def test_active_subspace_spans_only_the_inputs_the_decision_reads(dressed_zz_run):
    _, model, _, programs = rr.load_dressed(dressed_zz_run, "torch_noisy:fake_manila")
    trained, z = rr.trained_head(model), _inputs(model)
    blind = trained._replace(scale=torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64))  # ignores inputs 2 and 3
    mean, w, eigenvalues = head_geometry.active_subspace(blind, z, programs, positive_class=1, rank=2)
    torch.testing.assert_close(mean, z.mean(0))
    torch.testing.assert_close(w.T @ w, torch.eye(2, dtype=torch.float64))
    assert w[2:].abs().max().item() < 1e-9 and eigenvalues[2:].abs().max().item() < 1e-12
    assert eigenvalues[0] >= eigenvalues[1] > 0 and not z.requires_grad
    # C's trace is the mean squared gradient of the logit difference: check one image's gradient by finite differences
    _, _, full = head_geometry.active_subspace(trained, z[:1], programs, positive_class=1, rank=2)

    def g(x):
        logits = rr.exact_logits(trained, x, programs)
        assert torch.equal(head_geometry.logit_difference(trained, x, programs, 1), logits[:, 1] - logits[:, 0])
        return (logits[:, 1] - logits[:, 0]).item()

    with torch.no_grad():
        steps = torch.eye(4, dtype=torch.float64) * 1e-6
        grad = torch.tensor([(g(z[:1] + h) - g(z[:1] - h)) / 2e-6 for h in steps])
    assert full.sum().item() == pytest.approx((grad ** 2).sum().item(), rel=1e-5)


def _saved_network_matches(run_dir, tmp_path):
    from hybrid.model import map_angles
    from hybrid.rundir import load_run

    _, model, _, programs = rr.load_dressed(run_dir, "torch_noisy:fake_manila")
    torch.manual_seed(4)
    start = rr.trained_head(model)
    head = start._replace(scale=1 + 0.3 * torch.rand_like(start.scale), offset=0.2 * torch.randn_like(start.offset),
                          circuit=start.circuit + 0.1, weight=start.weight * 2, bias=start.bias - 0.5)
    saved = refit_runs.save_refit_run(run_dir, head, tmp_path / "saved", {"refit": "head"})
    new = load_run(saved).model
    x = torch.rand(16, 1, 28, 28)
    with torch.no_grad():
        z, f = rr.slot_inputs(model, x), new.features(x)
        assert torch.allclose(new.quantum_angles(f).double(), map_angles(head.scale * z + head.offset,
                                                                         programs.angle_map), atol=1e-5)
        expected = rr.head_outputs(head, z, programs)["exact"] @ head.weight.T + head.bias
        assert torch.allclose(new.head(f).double(), expected, atol=1e-4)
    return new


def test_a_saved_head_refit_folds_the_angle_calibration_into_the_projection(dressed_zz_run, tmp_path):
    assert _saved_network_matches(dressed_zz_run, tmp_path).angle_norm is None


def test_a_saved_head_refit_folds_the_angle_calibration_into_the_angle_norm(data_root, tmp_path):
    from hybrid import train

    run = tmp_path / "norm"
    assert train.main(["--epochs", "1", "--max-train-samples", "100", "--width-mult", "0.35", "--n-bootstrap", "0",
                       "--batch-size", "50", "--quiet", "--data-root", str(data_root), "--quantum-head", "dressed",
                       "--q-angle-norm", "--eval-max-samples", "20", "--no-figures", "--out", str(run)]) == 0
    assert _saved_network_matches(run, tmp_path).angle_norm is not None
