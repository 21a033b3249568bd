"""Model pieces: encoder variants, quantum head, input filter, pretrained file, legacy checkpoints."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from hybrid.config import ModelConfig
from hybrid.model import HybridNet, build_encoder, pixel_statistics

SMALL = ModelConfig(width_mult=0.35, stem_stride=2, embed_dim=16)


def test_another_models_weights_or_a_weights_file_without_pretrained_are_one_sentence(tmp_path, capsys, data_root):
    from torchvision.models import mobilenet_v2, resnet18

    from hybrid import train
    from hybrid.config import TrainConfig

    path = tmp_path / "resnet18.pth"
    torch.save(resnet18().state_dict(), path)
    with pytest.raises(ValueError, match="not a torchvision mobilenet_v2") as refused:
        build_encoder(3, pretrained=True, weights_path=str(path))
    assert len(str(refused.value)) < 400  # torch's own message lists every key (about 12 KB)
    narrow = tmp_path / "narrow.pth"
    torch.save(mobilenet_v2(width_mult=0.5).state_dict(), narrow)
    with pytest.raises(ValueError, match=r"of another shape"):
        build_encoder(3, pretrained=True, weights_path=str(narrow))
    with pytest.raises(ValueError, match="read only with --pretrained"):
        TrainConfig(weights_path=str(path))  # it would otherwise train from scratch without a word
    assert train.main(["--weights-path", str(path), "--data-root", str(data_root), "--out", str(tmp_path / "run"),
                       "--quiet"]) == 2
    assert "add --pretrained" in capsys.readouterr().err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("quantum", [True, False])
def test_hybrid_net_shapes_and_gradients_reach_encoder(channels, quantum):
    torch.manual_seed(0)
    cfg = replace(SMALL, quantum=quantum)
    model = HybridNet(cfg, in_channels=channels, n_classes=3)
    x = torch.rand(6, channels, 28, 28)
    logits = model(x)
    assert logits.shape == (6, 3) and model.features(x).shape == (6, 16)
    assert (model.quantum is not None) == quantum
    logits.sum().backward()
    stem = model.encoder[0][0][0]
    assert stem.weight.grad is not None and stem.weight.grad.abs().sum() > 0
    if quantum:
        assert model.quantum.weight.grad.abs().sum() > 0
        assert model.project.weight.grad.abs().sum() > 0


def test_no_quantum_model_has_no_quantum_parameters():
    model = HybridNet(replace(SMALL, quantum=False), 1, 2)
    assert not any("quantum" in name for name, _ in model.named_parameters())
    assert not any("discriminator" in name for name, _ in model.named_parameters())  # the algorithm's, not the net's


def test_legacy_checkpoint_keys_of_the_discriminator_are_dropped():
    torch.manual_seed(0)
    model = HybridNet(replace(SMALL, quantum=False), 1, 2).eval()
    old = dict(model.state_dict()) | {"discriminator.0.weight": torch.zeros(128, 16)}
    fresh = HybridNet(replace(SMALL, quantum=False), 1, 2).eval()
    fresh.load_network_state(old)
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(fresh(x), model(x))
    with pytest.raises(RuntimeError, match="Unexpected"):
        fresh.load_network_state(dict(model.state_dict()) | {"encoder.extra": torch.zeros(1)})


def test_input_smoothing_is_a_fixed_blur_in_front_of_the_same_network():
    from hybrid.shifts import gaussian_blur

    torch.manual_seed(0)
    plain = HybridNet(replace(SMALL, quantum=False, input_smoothing=0.0), in_channels=1, n_classes=2).eval()
    smooth = HybridNet(replace(SMALL, quantum=False, input_smoothing=0.8), in_channels=1, n_classes=2).eval()
    smooth.load_state_dict(plain.state_dict())  # no new parameters: the filter is fixed
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(smooth.features(x), plain.features(gaussian_blur(x, 0.8)))
    torch.testing.assert_close(smooth(x), plain(gaussian_blur(x, 0.8)))
    seen = []
    smooth.encoder.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    smooth(x)
    normalized = (gaussian_blur(x, 0.8) - smooth.pixel_mean) / smooth.pixel_std
    torch.testing.assert_close(seen[0], normalized)  # the encoder sees the low-passed image
    assert (seen[0] - (x - smooth.pixel_mean) / smooth.pixel_std).abs().max() > 0.1


def test_stem_stride_and_channels():
    enc, width = build_encoder(1, width_mult=0.35, stem_stride=1)
    assert enc[0][0][0].stride == (1, 1) and enc[0][0][0].in_channels == 1
    assert enc(torch.rand(2, 1, 28, 28)).shape == (2, width)
    with pytest.raises(ValueError, match="channels"):
        build_encoder(4)


def test_pretrained_weights_from_local_file(tmp_path):
    from torchvision.models import mobilenet_v2

    torch.manual_seed(1)
    reference = mobilenet_v2()
    path = tmp_path / "mobilenet_v2_imagenet.pth"
    torch.save(reference.state_dict(), path)
    enc, _ = build_encoder(3, stem_stride=2, pretrained=True, weights_path=str(path))
    torch.testing.assert_close(enc[0][5].conv[1][0].weight, reference.features[5].conv[1][0].weight)
    gray, _ = build_encoder(1, stem_stride=2, pretrained=True, weights_path=str(path))
    # grayscale stem = RGB filters summed, so a gray image gives the RGB model's response
    torch.testing.assert_close(gray[0][0][0].weight, reference.features[0][0].weight.sum(1, keepdim=True))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_encoder(3, pretrained=True, weights_path=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="width_mult"):
        build_encoder(3, width_mult=0.5, pretrained=True, weights_path=str(path))


def test_pretrained_rgb_is_normalised_with_imagenets_per_channel_statistics():
    from hybrid.model import IMAGENET_MEAN, IMAGENET_STD

    rgb = HybridNet(replace(SMALL, quantum=False), in_channels=3, n_classes=2)
    assert rgb.pixel_mean.shape == (3, 1, 1) and torch.all(rgb.pixel_mean == 0.5)
    pretrained = pixel_statistics(3, pretrained=True)
    torch.testing.assert_close(pretrained[0].flatten(), torch.tensor(IMAGENET_MEAN))
    torch.testing.assert_close(pretrained[1].flatten(), torch.tensor(IMAGENET_STD))
    grey_mean, grey_std = pixel_statistics(1, pretrained=True)  # the RGB filters summed: ImageNet's averages
    assert grey_mean.shape == (1, 1, 1)
    assert grey_mean.item() == pytest.approx(sum(IMAGENET_MEAN) / 3, abs=1e-3)
    assert grey_std.item() == pytest.approx(sum(IMAGENET_STD) / 3, abs=1e-3)
    # what the network sees: each channel of a mid-grey image moved by its own mean and std
    seen = []
    net = HybridNet(replace(SMALL, quantum=False), in_channels=3, n_classes=2)
    net.pixel_mean.copy_(pretrained[0]), net.pixel_std.copy_(pretrained[1])
    net.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    net.eval()(torch.full((1, 3, 8, 8), 0.5))
    expected = (0.5 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(seen[0][0, :, 0, 0], expected)


def test_a_pretrained_colour_run_keeps_imagenets_statistics_when_it_is_loaded_again(tmp_path, data_root):
    """Evaluation rebuilds the network without reading the weights file again: the saved per-channel
    statistics must come back from the checkpoint, not the untrained defaults."""
    from torchvision.models import mobilenet_v2

    from hybrid import train
    from hybrid.model import IMAGENET_MEAN
    from hybrid.rundir import load_run

    weights = tmp_path / "mobilenet_v2.pth"
    torch.save(mobilenet_v2().state_dict(), weights)
    out = tmp_path / "run"
    assert train.main(["--dataset", "retinamnist", "--pretrained", "--weights-path", str(weights), "--epochs", "1",
                       "--max-train-samples", "64", "--stem-stride", "2", "--input-size", "16", "--embed-dim", "16",
                       "--batch-size", "32", "--n-bootstrap", "0", "--eval-max-samples", "32", "--no-figures",
                       "--threads", "1", "--quiet", "--no-quantum", "--data-root", str(data_root),
                       "--out", str(out)]) == 0
    import json

    recorded = json.loads((out / "report.json").read_text())["run"]["input_statistics"]
    assert recorded["mean"] == pytest.approx(IMAGENET_MEAN) and len(recorded["std"]) == 3  # a study can tell
    loaded = load_run(out)
    try:
        torch.testing.assert_close(loaded.model.pixel_mean.flatten(), torch.tensor(IMAGENET_MEAN))
    finally:
        loaded.backend.close()


@pytest.mark.parametrize("channels", [1, 3])
def test_networks_saved_with_one_scalar_mean_and_std_predict_as_they_were_trained(channels):
    """Checkpoints written before the per-channel statistics hold scalars (0.449/0.226 for pretrained RGB too):
    they load into today's network and give the predictions of that scalar normalisation."""
    torch.manual_seed(0)
    model = HybridNet(replace(SMALL, quantum=False), channels, 2).eval()
    old = dict(model.state_dict()) | {"pixel_mean": torch.tensor(0.449), "pixel_std": torch.tensor(0.226)}
    fresh = HybridNet(replace(SMALL, quantum=False), channels, 2).eval()
    fresh.load_network_state(old)
    assert fresh.pixel_mean.shape == (channels, 1, 1) and torch.all(fresh.pixel_mean == torch.tensor(0.449))
    x = torch.rand(2, channels, 28, 28)
    model.pixel_mean.fill_(0.449), model.pixel_std.fill_(0.226)
    torch.testing.assert_close(fresh(x), model(x))
    with pytest.raises(RuntimeError, match="size mismatch"):  # a per-channel tensor of another width is refused
        fresh.load_network_state(dict(old) | {"pixel_mean": torch.zeros(channels + 1, 1, 1)})


@pytest.mark.parametrize("channels", [1, 3])
def test_channels_last_computes_what_the_nchw_network_computes(channels):
    """The memory format changes which kernels run, not the maths: outputs and gradients agree to float
    rounding, and the weights move between the two layouts in either direction."""
    torch.manual_seed(0)
    nhwc = HybridNet(replace(SMALL, channels_last=True), in_channels=channels, n_classes=2)
    nchw = HybridNet(replace(SMALL, channels_last=False), in_channels=channels, n_classes=2)
    nchw.load_state_dict(nhwc.state_dict())
    x = torch.rand(8, channels, 32, 32)
    layouts = []
    for model in (nhwc, nchw):  # what the first block hands on: NHWC activations, or NCHW ones
        hook = model.encoder[0][1].register_forward_hook(
            lambda module, args, out: layouts.append(out.is_contiguous(memory_format=torch.channels_last)
                                                     and not out.is_contiguous()))
        model(x)
        hook.remove()
    assert layouts == [True, False]
    for model in (nhwc, nchw):
        model.eval()
    torch.testing.assert_close(nhwc(x), nchw(x), rtol=1e-4, atol=1e-5)
    # training mode: BatchNorm divides by the spread of 8 images (1x1 at the last blocks), which
    # magnifies last-bit differences (measured: 1e-4 relative on the logits, up to 0.9% on the
    # gradient of this untrained network); another initialisation differs by more than 100%
    outputs, grads = [], []
    for model in (nhwc, nchw):
        model.train()
        torch.manual_seed(1)  # the same dropout masks for both
        outputs.append(model(x))
        outputs[-1].pow(2).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert (outputs[0] - outputs[1]).norm() / outputs[1].norm() < 1e-3
    assert (grads[0] - grads[1]).norm() / grads[1].norm() < 0.03
    back = HybridNet(replace(SMALL, channels_last=True), in_channels=channels, n_classes=2)
    back.load_state_dict(nchw.state_dict())
    back.eval(), nchw.eval()
    torch.testing.assert_close(back(x), nchw(x), rtol=1e-4, atol=1e-5)


def test_runs_saved_before_channels_last_keep_the_layout_they_were_trained_in():
    from hybrid.config import TrainConfig

    assert TrainConfig().channels_last is True
    old = TrainConfig.from_dict({k: v for k, v in TrainConfig().to_dict().items() if k != "channels_last"})
    assert old.channels_last is False and old.model_config().channels_last is False
