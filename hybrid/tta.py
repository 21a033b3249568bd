"""Test-time adaptation (TTA) of a trained classifier to an unseen target domain.

Five methods behind one interface, picked by name with :func:`make_tta`:

* ``none`` -- the source model as trained (``eval()`` mode), the reference point.
* ``bn``   -- normalise with the statistics of the current test batch instead of the
  source running statistics; no parameter changes.
* ``bn2d`` -- the same for the image-level BatchNorm2d layers only; 1-D BatchNorm over
  embeddings keeps its source statistics (they also track the batch's class mix).
* ``adabn`` -- AdaBN (Li et al., 2016): the statistics of the whole target domain, collected
  in one pass before predicting, so a sample's prediction does not depend on which other
  samples share its batch. Needs :meth:`TTAMethod.prepare` with the domain's images.
* ``tent`` -- TENT (Wang et al., ICLR 2021): batch statistics plus a few gradient steps
  minimising the prediction entropy, updating only the BatchNorm affine parameters.

The model may be any ``nn.Module`` mapping ``x`` to logits ``(B, C)`` that holds
BatchNorm layers; nothing else about its architecture is assumed. Each wrapper adapts
the model *in place* (as TENT does) but saves its state and flags when built, and
``reset()`` puts back exactly that: parameters, BN running statistics, ``training``
flags and ``requires_grad`` flags. Mode changes made for adaptation are undone at the
end of every ``predict`` call, so the model is never left half-configured.

Callers ask a method what it needs instead of testing names: ``needs_gradients`` (TENT
back-propagates through the whole model, so it cannot run where the model's tail gives no
gradients, e.g. a quantum layer on a QPU). A model that implements :class:`BatchNormForward`
lets domain-level methods collect statistics without running its tail.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Callable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from hybrid.batchnorm import (BatchNormForward, bn_layers, estimate_batchnorm_statistics, flags_kept, restore_flags,
                              save_flags, use_batch_stats)
from hybrid.registry import lookup, registrar

TTA_METHODS: dict[str, type["TTAMethod"]] = {}
register = registrar(TTA_METHODS, "TTA method")  # class decorator: @register("name")


def make_tta(name: str, model: nn.Module, **kwargs) -> "TTAMethod":
    """Wrap ``model`` in the TTA method registered as ``name``."""
    return lookup(TTA_METHODS, name, "TTA method")(model, **kwargs)


# ---------------------------------------------------------------------------- helpers


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy of the softmax of each row of ``logits``."""
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


def configure_model(model: nn.Module) -> nn.Module:
    """TENT configuration: batch statistics, and gradients only for BN weight and bias."""
    use_batch_stats(model)
    model.requires_grad_(False)
    for bn in bn_layers(model):
        bn.requires_grad_(True)  # a BN layer's only parameters are its affine weight and bias
    return model


def collect_params(model: nn.Module) -> tuple[list[nn.Parameter], list[str]]:
    """The BN affine parameters TENT updates, and their names (for logging)."""
    params, names = [], []
    for module_name, bn in model.named_modules():
        if isinstance(bn, _BatchNorm):
            for param_name, p in bn.named_parameters(recurse=False):
                params.append(p)
                names.append(f"{module_name}.{param_name}")
    return params, names


def check_model(model: nn.Module, require_affine: bool = True) -> None:
    """Fail loudly when the model cannot be adapted, instead of silently doing nothing."""
    if not bn_layers(model):
        raise ValueError(
            f"{type(model).__name__} has no BatchNorm layers, so test-time adaptation has "
            "nothing to adapt; use TTA method 'none' or a model with BatchNorm"
        )
    if require_affine and not collect_params(model)[0]:
        raise ValueError(
            f"the BatchNorm layers of {type(model).__name__} have no affine parameters "
            "(affine=False), so TENT has nothing to update; use TTA method 'bn' instead"
        )


def _collapsed(logits: torch.Tensor, fraction: float) -> bool:
    """Whether the most frequent predicted class covers more than ``fraction`` of the batch."""
    counts = torch.bincount(logits.argmax(1), minlength=logits.shape[1])
    return counts.max().item() > fraction * logits.shape[0]


# ---------------------------------------------------------------------------- methods


class TTAMethod:
    """Base wrapper: saves the model's exact state at construction so ``reset()`` can restore it.

    Counters (``batches_seen``, ``adapted_batches``, ``adapted_steps``,
    ``fallback_batches``, ``collapse_events``) accumulate over the wrapper's life and are
    reported per domain in the evaluation results (``tta_counters``); ``reset()`` leaves
    them alone because episodic TENT resets every batch.
    """

    name = "base"
    needs_gradients = False  # whether predict() back-propagates through the model

    def __init__(self, model: nn.Module):
        self.model = model
        self._model_state = deepcopy(model.state_dict())
        self._flags = save_flags(model)
        self.batches_seen = 0
        self.adapted_batches = 0
        self.adapted_steps = 0
        self.fallback_batches = 0
        self.collapse_events = 0

    def prepare(self, x: torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """See the whole target domain ``x`` before predicting it; only domain-level methods use it.

        ``forward`` runs every BatchNorm layer of the model; by default the model's
        ``batchnorm_forward`` where it implements :class:`BatchNormForward`, else the model.
        """

    def _statistics_forward(self, forward: Callable[[torch.Tensor], torch.Tensor] | None):
        if forward is not None:
            return forward
        return self.model.batchnorm_forward if isinstance(self.model, BatchNormForward) else self.model

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C)`` for the batch ``x``, adapting first where the method does."""
        raise NotImplementedError

    def reset(self) -> None:
        """Restore the parameters, buffers and flags the model had when wrapped."""
        self.model.load_state_dict(self._model_state)  # copies in place: optimizers stay valid
        restore_flags(self.model, self._flags)

    @property
    def counters(self) -> dict[str, int]:
        return {
            "batches_seen": self.batches_seen,
            "adapted_batches": self.adapted_batches,
            "adapted_steps": self.adapted_steps,
            "fallback_batches": self.fallback_batches,
            "collapse_events": self.collapse_events,
        }

    @torch.no_grad()
    def _source_logits(self, x: torch.Tensor) -> torch.Tensor:
        with flags_kept(self.model):
            return self.model.eval()(x)


@register("none")
class NoAdapt(TTAMethod):
    """The source model unchanged: ``eval()`` mode, source BN statistics, no gradients."""

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.batches_seen += 1
        return self._source_logits(x)


MIN_BATCH = 8  # smaller test batches are not adapted (their statistics are too noisy): source statistics instead


@register("bn")
class BatchNormAdapt(TTAMethod):
    """Normalise with the statistics of each test batch instead of the source statistics.

    A covariate shift between hospitals (scanner, contrast, staining) moves the feature
    statistics; re-estimating them per batch undoes much of it at no training cost.
    Batches smaller than ``min_batch`` fall back to the source statistics: the mean and
    variance of a handful of images are too noisy (for a single image BatchNorm1d cannot
    compute them at all, and BatchNorm2d would normalise the image against itself).
    """

    kinds: tuple[type, ...] = (_BatchNorm,)  # which BatchNorm layers take the batch statistics

    def __init__(self, model: nn.Module, *, min_batch: int = MIN_BATCH):
        check_model(model, require_affine=False)
        if not any(isinstance(bn, self.kinds) for bn in bn_layers(model)):
            raise ValueError(f"{type(model).__name__} has no {' or '.join(k.__name__ for k in self.kinds)} "
                             f"layers for TTA method {self.name!r} to adapt; use 'bn' or 'none'")
        super().__init__(model)
        self.min_batch = min_batch

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.batches_seen += 1
        if x.shape[0] < self.min_batch:
            self.fallback_batches += 1
            return self._source_logits(x)
        with flags_kept(self.model):
            logits = use_batch_stats(self.model, self.kinds)(x)
        self.adapted_batches += 1
        return logits


@register("bn2d")
class ImageBatchNormAdapt(BatchNormAdapt):
    """Batch statistics for the image-level (BatchNorm2d) layers only.

    Acquisition shift lives in image statistics; the statistics of a 1-D BatchNorm over
    embeddings also move with the batch's class mix (label shift), which plain ``bn``
    would normalise away. This keeps such layers on their source statistics.
    """

    kinds = (nn.BatchNorm2d,)


@register("adabn")
class DomainBatchNormAdapt(TTAMethod):
    """AdaBN: normalise with statistics of the whole target domain, collected by :meth:`prepare`.

    ``bn`` re-estimates the statistics on every test batch, so a sample's score depends on
    its batch companions and scores of different batches are not on one scale; on HAM10000
    that cost the in-domain test split 0.14 AUC (batches of 256 against the whole split as
    one batch, which matched no adaptation). Here the statistics come from the whole
    domain, in chunks of ``stats_batch_size`` averaged with equal weight per chunk (as
    precise BN does, so a short last chunk counts a little more than its share), and
    prediction runs in eval mode, so it is per sample and free of the prediction batch size.
    A domain of fewer than ``min_samples`` images keeps the source statistics.
    """

    def __init__(self, model: nn.Module, *, stats_batch_size: int = 256, min_samples: int = 8):
        check_model(model, require_affine=False)
        super().__init__(model)
        self.stats_batch_size = stats_batch_size
        self.min_samples = min_samples
        self.prepared = False
        self.adapted = False

    @torch.no_grad()
    def prepare(self, x: torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.reset()  # statistics of this domain only, never mixed with an earlier one
        self.prepared = True
        self.adapted = len(x) >= self.min_samples
        if not self.adapted:
            return
        forward = self._statistics_forward(forward)
        layers = bn_layers(self.model)
        with flags_kept(self.model):
            self.model.eval()
            for bn in layers:
                bn.track_running_stats = True
                bn.train()
            estimate_batchnorm_statistics(layers, forward, x, self.stats_batch_size)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        if not self.prepared:
            raise RuntimeError("TTA method 'adabn' needs the whole target domain first: call "
                               "prepare(domain_images) before predict(batch)")
        self.batches_seen += 1
        if self.adapted:
            self.adapted_batches += 1
        else:
            self.fallback_batches += 1
        return self._source_logits(x)  # eval mode: the running statistics are the domain's now


@register("tent")
class Tent(TTAMethod):
    """TENT: minimise prediction entropy on each test batch by updating BN affine parameters.

    Only the BN scale and shift move (a small fraction of the weights), which keeps the
    features learnt on the source domains and makes adaptation cheap and stable.

    ``episodic=True`` (default) restores the source model after every batch, so each
    batch is adapted independently, from the source model. On multi-center medical data
    the test stream switches between hospitals and class balance; continual adaptation
    would carry errors from one center into the next and can drift into a degenerate
    model.

    Collapse guard: entropy is also minimised by predicting one class for everything. If
    after a step the most frequent predicted class covers more than ``collapse_fraction``
    of a batch whose un-adapted predictions did not, that step is undone (parameters and
    optimizer state), adaptation of the batch stops and ``collapse_events`` is counted.
    Batches that were one-class before adapting (a single-class domain) are left alone.
    ``collapse_fraction=1.0`` disables the guard.

    Batches smaller than ``min_batch`` are not adapted and use the source statistics
    (see :class:`BatchNormAdapt`).
    """

    needs_gradients = True

    def __init__(
        self,
        model: nn.Module,
        *,
        optimizer: str = "adam",  # or "sgd" (TENT used Adam on CIFAR, SGD on ImageNet)
        lr: float = 1e-3,
        momentum: float = 0.9,  # SGD only
        steps: int = 1,  # gradient steps per batch
        episodic: bool = True,  # adapt each batch from the source model (see above)
        collapse_fraction: float = 0.95,
        min_batch: int = MIN_BATCH,
    ):
        check_model(model)
        if steps < 1:
            raise ValueError(f"tent needs steps >= 1 to adapt, got {steps}; use TTA method 'bn' for none")
        super().__init__(model)
        self.steps = steps
        self.episodic = episodic
        self.collapse_fraction = collapse_fraction
        self.min_batch = min_batch
        self.params, self.param_names = collect_params(model)
        if optimizer == "adam":
            self.optimizer = torch.optim.Adam(self.params, lr=lr, betas=(0.9, 0.999))
        elif optimizer == "sgd":
            self.optimizer = torch.optim.SGD(self.params, lr=lr, momentum=momentum)
        else:
            raise ValueError(f"unknown tent optimizer {optimizer!r}; valid names are: adam, sgd")
        self._optimizer_state = deepcopy(self.optimizer.state_dict())

    def reset(self) -> None:
        """Restore the wrapped model and forget the optimizer's moments."""
        super().reset()
        self.optimizer.load_state_dict(deepcopy(self._optimizer_state))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.batches_seen += 1
        if x.shape[0] < self.min_batch:
            self.fallback_batches += 1
            return self._source_logits(x)
        try:
            with flags_kept(self.model):
                configure_model(self.model)
                logits = self._adapt(x)
        finally:
            if self.episodic:
                # Resetting after (rather than before) each batch is equivalent for the
                # next batch and leaves the wrapped model untouched between calls.
                self.reset()
        self.adapted_batches += 1
        return logits

    def _adapt(self, x: torch.Tensor) -> torch.Tensor:
        """Entropy steps on ``x``; returns logits of the last kept parameters."""
        with torch.enable_grad():
            logits = self.model(x)
        was_collapsed = _collapsed(logits, self.collapse_fraction)
        for step in range(self.steps):
            params_before = [p.detach().clone() for p in self.params]
            optimizer_before = deepcopy(self.optimizer.state_dict())
            self.optimizer.zero_grad(set_to_none=True)
            softmax_entropy(logits).mean().backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            # The check forward doubles as the next step's forward; no graph after the last.
            with torch.set_grad_enabled(step < self.steps - 1):
                new_logits = self.model(x)
            if not was_collapsed and _collapsed(new_logits, self.collapse_fraction):
                with torch.no_grad():
                    for p, saved in zip(self.params, params_before):
                        p.copy_(saved)
                self.optimizer.load_state_dict(optimizer_before)
                self.collapse_events += 1
                break  # `logits` still holds the outputs of the restored parameters
            logits = new_logits
            self.adapted_steps += 1
        return logits.detach()
