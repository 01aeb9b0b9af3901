"""Weight-space and distillation helpers shared by the distillation/merging baselines.

Each function mirrors one helper of the ZSCL reference code (Thunderbeee/ZSCL,
``mtil/src/models/helpers.py``): ``distillation`` -> `soft_cross_entropy`, ``merge_we`` ->
`running_average_`, ``l2_loss`` -> `squared_distance`, the ``wise_merge`` loop ->
`interpolate_`. They operate on ``named_parameters`` (buffers such as the causal attention
mask are never trained, so they are left alone) and match parameters by name, so a model
and its copies must share an architecture.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy with gradients off and in eval mode: a teacher or an anchor.

    Costs one extra set of model weights in memory (ViT-B/16: ~150 M parameters, ~0.6 GB
    in fp32; the toy CLIP: ~7.8 M, ~31 MB).
    """
    twin = copy.deepcopy(model)
    twin.requires_grad_(False)
    twin.eval()
    return twin


def soft_cross_entropy(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Distillation with temperature T, mean over rows, scaled by T² (ZSCL's ``distillation``).

    Computed as KL(softmax(teacher / T) ‖ softmax(student / T)) · T²: the reference code's
    soft cross-entropy CE(student / T, softmax(teacher / T)) · T² minus the teacher's own
    entropy, a constant. Same gradient, but 0 exactly when the student matches the teacher,
    so a logged value of 0 means "no drift". The teacher side is detached.
    """
    log_targets = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    return (
        F.kl_div(log_student, log_targets, reduction="batchmean", log_target=True) * temperature**2
    )


def clip_distillation(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(image→text, text→image) distillation of [N_img, N_txt] logits; the second is on the transpose."""
    image_to_text = soft_cross_entropy(teacher_logits, student_logits, temperature)
    text_to_image = soft_cross_entropy(teacher_logits.T, student_logits.T, temperature)
    return image_to_text, text_to_image


def squared_distance(model: nn.Module, anchor: nn.Module) -> torch.Tensor:
    """Σ over parameters of ‖θ − θ_anchor‖², differentiable in `model` (ZSCL's ``l2_loss``)."""
    anchor_params = dict(anchor.named_parameters())
    total = torch.zeros((), device=next(model.parameters()).device)
    for name, param in model.named_parameters():
        ref = anchor_params[name].detach()
        total = total + torch.sum((param - ref.to(param.device)) ** 2)
    return total


@torch.no_grad()
def running_average_(average: nn.Module, model: nn.Module, count: int) -> None:
    """average ← (average · count + model) / (count + 1), in place (ZSCL's ``merge_we``).

    With `average` initialised to the task-start weights and `count` = 1, 2, ... on
    successive calls, `average` is the plain mean of the task-start weights and every
    merged snapshot.
    """
    if count < 1:
        raise ValueError(
            f"running-average count must be >= 1 (the average already holds one model), got {count}"
        )
    params = dict(model.named_parameters())
    for name, avg in average.named_parameters():
        avg.mul_(count).add_(params[name].detach()).div_(count + 1)


@torch.no_grad()
def interpolate_(model: nn.Module, previous: nn.Module, alpha: float) -> None:
    """θ ← α · θ + (1 − α) · θ_previous in place (WiSE-FT, weight α toward the new weights)."""
    prev = dict(previous.named_parameters())
    for name, param in model.named_parameters():
        param.mul_(alpha).add_(prev[name].detach().to(param.device), alpha=1.0 - alpha)


@torch.no_grad()
def copy_weights_(target: nn.Module, source: nn.Module) -> None:
    """Overwrite `target`'s parameters with `source`'s (same architecture), keeping autograd leaves."""
    src = dict(source.named_parameters())
    for name, param in target.named_parameters():
        param.copy_(src[name].detach())
