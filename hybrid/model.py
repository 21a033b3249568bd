"""The hybrid network: MobileNetV2 encoder, quantum enhancement, classifier.

    image -> MobileNetV2 -> pooled features -> embedding f (embed_dim)
    f -> Linear -> angles in [0, pi] -> QuantumLayer -> q (one expectation value per observable)
    [f, q] -> classifier -> class logits          (the concat head; dressed and residual: hybrid.heads)

What training adds around it (a domain discriminator for DANN, ...) belongs to the training
algorithm (`hybrid.algorithms`), not to the network that is saved and evaluated.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from hybrid.checkpoints import load_checkpoint
from hybrid.colour import shades_of_gray
from hybrid.config import ModelConfig, parse_attenuation
from hybrid.devices import autocast_dtype
from hybrid.heads import QUANTUM_HEADS, QUANTUM_LAYERS, ClassicalTwin, count_parameters, head_input_width
from hybrid.quantum import ExpectationNoise, NoiseModel, QuantumConfig, QuantumLayer, build_circuit, pauli_observables
from hybrid.shifts import gaussian_blur

# Checkpoints written before the training algorithms owned their extra modules kept the DANN
# discriminator inside the network's state_dict; the network never used it for predictions.
LEGACY_TRAINING_KEYS = ("discriminator.",)
# torchvision's ImageNet statistics per RGB channel; a grey image meets the RGB filters summed, so their averages
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
GREY_IMAGENET_MEAN, GREY_IMAGENET_STD = 0.449, 0.226


def _load_pretrained(weights_path: str | None) -> dict:
    if weights_path:
        state = load_checkpoint(Path(weights_path), "--weights-path: pretrained weights file")
        return state.get("state_dict", state) if isinstance(state, dict) else state
    from torchvision.models import MobileNet_V2_Weights

    try:
        return MobileNet_V2_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
    except Exception as exc:  # no network: say how to use a local file
        raise RuntimeError(
            "could not download ImageNet weights for MobileNetV2 "
            f"({type(exc).__name__}); save torchvision's mobilenet_v2 state_dict to a file and "
            "pass it with --weights-path"
        ) from exc


def _load_into(net: nn.Module, state, weights_path: str | None) -> None:
    """Load ImageNet weights, or say in one sentence that the file holds another model's (torch lists every key)."""
    expected = net.state_dict()
    if not isinstance(state, dict):
        raise ValueError(f"--weights-path {weights_path}: holds a {type(state).__name__}, not a state_dict; save "
                         "torchvision's mobilenet_v2 with torch.save(model.state_dict(), path)")
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and getattr(state[k], "shape", None) != expected[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"--weights-path {weights_path}: not a torchvision mobilenet_v2 (width 1.0) state_dict: "
                         f"{len(missing)} of its {len(expected)} tensors missing (first: {missing[:1]}), "
                         f"{len(unexpected)} unexpected (first: {unexpected[:1]}), {len(wrong)} of another shape "
                         f"(first: {wrong[:1]})")
    net.load_state_dict(state)


def build_encoder(in_channels: int, width_mult: float = 1.0, stem_stride: int = 2,
                  pretrained: bool = False, weights_path: str | None = None) -> tuple[nn.Module, int]:
    """torchvision MobileNetV2 features + global pooling; returns (module, feature width)."""
    from torchvision.models import mobilenet_v2

    if in_channels not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {in_channels}")
    if pretrained and width_mult != 1.0:
        raise ValueError("ImageNet weights exist only for width_mult=1.0")
    net = mobilenet_v2(weights=None, width_mult=width_mult)
    if pretrained:
        _load_into(net, _load_pretrained(weights_path), weights_path)
    stem = net.features[0][0]
    if in_channels != 3 or stem_stride != stem.stride[0]:
        new = nn.Conv2d(in_channels, stem.out_channels, 3, stride=stem_stride, padding=1, bias=False)
        with torch.no_grad():
            # grayscale: sum the RGB filters, so pretrained filters keep their response
            new.weight.copy_(stem.weight if in_channels == 3 else stem.weight.sum(dim=1, keepdim=True))
        net.features[0][0] = new
    return nn.Sequential(net.features, nn.AdaptiveAvgPool2d(1), nn.Flatten()), net.last_channel


def pixel_statistics(in_channels: int, pretrained: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel input mean and std, shaped (channels, 1, 1): ImageNet's for pretrained filters, else [0, 1]
    images centred (0.5, 0.25 on every channel)."""
    if not pretrained:
        mean, std = (0.5,) * in_channels, (0.25,) * in_channels
    elif in_channels == 3:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        mean, std = (GREY_IMAGENET_MEAN,), (GREY_IMAGENET_STD,)
    return torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)


def quantum_config(config: ModelConfig) -> QuantumConfig:
    observables = () if config.q_observables == "z" else pauli_observables(config.n_qubits, config.q_observables)
    return QuantumConfig(n_qubits=config.n_qubits, feature_map=config.feature_map,
                         feature_map_reps=config.q_feature_reps, reps=config.q_reps,
                         entanglement=config.entanglement, observables=observables, reupload=config.q_reupload,
                         separable=config.quantum_layer == "separable")


def noise_model(config: ModelConfig) -> NoiseModel:
    return NoiseModel(shots=config.q_train_shots, kind=config.q_shot_noise, readout_error=config.q_readout_error,
                      depolarizing=config.q_depolarizing, attenuation=parse_attenuation(config.q_attenuation))


def map_angles(z: torch.Tensor, kind: str) -> torch.Tensor:
    """The slot's inputs z -> rotation angles in (0, pi): pi/2 (1 + tanh z), or (arctan) pi/2 + arctan z."""
    if kind == "arctan":  # saturates as 1/z, not exponentially
        return torch.atan(z) + math.pi / 2
    return (torch.tanh(z) + 1.0) * (math.pi / 2)


class HybridNet(nn.Module):
    """`forward(x)` returns class logits; `features` and `head` are its two halves."""

    def __init__(self, config: ModelConfig, in_channels: int, n_classes: int,
                 layer_kwargs: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.config = config
        self.encoder, width = build_encoder(
            in_channels, config.width_mult, config.stem_stride, config.pretrained, config.weights_path
        )
        mean, std = pixel_statistics(in_channels, config.pretrained)
        self.register_buffer("pixel_mean", mean)
        self.register_buffer("pixel_std", std)
        if config.channels_last:
            self.encoder.to(memory_format=torch.channels_last)
        self.embed = nn.Sequential(
            nn.Linear(width, config.embed_dim), nn.BatchNorm1d(config.embed_dim), nn.ReLU(inplace=True)
        )
        self.dropout = nn.Dropout(config.dropout)
        self.quantum: QuantumLayer | None = None  # the circuit (pqc, separable): what backends run
        self.classical: ClassicalTwin | None = None  # its classical stand-in (classical_twin)
        self.angle_norm: nn.BatchNorm1d | None = None  # --q-angle-norm: BatchNorm on the slot's inputs
        self.head_kind = config.quantum_head if config.quantum else None
        self.noise_channel: Callable | None = None  # a device's noise while training (use_noise_channel)
        if config.quantum:
            width = self._build_layer(config, layer_kwargs)
            if self.head_kind == "residual":
                self.lift = nn.Linear(width, config.embed_dim)
            self.classifier = nn.Linear(head_input_width(self.head_kind, config.embed_dim, width), n_classes)
        else:
            self.classifier = nn.Linear(config.embed_dim, n_classes)

    def _build_layer(self, config: ModelConfig, layer_kwargs: dict[str, Any] | None) -> int:
        """The projection to angles and the layer in the quantum slot; returns the layer's output width."""
        if config.quantum_head not in QUANTUM_HEADS or config.quantum_layer not in QUANTUM_LAYERS:
            raise ValueError(f"quantum head {config.quantum_head!r} / layer {config.quantum_layer!r}: choose a head "
                             f"from {', '.join(QUANTUM_HEADS)} and a layer from {', '.join(QUANTUM_LAYERS)}")
        self.project = nn.Linear(config.embed_dim, config.n_qubits)
        if config.q_angle_norm:
            self.angle_norm = nn.BatchNorm1d(config.n_qubits)
        if config.quantum_layer == "none":
            return config.n_qubits
        qconfig = quantum_config(config)
        if config.quantum_layer == "classical_twin":
            n_weights = len(build_circuit(qconfig).weight_params)
            self.classical = ClassicalTwin(config.n_qubits, len(qconfig.observable_labels), n_weights, config.seed)
            return self.classical.n_outputs
        self.quantum = QuantumLayer(qconfig, precision=config.q_precision, seed=config.seed,
                                    **(layer_kwargs or {"engine": "statevector"}))
        self.noise = ExpectationNoise(noise_model(config), qconfig.observable_labels, at_eval=config.q_noise_at_eval)
        return self.quantum.n_outputs

    def use_noise_channel(self, program: Callable | None) -> None:
        """Train the quantum slot through `program(angles, weights) -> (values, basis probabilities)`, e.g. a
        device's noise model (hybrid.quantum.density); evaluation stays exact unless q_noise_at_eval."""
        if program is not None and self.quantum is None:
            raise ValueError("a noise channel simulates the circuit in the quantum slot; this model has none")
        self.noise_channel = program

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding f (what a domain discriminator or feature-statistics method sees)."""
        if self.config.colour_constancy > 0:  # before the low-pass: the illuminant is a whole-image estimate
            x = shades_of_gray(x, self.config.colour_constancy)
        if self.config.input_smoothing > 0:
            # a fixed low-pass: pneumonia opacities are low-frequency, pixel noise is not
            x = gaussian_blur(x, self.config.input_smoothing)
        x = (x - self.pixel_mean) / self.pixel_std
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.config.amp:
            # the encoder only: the embedding, quantum layer and classifier stay in full precision
            with torch.autocast(x.device.type, dtype=autocast_dtype(x.device)):
                h = self.encoder(x)
            return self.embed(h.float())
        return self.embed(self.encoder(x))

    def batchnorm_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The part of `forward` that holds every BatchNorm layer: domain-level TTA collects target
        statistics with it without running the quantum layer (which may be remote)."""
        f = self.features(x)
        if self.angle_norm is not None:
            self.slot_inputs(f)  # the angle BatchNorm sits in front of the quantum slot, still classical
        return f

    def slot_inputs(self, f: torch.Tensor) -> torch.Tensor:
        """The projection in front of the quantum slot (normalised with --q-angle-norm)."""
        z = self.project(f)
        return self.angle_norm(z) if self.angle_norm is not None else z

    def quantum_angles(self, f: torch.Tensor) -> torch.Tensor:
        """Encoder features squashed to rotation angles in (0, pi) for the feature map (--q-angle-map)."""
        return map_angles(self.slot_inputs(f), self.config.q_angle_map)

    def layer_outputs(self, f: torch.Tensor) -> torch.Tensor:
        """What the quantum slot gives the head: expectation values (with training noise), the classical
        twin's outputs, or (layer none) the projection itself."""
        if self.quantum is not None:
            angles = self.quantum_angles(f)
            if self.noise_channel is not None and (self.training or self.noise.at_eval):
                values, probabilities = self.noise_channel(angles.cpu(), self.quantum.weight.cpu())
                values, probabilities = values.to(angles.device, angles.dtype), probabilities.to(angles.device)
                return self.noise(values, probabilities) if self.noise.needs_probabilities else self.noise(values)
            if self.noise.needs_probabilities:
                return self.noise(*self.quantum.with_probabilities(angles))
            return self.noise(self.quantum(angles))
        if self.classical is not None:
            return self.classical(self.quantum_angles(f))
        return self.slot_inputs(f)

    def head(self, f: torch.Tensor) -> torch.Tensor:
        return self.head_terms(f)[0]

    def head_terms(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The class logits and, while training with --q-shot-noise marginal, the expected extra cross-entropy the
        shots would cause (ExpectationNoise.shot_penalty; None otherwise)."""
        if self.head_kind is None:
            return self.classifier(self.dropout(f)), None
        slot_inputs = self.dropout(f) if self.config.q_input_dropout else f
        marginal = self.quantum is not None and self.noise_channel is None and self.noise.marginal
        if marginal and self.head_kind == "dressed":
            # the dressed head only (TrainConfig says so to the user): its logits are read linearly from the circuit
            values, probabilities = self.quantum.with_probabilities(self.quantum_angles(slot_inputs), detach=False)
            logits = self.classifier(self.noise(values).to(f.dtype))
            return logits, self.noise.shot_penalty(probabilities, logits, self.classifier.weight)
        return self._logits(f, self.layer_outputs(slot_inputs)), None

    def _logits(self, f: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        if self.head_kind == "dressed":
            return self.classifier(q.to(f.dtype))
        if self.head_kind == "residual":
            return self.classifier(self.dropout(f) + self.lift(q.to(f.dtype)))
        return self.classifier(torch.cat([self.dropout(f), q], dim=1))

    def slot_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters in the quantum slot: the circuit's weights or its classical twin's."""
        slot = self.quantum if self.quantum is not None else self.classical
        return [p for p in slot.parameters() if p.requires_grad] if slot is not None else []

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters: the whole network, and the quantum slot (circuit weights or its stand-in)."""
        slot = self.quantum if self.quantum is not None else self.classical
        head = ("project", "angle_norm", "lift", "classifier")
        return {"total": count_parameters(self), "layer": count_parameters(slot),
                "head": sum(count_parameters(getattr(self, name, None)) for name in head)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # networks saved before the statistics were per channel hold one scalar mean and std (0.449/0.226 for
        # pretrained RGB too): repeated on every channel they compute what those networks were trained with
        for name in ("pixel_mean", "pixel_std"):
            saved = state_dict.get(prefix + name)
            if isinstance(saved, torch.Tensor) and saved.dim() == 0:
                state_dict[prefix + name] = saved.expand_as(getattr(self, name)).clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def load_network_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a saved network, dropping the training-only modules older checkpoints carried."""
        self.load_state_dict({k: v for k, v in state.items() if not k.startswith(LEGACY_TRAINING_KEYS)})
