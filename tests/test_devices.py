"""--device and --amp: device resolution, mixed precision on CPU (bfloat16), and the quantum
layer's engine following its input's device. The CUDA tests run where torch sees a GPU."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from hybrid.config import TrainConfig
from hybrid.devices import autocast_dtype, resolve_device
from hybrid.model import HybridNet

CFG = TrainConfig(width_mult=0.35, stem_stride=2, batch_size=8, epochs=1)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="runs where torch sees a CUDA GPU")


def test_device_names_resolve_or_say_why_not():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="not one of auto, cpu, cuda, cuda:N, mps"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is visible"):
            resolve_device("cuda:0")
    else:
        with pytest.raises(ValueError, match="CUDA GPU"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    assert autocast_dtype(torch.device("cpu")) == torch.bfloat16


def test_train_refuses_an_absent_gpu_before_writing(tmp_path):
    from hybrid import train

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU, so --device cuda is valid")
    assert train.main(["--device", "cuda", "--out", str(tmp_path / "run"), "--quiet"]) == 2
    assert not (tmp_path / "run").exists()


def _dtypes_seen(net: HybridNet, x: torch.Tensor) -> dict:
    seen = {}
    # hooks return None: a returned value would replace the module's output
    net.encoder.register_forward_hook(lambda m, i, o: seen.update(encoder=o.dtype))
    net.quantum.register_forward_hook(lambda m, i, o: seen.update(quantum_in=i[0].dtype, quantum_out=o.dtype))
    seen["logits"] = net(x).dtype
    return seen


def test_amp_runs_the_encoder_in_low_precision_and_keeps_the_quantum_layer_exact():
    net = HybridNet(replace(CFG, amp=True).model_config(), 1, 2)
    seen = _dtypes_seen(net.train(), torch.rand(4, 1, 32, 32))
    assert seen["encoder"] == torch.bfloat16  # CPU autocast
    assert seen["quantum_in"] == torch.float32 and seen["quantum_out"] == torch.float32 and seen["logits"] == torch.float32
    plain = _dtypes_seen(HybridNet(CFG.model_config(), 1, 2).train(), torch.rand(4, 1, 32, 32))
    assert plain["encoder"] == torch.float32


def test_amp_training_step_learns_on_cpu():
    from hybrid.algorithms import make_algorithm

    torch.manual_seed(0)
    cfg = replace(CFG, amp=True, algorithm="dann", lr=1e-2)
    algo = make_algorithm("dann", HybridNet(cfg.model_config(), 1, 2), cfg, n_domains=3, total_steps=20)
    assert algo.scaler is None  # bfloat16 needs no loss scaling
    x, y, d = torch.rand(16, 1, 32, 32), torch.randint(0, 2, (16,)), torch.randint(0, 3, (16,))
    x[y == 1] += 0.5
    losses = [algo.update(x, y, d, step)["cls_loss"] for step in range(12)]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert algo.network.quantum.weight.grad is not None and algo.network.quantum.weight.dtype == torch.float64


def test_quantum_engine_compiled_for_a_device_matches_the_default_one():
    from hybrid.quantum import QuantumLayer

    layer = QuantumLayer(seed=0)
    x = torch.rand(5, layer.n_inputs, dtype=torch.float64, requires_grad=True)
    default = layer(x)
    on_device = layer._run_on_device(x)  # the path a CUDA input takes, here with torch's default device set to cpu
    assert torch.allclose(default, on_device, atol=1e-12)
    on_device.sum().backward()
    assert x.grad is not None and layer.weight.grad is not None


def test_resume_may_change_the_device_but_not_amp(tmp_path):
    from hybrid.train import check_resume

    CFG.save(tmp_path / "config.json")
    (tmp_path / "last.pt").write_bytes(b"")
    check_resume(replace(CFG, device="cpu"), tmp_path)
    with pytest.raises(ValueError, match="amp"):
        check_resume(replace(CFG, amp=True), tmp_path)


@CUDA
def test_cuda_training_step_with_amp_and_the_quantum_layer_on_the_gpu():
    from hybrid.algorithms import make_algorithm

    cfg = replace(CFG, amp=True, algorithm="erm")
    net = HybridNet(cfg.model_config(), 1, 2).to("cuda")
    algo = make_algorithm("erm", net, cfg, n_domains=1, total_steps=4)
    assert algo.scaler is not None
    x, y = torch.rand(8, 1, 32, 32, device="cuda"), torch.randint(0, 2, (8,), device="cuda")
    assert torch.isfinite(torch.tensor(algo.update(x, y, torch.zeros_like(y), 0)["loss"]))
    seen = _dtypes_seen(net, x)
    assert seen["encoder"] == torch.float16 and seen["quantum_out"] == torch.float32
    cpu = HybridNet(cfg.model_config(), 1, 2)
    cpu.load_state_dict(net.state_dict())
    angles = torch.rand(4, net.quantum.n_inputs, dtype=torch.float64)
    assert torch.allclose(net.quantum(angles.cuda()).cpu(), cpu.quantum(angles), atol=1e-10)
