"""ReSoRA's subspace-redundancy terms for LoRA-family adapters (a plug-in regulariser).

Paper: "Regularizing Subspace Redundancy of Low-Rank Adaptation" (ReSoRA; Zhu, Diao et al.,
ACM MM 2025, arXiv 2507.20745). The paper names a code repository, but no code was public
when this was written, so **every formula below is a reconstruction** from the paper's
abstract and PROTOCOL.md §4; each choice is labelled "reconstructed".

A LoRA edit ΔW = B A = Σ_i b_i a_iᵀ is a sum of r rank-one subspaces. ReSoRA penalises
redundancy between them: on the r rows a_i of A (directions in input space) and, separately,
on the r columns b_i of B (directions in output space). Each form below maps a set of r
vectors [r, d] to a redundancy in [0, 1] that is exactly 0 when the vectors are mutually
orthogonal and grows as they overlap:

- ``pairwise_cosine``     mean over pairs i ≠ j of cos²(v_i, v_j).
- ``pairwise_euclidean``  mean over pairs of 1 − d_ij² / 2, d_ij the Euclidean distance
  between the unit directions folded over the sign, min(‖u_i − u_j‖, ‖u_i + u_j‖)
  (a rank-one subspace is a line, so u and −u are the same subspace). Since
  d² = 2 − 2|cos|, this is mean |cos|: an L1 penalty on overlap where the cosine form is L2.
- ``linear`` (default, set-to-set)  mean over i of R_i², the squared norm of the projection
  of u_i onto the span of the *set* of the other r − 1 directions (a linear least-squares
  fit, ridge `RIDGE`). It also sees redundancy that no pair shows: u_3 = (u_1 + u_2)/√2 with
  u_1 ⟂ u_2 has cos² = 0.5 with each, but R_3² = 1.
- ``kernel`` (CKA-like)  1 − the kernel alignment between the set's Gram matrix K and the
  identity (the Gram matrix of a non-redundant set), rescaled to [0, 1]. K_ij is an RBF
  kernel exp(−γ d_ij²) on the sign-folded distance, shifted and scaled so that orthogonal
  directions give 0 and identical ones 1; alignment = ⟨K, I⟩ / (‖K‖ ‖I‖) = √r / ‖K‖_F
  (the uncentred core of CKA; centring would make an all-redundant set 0/0).

Reconstructed choices (not from the paper):
- The terms act on the adapter's weights (rows of A, columns of B). The paper's abstract
  speaks of constraints on "the feature distributions across different projections", i.e.
  possibly on projected activations; weights need no extra forward hooks and follow
  PROTOCOL.md §4 ("between rows of A / columns of B").
- Directions are normalised (scale-free terms); a zero vector (B's columns at init) spans
  no subspace and counts as orthogonal to everything, so B = 0 gives 0.
- A block's redundancy is the mean of its A-term and its B-term; the penalty is the mean
  over all blocks of the adapter, times `weight` (default 1.0 in the learners: the term is
  bounded in [0, 1], comparable to one unit of the task loss).
- drslora's importance w and gated_lora's gate are ignored: the term sees A and B only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal

import torch
import torch.nn.functional as F

from cl_bench.errors import UserError

RedundancyForm = Literal["none", "linear", "pairwise_euclidean", "pairwise_cosine", "kernel"]
FORMS: tuple[str, ...] = ("linear", "pairwise_euclidean", "pairwise_cosine", "kernel")
RIDGE = 1e-3  # ridge of the set-to-set least-squares fit (keeps near-collinear sets finite)
NORM_EPS = 1e-8


def _cosines(vectors: torch.Tensor) -> torch.Tensor:
    """[r, r] cosines between the rows, unit diagonal; a zero row has cosine 0 with the others."""
    unit = F.normalize(vectors.float(), dim=1, eps=NORM_EPS)
    gram = unit @ unit.T
    eye = torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype)
    return gram * (1.0 - eye) + eye


def _off_diagonal_mean(matrix: torch.Tensor) -> torch.Tensor:
    r = matrix.shape[0]
    off = matrix - torch.diag_embed(torch.diagonal(matrix))
    return off.sum() / (r * (r - 1))


def pairwise_cosine(vectors: torch.Tensor) -> torch.Tensor:
    """Mean over pairs i ≠ j of cos²(v_i, v_j) of the rows of `vectors` [r, d]."""
    if vectors.shape[0] < 2:
        return vectors.sum() * 0.0
    return _off_diagonal_mean(_cosines(vectors) ** 2)


def folded_squared_distance(cosines: torch.Tensor) -> torch.Tensor:
    """min(‖u_i − u_j‖², ‖u_i + u_j‖²) = 2 − 2|cos| for unit directions."""
    return 2.0 - 2.0 * cosines.abs()


def pairwise_euclidean(vectors: torch.Tensor) -> torch.Tensor:
    """Mean over pairs of 1 − d_ij²/2, d_ij the sign-folded distance of unit directions."""
    if vectors.shape[0] < 2:
        return vectors.sum() * 0.0
    return _off_diagonal_mean(1.0 - folded_squared_distance(_cosines(vectors)) / 2.0)


def linear_set_to_set(vectors: torch.Tensor, ridge: float = RIDGE) -> torch.Tensor:
    """Mean over i of R_i²: u_i regressed (ridge) on the span of the other directions."""
    r = vectors.shape[0]
    if r < 2:
        return vectors.sum() * 0.0
    gram = _cosines(vectors)
    others = torch.tensor(
        [[j for j in range(r) if j != i] for i in range(r)], device=gram.device
    )  # [r, r-1]
    rows = torch.arange(r, device=gram.device)
    gram_others = gram[others[:, :, None], others[:, None, :]]  # [r, r-1, r-1]
    cross = gram[rows[:, None], others]  # [r, r-1]: u_i · u_j for j ≠ i
    eye = torch.eye(r - 1, device=gram.device, dtype=gram.dtype)
    coef = torch.linalg.solve(gram_others + ridge * eye, cross.unsqueeze(-1)).squeeze(-1)
    return (cross * coef).sum(dim=1).mean()


def kernel_alignment(vectors: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """1 − alignment(K, I), rescaled to [0, 1]; K the shifted RBF Gram matrix of the set."""
    r = vectors.shape[0]
    if r < 2:
        return vectors.sum() * 0.0
    if gamma <= 0:
        raise UserError(f"--set redundancy_kernel_gamma={gamma}: must be > 0")
    orthogonal = math.exp(-2.0 * gamma)
    rbf = torch.exp(-gamma * folded_squared_distance(_cosines(vectors)))
    kernel = (rbf - orthogonal) / (1.0 - orthogonal)  # 0 for orthogonal, 1 for identical
    alignment = (r**0.5) / torch.linalg.matrix_norm(kernel)  # ⟨K, I⟩ / (‖K‖ ‖I‖)
    return (1.0 - alignment) / (1.0 - r**-0.5)


def set_redundancy(vectors: torch.Tensor, form: str, kernel_gamma: float = 1.0) -> torch.Tensor:
    """The redundancy of the rows of `vectors` [r, d] under `form` (a 0-dim tensor in [0, 1])."""
    if form == "linear":
        return linear_set_to_set(vectors)
    if form == "pairwise_cosine":
        return pairwise_cosine(vectors)
    if form == "pairwise_euclidean":
        return pairwise_euclidean(vectors)
    if form == "kernel":
        return kernel_alignment(vectors, kernel_gamma)
    raise UserError(f"unknown redundancy form {form!r}; valid: none, {', '.join(FORMS)}")


def block_redundancy(
    lora_A: torch.Tensor, lora_B: torch.Tensor, form: str, kernel_gamma: float = 1.0
) -> torch.Tensor:
    """Mean of the redundancy of A's rows [r, d_in] and of B's columns [d_out, r]."""
    return 0.5 * (
        set_redundancy(lora_A, form, kernel_gamma) + set_redundancy(lora_B.T, form, kernel_gamma)
    )


def redundancy_penalty(
    blocks: Iterable[torch.nn.Module], form: str, kernel_gamma: float = 1.0
) -> torch.Tensor:
    """Mean block redundancy over LoRA blocks (anything with `lora_A` [r, d_in], `lora_B` [d_out, r])."""
    typed: Iterable[Any] = blocks  # lora_A / lora_B are attributes nn.Module cannot type
    values = [block_redundancy(b.lora_A, b.lora_B, form, kernel_gamma) for b in typed]
    if not values:
        raise UserError("the redundancy regulariser found no LoRA blocks; attach an adapter first")
    return torch.stack(values).mean()


def redundancy_loss(
    blocks: Iterable[torch.nn.Module], form: str, weight: float, kernel_gamma: float = 1.0
) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """(weight · penalty, {"redundancy": penalty}) to add to the task loss; (None, {}) when off."""
    if form == "none":
        return None, {}
    if weight < 0:
        raise UserError(f"--set redundancy_weight={weight}: must be >= 0")
    penalty = redundancy_penalty(blocks, form, kernel_gamma)
    return weight * penalty, {"redundancy": penalty.detach()}
