"""Training algorithms: how one step changes the network (the DomainBed pattern, without globals()).

An `Algorithm` owns the network, its optimizer and learning-rate schedule, and whatever else
the method trains beside the network (DANN's domain discriminator). `update(x, y, domains,
step)` takes one step and returns what to log; `predict(x)` gives class logits. Adding a
method is one class here with `@register_algorithm("name")` and its `objective` (the loss of a
batch), plus its test; the training loop (`hybrid.fit`), the CLI choices and the registry-wide
test pick it up from `ALGORITHMS`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hybrid.config import TrainConfig
from hybrid.devices import module_device
from hybrid.registry import lookup, registrar

ALGORITHMS: dict[str, type["Algorithm"]] = {}
register_algorithm = registrar(ALGORITHMS, "training algorithm")  # class decorator: @register_algorithm("name")


def algorithm_class(name: str) -> type["Algorithm"]:
    return lookup(ALGORITHMS, name, "training algorithm")


def check_algorithm(cfg: TrainConfig) -> None:
    """An unknown algorithm or hyperparameter fails before any work (and before a run directory is made)."""
    cls = algorithm_class(cfg.algorithm)
    parse_hparams(cfg.algorithm_hparams, cls.HPARAMS, cls.name)


def make_algorithm(name: str, network: nn.Module, hparams: TrainConfig, *, n_domains: int,
                   total_steps: int) -> "Algorithm":
    """The algorithm registered as ``name``, training ``network`` for ``total_steps`` steps."""
    return algorithm_class(name)(network, hparams, n_domains=n_domains, total_steps=total_steps)


def parse_hparams(text: str, known: dict[str, float], algorithm: str) -> dict[str, float]:
    """`"name=value,..."` -> {name: float}; names must be among the algorithm's `known` ones."""
    values = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or name.strip() not in known:
            valid = ", ".join(f"{k} (default {v})" for k, v in known.items()) or "none"
            raise ValueError(f"algorithm_hparams entry {item!r} is not NAME=VALUE for a hyperparameter of "
                             f"{algorithm!r}; its hyperparameters are: {valid}")
        try:
            values[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"algorithm_hparams {name.strip()} expects a number, got {value!r}") from None
    return values


class Algorithm(nn.Module):
    """Base class: the network, an AdamW optimizer over every parameter, a one-cycle schedule.

    Subclasses create their extra modules in ``build()`` (called before the optimizer is
    made, so it sees their parameters) and implement ``objective``. A method's own
    hyperparameters are declared in ``HPARAMS`` with their defaults and read with
    ``self.hp(name)``; `TrainConfig.algorithm_hparams` ("name=value,...") overrides them, so a
    new method needs no new config field.
    """

    name = "base"
    needs_domains = False  # trains against domain labels, so needs at least two training domains
    HPARAMS: dict[str, float] = {}  # the method's own hyperparameters and their defaults

    def __init__(self, network: nn.Module, hparams: TrainConfig, *, n_domains: int, total_steps: int):
        super().__init__()
        if self.needs_domains and n_domains < 2:
            raise ValueError(f"training algorithm {self.name!r} needs at least two training domains (virtual or "
                             f"real centers), got {n_domains}")
        self.network = network
        self.hparams = hparams
        self._hp = self.HPARAMS | parse_hparams(hparams.algorithm_hparams, self.HPARAMS, self.name)
        self.n_domains = n_domains
        self.total_steps = total_steps
        # --aux-weight: a training-only classifier on the embedding (deep supervision), kept out of the network
        # so predictions still pass only through its head; absent when off, so older training states still load
        self.aux_classifier = (nn.Linear(hparams.embed_dim, network.classifier.out_features)
                               if hparams.aux_weight > 0 else None)
        self.build()
        device = module_device(network)
        self.to(device)  # modules made by build() join the network's device before the optimizer sees them
        # float16 gradients underflow without loss scaling; bfloat16 (CPU autocast) has float32's range
        self.scaler = torch.amp.GradScaler("cuda") if hparams.amp and device.type == "cuda" else None
        self.optimizer = torch.optim.AdamW(self.parameter_groups(), lr=hparams.lr, weight_decay=hparams.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=[group["lr"] for group in self.optimizer.param_groups],
            total_steps=total_steps, pct_start=0.15)

    def parameter_groups(self) -> list[dict]:
        """One group at --lr; with --q-lr-scale other than 1, the quantum slot's parameters in a second group
        (only then, so runs and checkpoints without it keep a single group)."""
        scale = self.hparams.q_lr_scale
        slot = getattr(self.network, "slot_parameters", list)() if scale != 1.0 else []
        slot_ids = {id(p) for p in slot}
        rest = [p for p in self.parameters() if id(p) not in slot_ids]
        groups = [{"params": rest, "lr": self.hparams.lr}]
        return groups + ([{"params": slot, "lr": self.hparams.lr * scale}] if slot else [])

    def build(self) -> None:
        """Create the modules the method trains beside the network."""

    def hp(self, name: str) -> float:
        """One of the method's own hyperparameters (its HPARAMS default unless overridden)."""
        return self._hp[name]

    def class_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the class logits, with the run's label smoothing (every method shares it)."""
        return F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)

    def head_loss(self, f: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The class loss of the network's head on the embedding f, plus (with --aux-weight) the weighted loss
        of the auxiliary classifier on dropout(f); logs cls_loss (the head's) and aux_loss. With
        --head-grad-scale s < 1 only the share s of the head's gradient reaches the encoder. With --head-distill the
        head is also pulled towards the aux classifier's logits on f (logs distill_loss). With --q-shot-noise marginal
        the class loss includes the shots' expected extra loss (logs shot_penalty)."""
        logits, shot_penalty = self.network.head_terms(scale_gradient(f, self.hparams.head_grad_scale))
        cls_loss = self.class_loss(logits, y)
        logs = {"cls_loss": cls_loss.item()}
        if shot_penalty is not None:
            cls_loss = cls_loss + shot_penalty
            logs["shot_penalty"] = shot_penalty.item()
        if self.aux_classifier is None:
            return cls_loss, logs
        aux_loss = self.class_loss(self.aux_classifier(self.network.dropout(f)), y)  # after the head's dropout draws
        loss = cls_loss + self.hparams.aux_weight * aux_loss
        logs["aux_loss"] = aux_loss.item()
        if self.hparams.head_distill > 0:
            with torch.no_grad():  # the teacher: its own loss trains it, the distillation only the head
                teacher = self.aux_classifier(f)
            distill = distillation_loss(logits, teacher, self.hparams.distill_temperature)
            loss = loss + self.hparams.head_distill * distill
            logs["distill_loss"] = distill.item()
        return loss, logs

    def objective(self, x: torch.Tensor, y: torch.Tensor, domains: torch.Tensor,
                  step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of one batch and what to log; ``step`` counts from 0 over the whole training."""
        raise NotImplementedError

    def forward(self, x, y, domains, step):
        """The objective: `DistributedDataParallel(algorithm)(...)` averages its gradients over ranks."""
        return self.objective(x, y, domains, step)

    def update(self, x: torch.Tensor, y: torch.Tensor, domains: torch.Tensor, step: int,
               runner: nn.Module | None = None) -> dict[str, float]:
        """One optimisation step on a batch; `runner` is the DDP wrapper of this algorithm, if any."""
        loss, logs = (runner or self)(x, y, domains, step)
        self.step_optimizer(loss)
        return logs

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def step_optimizer(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.scheduler.step()

    def learning_rate(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def training_state(self) -> dict:
        """Modules, optimizer and schedule, for `load_training_state` (the caller keeps the random state)."""
        state = {"algorithm": self.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict()}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_training_state(self, state: dict) -> None:
        """Resume; a checkpoint written before algorithms existed kept every module in `model`."""
        modules = state.get("algorithm")
        if modules is None:
            modules = {(k if k.startswith("discriminator.") else f"network.{k}"): v for k, v in state["model"].items()}
        self.load_state_dict(modules)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])


@register_algorithm("erm")
class ERM(Algorithm):
    """Empirical risk minimisation: cross-entropy on the (shifted) training images."""

    def objective(self, x, y, domains, step):
        loss, logs = self.head_loss(self.network.features(x), y)
        return loss, {"loss": loss.item()} | logs


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s distillation term T^2 KL(softmax(teacher / T) || softmax(student / T)), batch mean; the T^2
    keeps its gradient on the scale of the cross-entropy's whatever T is. The teacher gets no gradient."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher.detach() / t, dim=1),
                    reduction="batchmean", log_target=True) * t * t


def scale_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward; backward passes `scale` x the gradient (0: detached, 1: unchanged)."""
    if scale == 1.0:
        return x
    if scale == 0.0:
        return x.detach()
    return x * scale + x.detach() * (1.0 - scale)


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, lam: float) -> torch.Tensor:
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.lam * grad, None


def grad_reverse(x: torch.Tensor, lam: float) -> torch.Tensor:
    """Identity forward, gradient multiplied by -lam backward (Ganin & Lempitsky, 2015)."""
    return _ReverseGrad.apply(x, lam)


def dann_lambda(progress: float, max_lambda: float = 1.0) -> float:
    """DANN schedule 2/(1+exp(-10p)) - 1, scaled to `max_lambda`; p in [0, 1] is training progress."""
    p = min(max(progress, 0.0), 1.0)
    return max_lambda * (2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0)


@register_algorithm("dann")
class DANN(Algorithm):
    """Domain-adversarial training (Ganin et al., 2016): a discriminator learns to tell the training
    centers apart from the embedding, and the reversed gradient makes the embedding hide them.

    The reversal strength follows `dann_lambda`, capped at ``dann_max_lambda``; the domain
    loss is weighted by ``dann_weight``.
    """

    needs_domains = True

    def build(self) -> None:
        width = self.hparams.embed_dim
        self.discriminator = nn.Sequential(nn.Linear(width, 128), nn.ReLU(inplace=True), nn.Dropout(0.2),
                                           nn.Linear(128, self.n_domains))

    def objective(self, x, y, domains, step):
        lam = dann_lambda(step / self.total_steps, self.hparams.dann_max_lambda)
        f = self.network.features(x)
        domain_logits = self.discriminator(grad_reverse(f, lam))  # before the head: dropout draws keep their order
        class_loss, logs = self.head_loss(f, y)
        dom_loss = F.cross_entropy(domain_logits, domains)
        loss = class_loss + self.hparams.dann_weight * dom_loss
        return loss, {"loss": loss.item()} | logs | {"domain_loss": dom_loss.item(),
                "domain_acc": float((domain_logits.argmax(1) == domains).float().mean()), "lambda": lam}


def coral_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared distance of the means plus that of the covariances of two feature sets (Deep CORAL,
    Sun & Saenko 2016, with the mean term DomainBed adds)."""
    mean_a, mean_b = a.mean(0, keepdim=True), b.mean(0, keepdim=True)
    cov_a = (a - mean_a).T @ (a - mean_a) / (len(a) - 1)
    cov_b = (b - mean_b).T @ (b - mean_b) / (len(b) - 1)
    return (mean_a - mean_b).pow(2).mean() + (cov_a - cov_b).pow(2).mean()


@register_algorithm("coral")
class CORAL(Algorithm):
    """Deep CORAL: cross-entropy plus the distance between the embedding's first and second moments
    of every pair of training domains in the batch (domains with fewer than two images there skip)."""

    needs_domains = True
    HPARAMS = {"coral_weight": 1.0}

    def objective(self, x, y, domains, step):
        f = self.network.features(x)
        class_loss, logs = self.head_loss(f, y)
        groups = [f[domains == d] for d in torch.unique(domains)]
        groups = [g for g in groups if len(g) > 1]
        pairs = [coral_distance(a, b) for i, a in enumerate(groups) for b in groups[i + 1:]]
        penalty = torch.stack(pairs).mean() if pairs else f.sum() * 0
        loss = class_loss + self.hp("coral_weight") * penalty
        return loss, {"loss": loss.item()} | logs | {"coral_penalty": penalty.item()}


def mix_style(x: torch.Tensor, alpha: float, eps: float = 1e-6) -> torch.Tensor:
    """MixStyle (Zhou et al., ICLR 2021) on (N, C, H, W) feature maps: each image's channel means and
    standard deviations are mixed with those of another image of the batch, weight ~ Beta(alpha, alpha)."""
    n = x.shape[0]
    mu = x.mean(dim=(2, 3), keepdim=True)
    sig = (x.var(dim=(2, 3), keepdim=True) + eps).sqrt()
    normed = (x - mu.detach()) / sig.detach()  # the statistics are mixed, not back-propagated through
    lam = torch.distributions.Beta(alpha, alpha).sample((n, 1, 1, 1)).to(x.device, x.dtype)
    perm = torch.randperm(n, device=x.device)
    mixed_mu = lam * mu + (1 - lam) * mu[perm]
    mixed_sig = lam * sig + (1 - lam) * sig[perm]
    return normed * mixed_sig.detach() + mixed_mu.detach()


@register_algorithm("mixstyle")
class MixStyle(Algorithm):
    """ERM with MixStyle after three early encoder blocks (the ends of the first MobileNetV2 stages,
    as the paper places it after the first ResNet stages), applied to a batch with probability
    `mix_prob`, only while this algorithm computes its training objective (never at evaluation)."""

    HPARAMS = {"mix_prob": 0.5, "mix_alpha": 0.1}
    BLOCKS = (1, 3, 6)  # indices in the MobileNetV2 feature blocks

    def build(self) -> None:
        self._mixing = False
        blocks = self.network.encoder[0]
        for index in self.BLOCKS:
            blocks[index].register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if self._mixing and output.shape[0] > 1:
            return mix_style(output, self.hp("mix_alpha"))
        return output

    def objective(self, x, y, domains, step):
        self._mixing = bool(torch.rand(()) < self.hp("mix_prob"))  # the global generator: resumed exactly
        try:
            loss, logs = self.head_loss(self.network.features(x), y)
        finally:
            self._mixing = False
        return loss, {"loss": loss.item()} | logs


def random_convolution(x: torch.Tensor, max_kernel: int) -> torch.Tensor:
    """RandConv (Xu et al., ICLR 2021): the images through one random convolution (odd kernel size up to
    `max_kernel`, weights ~ N(0, 1/(k^2 C))), mixed with the originals by a uniform weight, and then
    given back each image's per-channel mean and standard deviation so the result stays in [0, 1]."""
    channels = x.shape[1]
    k = int(torch.randint(0, max_kernel // 2 + 1, ()).item()) * 2 + 1
    weight = torch.randn(channels, channels, k, k, device=x.device, dtype=x.dtype) / math.sqrt(k * k * channels)
    out = F.conv2d(x, weight, padding=k // 2)
    alpha = torch.rand((), device=x.device, dtype=x.dtype)
    out = alpha * x + (1 - alpha) * out
    mean, std = x.mean(dim=(2, 3), keepdim=True), x.std(dim=(2, 3), keepdim=True)
    out = (out - out.mean(dim=(2, 3), keepdim=True)) / (out.std(dim=(2, 3), keepdim=True) + 1e-6) * std + mean
    return out.clamp(0, 1)


@register_algorithm("randconv")
class RandConv(Algorithm):
    """ERM on images passed, with probability `randconv_prob` per batch, through a random convolution
    (single-source domain generalization: random local textures, shapes kept). No consistency loss."""

    HPARAMS = {"randconv_prob": 0.5, "max_kernel": 7}

    def objective(self, x, y, domains, step):
        if bool(torch.rand(()) < self.hp("randconv_prob")):
            with torch.no_grad():
                x = random_convolution(x, int(self.hp("max_kernel")))
        loss, logs = self.head_loss(self.network.features(x), y)
        return loss, {"loss": loss.item()} | logs
