"""Where a trained dressed head's decision lives in its slot inputs: the exact logit difference it ranks by, and the
directions of the inputs that difference varies along (active subspaces). Diagnostics for the noise-readout stages
under results/quantum_heads/noise_readout/."""

from __future__ import annotations

import torch

from hybrid.studies.readout_refit import Head, Programs, exact_logits


def logit_difference(head: Head, z: torch.Tensor, programs: Programs, positive_class: int) -> torch.Tensor:
    """The head's exact positive-minus-negative class logit for slot inputs z: what its decision ranks by."""
    logits = exact_logits(head, z, programs)
    return logits[:, positive_class] - logits[:, 1 - positive_class]


def active_subspace(head: Head, z: torch.Tensor, programs: Programs, positive_class: int, rank: int):
    """(mean, W, eigenvalues): the mean of inputs z, the top `rank` eigenvectors of C = mean ∇g ∇gᵀ over z (the
    directions the head's logit difference g varies along), and all of C's eigenvalues, largest first."""
    z = z.detach().double().clone().requires_grad_(True)
    # rows are independent, so the gradient of the sum is every row's own gradient
    logit_difference(head, z, programs, positive_class).sum().backward()
    eigenvalues, eigenvectors = torch.linalg.eigh(z.grad.T @ z.grad / len(z))
    return z.detach().mean(0), eigenvectors.flip(1)[:, :rank].contiguous(), eigenvalues.flip(0)
