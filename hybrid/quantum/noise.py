"""Device noise on expectation values, for training a model for the device it will run on.

The exact engine returns <O> for each Pauli observable O. A device returns an estimate from N
shots: each shot measures ±1 with P(+1) = (1 + <O>) / 2, so the estimate is a mean of N ±1
outcomes, with variance (1 - <O>^2) / N. Before sampling, a readout error that flips each measured
bit with probability p scales <O> by (1 - 2p)^w (w = the observable's Pauli weight), and global
depolarizing noise of strength λ scales it by (1 - λ). A real device's gate errors, decoherence and
per-qubit readout errors attenuate each observable by its own factor; `attenuation` holds factors
fitted on the device (hybrid.quantum.calibration), one per observable.

The binomial and gaussian kinds add the noise with a straight-through estimator: the forward pass
sees the noisy value, the backward pass the gradient of the (attenuated) exact one, which is what a
parameter-shift gradient from shots estimates on average. That gradient is blind to the noise: it
cannot tell the network that an expectation value near ±1 is measured with less variance than one
near 0. The pathwise kind draws the Gaussian approximation as mean + std(mean) * ε and differentiates
through std too (the reparameterization trick), so training sees how its outputs' noise depends on
where they lie and can move them where a device's shots disturb the decision less.

All of those draw each observable on its own. A device reads every Z-string from the same N
bitstrings, so the estimates of Z_i, Z_j and Z_iZ_j err together (correlations of ±0.5 on
fake_manila, results/quantum_heads/noise_device/RULE.md). The joint kind draws N bitstrings from the
state's basis probabilities, flips each bit with the readout error and computes every observable
from those same bitstrings, so training sees that covariance; its gradient is straight through.

The marginal kind draws nothing: it trains on the (attenuated) exact values and adds the expected extra loss the
shots would cause, to second order (the marginalized dropout of Wager et al. 2013): ½ tr(H Σ_z) for logits z read
linearly from the estimates, H the cross-entropy's Hessian in z and Σ_z the covariance the joint N-shot estimates put
on z (`ExpectationNoise.shot_penalty`), differentiable through the state's basis probabilities. Training then sees
how the variance depends on the state without the draws' gradient noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hybrid.quantum.statevector import z_string_signs

SHOT_NOISE = ("binomial", "gaussian", "pathwise", "joint", "marginal")


@dataclass(frozen=True)
class NoiseModel:
    shots: int = 0  # 0: no shot noise (exact expectation values)
    kind: str = "binomial"  # "binomial" (a mean of N ±1 outcomes), "gaussian" (same mean and variance),
    # "pathwise" (the Gaussian, differentiated through its variance) or "joint" (every observable from the same
    # N bitstrings; needs Z-string observables and the state's basis probabilities) or "marginal" (no draws: the
    # joint noise's expected extra loss, ExpectationNoise.shot_penalty)
    readout_error: float = 0.0  # probability that a measured bit flips
    depolarizing: float = 0.0  # λ: <O> -> (1 - λ) <O>
    attenuation: tuple[float, ...] = ()  # per observable: <O> -> a_i <O> (fitted on a device); () = none

    def __post_init__(self) -> None:
        if self.kind not in SHOT_NOISE:
            raise ValueError(f"unknown shot noise {self.kind!r}; choose one of {', '.join(SHOT_NOISE)}")
        if not isinstance(self.shots, int) or self.shots < 0:
            raise ValueError(f"shots must be 0 (exact) or a positive whole number, got {self.shots!r}")
        for name in ("readout_error", "depolarizing"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)!r}")
        if not all(0.0 < a <= 1.0 for a in self.attenuation):
            raise ValueError(f"attenuation factors must be in (0, 1], got {self.attenuation!r}")

    @property
    def active(self) -> bool:
        return self.shots > 0 or self.readout_error > 0 or self.depolarizing > 0 or bool(self.attenuation)


def pauli_weights(labels: tuple[str, ...]) -> torch.Tensor:
    """How many qubits each Pauli label measures (its non-identity factors)."""
    return torch.tensor([sum(c != "I" for c in label) for label in labels], dtype=torch.float64)


class ExpectationNoise(nn.Module):
    """Applies a `NoiseModel` to a batch of expectation values `(batch, n_observables)`.

    Active while training; at evaluation only when `at_eval` (the exact engine then imitates a
    device). `generator` makes the draws reproducible.
    """

    def __init__(self, model: NoiseModel, labels: tuple[str, ...], at_eval: bool = False,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.model, self.at_eval, self.generator = model, at_eval, generator
        if model.attenuation and len(model.attenuation) != len(labels):
            raise ValueError(f"{len(model.attenuation)} attenuation factors for {len(labels)} observables "
                             f"({', '.join(labels)}); calibrate again for this circuit")
        # not a buffer: a constant of the circuit, not state to save
        self.attenuation = (1.0 - 2.0 * model.readout_error) ** pauli_weights(labels) * (1.0 - model.depolarizing)
        if model.attenuation:
            self.attenuation = self.attenuation * torch.tensor(model.attenuation, dtype=torch.float64)
        if at_eval and model.kind == "marginal" and model.shots > 0:
            raise ValueError("marginal shot noise is a training objective and draws nothing to evaluate with; "
                             "imitate a device at evaluation with the joint kind")
        self.signs = ZStrings(labels) if model.kind in ("joint", "marginal") and model.shots > 0 else None

    @property
    def needs_probabilities(self) -> bool:
        """Whether the next call draws bitstrings, so it must be given the basis probabilities."""
        return self.model.kind == "joint" and self.model.shots > 0 and (self.training or self.at_eval)

    @property
    def marginal(self) -> bool:
        """Whether training adds `shot_penalty` instead of drawing shots."""
        return self.model.kind == "marginal" and self.model.shots > 0 and self.training

    def shot_penalty(self, probabilities: torch.Tensor, logits: torch.Tensor, readout: torch.Tensor) -> torch.Tensor:
        """Batch mean of ½ tr(H Σ_z): the second-order extra cross-entropy when logits = readout @ q + b are computed
        from joint `shots`-shot estimates q of the Z-strings on states with basis `probabilities` (B, 2**n).
        H = diag(p) - p pᵀ (p = softmax(logits)); Σ_z = readout Σ_q readoutᵀ / shots, Σ_q the covariance of the
        observables' ±1 values over the (readout-flipped) bitstrings. Differentiable in all three inputs."""
        p = self.signs.flipped(probabilities.double(), self.model.readout_error)
        g = self.signs.matrix.to(p.device) @ readout.double().T  # (2**n, classes): each logit's share per bitstring
        softmax = logits.double().softmax(dim=1)
        variance = p @ g**2 - (p @ g) ** 2  # (B, classes): Var_b of each logit
        h = softmax @ g.T  # (B, 2**n): the softmax-weighted logit on each bitstring
        weighted = (p * h**2).sum(dim=1) - (p * h).sum(dim=1) ** 2
        return (0.5 * ((softmax * variance).sum(dim=1) - weighted) / self.model.shots).mean().to(logits.dtype)

    def forward(self, expectations: torch.Tensor, probabilities: torch.Tensor | None = None) -> torch.Tensor:
        if not self.model.active or not (self.training or self.at_eval):
            return expectations
        mean = expectations * self.attenuation.to(expectations.device, expectations.dtype)
        if self.model.shots == 0 or self.model.kind == "marginal":  # marginal: the shots enter as shot_penalty
            return mean
        if self.model.kind == "joint":
            if probabilities is None:
                raise ValueError("joint shot noise draws bitstrings: pass the basis probabilities "
                                 "(QuantumLayer.with_probabilities)")
            drawn = self.signs.bitstring_estimates(probabilities, self.model.shots, self.model.readout_error,
                                                   self.generator)
            # the draws' own mean is (1 - 2p)^w <O>; the device's further attenuation scales the mean only
            readout = (1.0 - 2.0 * self.model.readout_error) ** self.signs.weights
            noise = drawn.to(mean.dtype) - (expectations * readout.to(mean.device, mean.dtype)).detach()
            return mean + noise
        if self.model.kind == "pathwise":
            return pathwise_estimates(mean, self.model.shots, self.generator)
        noisy = sample_estimates(mean.detach(), self.model.shots, self.model.kind, self.generator)
        return mean + (noisy - mean.detach())  # straight through: the gradient of the mean

    def extra_repr(self) -> str:
        m = self.model
        return (f"shots={m.shots or 'exact'}, kind={m.kind}, readout_error={m.readout_error}, "
                f"depolarizing={m.depolarizing}, attenuation={m.attenuation or 'none'}, at_eval={self.at_eval}")


class ZStrings:
    """The ±1 value of each Z-string observable on every basis state, for estimating them from bitstrings."""

    def __init__(self, labels: tuple[str, ...]) -> None:
        if any(set(label) - {"I", "Z"} for label in labels):
            raise ValueError(f"joint shot noise reads every observable from one basis's bitstrings; {labels} "
                             "are not all Z-strings")
        self.n_qubits = len(labels[0])
        self.matrix = torch.stack([z_string_signs(label) for label in labels], dim=1)  # (2**n, n_obs)
        self.weights = pauli_weights(labels)

    def flipped(self, probabilities: torch.Tensor, readout_error: float) -> torch.Tensor:
        """Basis probabilities (B, 2**n) after each bit flips independently with probability `readout_error`."""
        if readout_error == 0:
            return probabilities
        t = probabilities.reshape(-1, *([2] * self.n_qubits))
        for axis in range(1, self.n_qubits + 1):
            t = (1.0 - readout_error) * t + readout_error * t.flip(axis)
        return t.reshape(probabilities.shape)

    def bitstring_counts(self, probabilities: torch.Tensor, shots: int | torch.Tensor, readout_error: float = 0.0,
                         generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 2**n) float64 on the CPU: how often each basis state is read in `shots` bitstrings per row, drawn
        from `probabilities` (B, 2**n), each bit flipped with probability `readout_error`. `shots` may be a (B,)
        tensor, row i reading shots[i] bitstrings (all rows draw the most, the rest are discarded)."""
        p = probabilities.detach().double().cpu().clamp_min(0.0)
        per_row = shots.reshape(-1).cpu() if isinstance(shots, torch.Tensor) else None
        most = int(per_row.max()) if per_row is not None else shots
        counts = torch.zeros(p.shape, dtype=torch.float64)
        if most == 0:
            return counts
        drawn = torch.multinomial(p / p.sum(dim=1, keepdim=True), most, replacement=True, generator=generator)
        if readout_error > 0:
            flips = torch.rand((*drawn.shape, self.n_qubits), generator=generator) < readout_error
            drawn = drawn ^ (flips.long() << torch.arange(self.n_qubits)).sum(-1)
        used = (torch.ones(drawn.shape, dtype=torch.float64) if per_row is None
                else (torch.arange(most)[None, :] < per_row[:, None]).double())
        return counts.scatter_add_(1, drawn, used)

    def bitstring_estimates(self, probabilities: torch.Tensor, shots: int, readout_error: float = 0.0,
                            generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, n_obs): every observable estimated from the same `shots` bitstrings per row (`bitstring_counts`)."""
        counts = self.bitstring_counts(probabilities, shots, readout_error, generator)
        return ((counts / shots) @ self.matrix).to(probabilities.device)


# Keeps the pathwise std differentiable at |<O>| = 1, where d sqrt(1 - m^2) / dm is infinite.
PATHWISE_FLOOR = 1e-4


def pathwise_estimates(mean: torch.Tensor, shots: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """mean + sqrt((1 - mean^2) / shots) * ε, differentiable in mean through both terms."""
    mean = mean.clamp(-1.0, 1.0)
    std = ((1.0 - mean**2).clamp_min(PATHWISE_FLOOR) / shots).sqrt()
    noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device="cpu").to(mean.device)
    return mean + std * noise


def sample_estimates(mean: torch.Tensor, shots: int, kind: str, generator: torch.Generator | None = None
                     ) -> torch.Tensor:
    """Shot estimates of expectation values `mean` in [-1, 1] from `shots` ±1 outcomes each."""
    mean = mean.clamp(-1.0, 1.0)
    if kind == "pathwise":
        return pathwise_estimates(mean, shots, generator)
    if kind == "gaussian":
        std = ((1.0 - mean**2) / shots).sqrt()
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device="cpu").to(mean.device)
        return mean + std * noise
    p_plus = ((1.0 + mean) / 2.0).cpu()
    counts = torch.binomial(torch.full_like(p_plus, float(shots)), p_plus, generator=generator)
    return (2.0 * counts / shots - 1.0).to(mean.device)
