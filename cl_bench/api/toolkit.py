"""Pieces learners share, public for plug-ins: the CLIP task loss and logits, frozen copies,
weight-space operations and distillation losses.

The weight-space and distillation helpers mirror the ZSCL reference code (Thunderbeee/ZSCL,
``mtil/src/models/helpers.py``): ``distillation`` -> `soft_cross_entropy`, ``merge_we`` ->
`running_average_`, ``l2_loss`` -> `squared_distance`, the ``wise_merge`` loop ->
`interpolate_`. They operate on ``named_parameters`` (buffers such as the causal attention
mask are never trained, so they are left alone) and match parameters by name, so a model
and its copies must share an architecture. The task loss is PROTOCOL.md §2's ('Logits').
"""

from __future__ import annotations

import copy
import hashlib

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.api.collectives import gather_batch
from cl_bench.models.backbone import as_clip

# -- the CLIP task loss -------------------------------------------------------------------


def clip_features(
    model: nn.Module, images: torch.Tensor, text_tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized image [B, D] and text [C, D] features."""
    clip = as_clip(model)
    image_features = F.normalize(clip.encode_image(images), dim=-1)
    text_features = F.normalize(clip.encode_text(text_tokens), dim=-1)
    return image_features, text_features


def clip_logits(model: nn.Module, images: torch.Tensor, text_tokens: torch.Tensor) -> torch.Tensor:
    """logit_scale.exp() * normalize(img) @ normalize(txt).T with the model's own scale: [B, C]."""
    image_features, text_features = clip_features(model, images, text_tokens)
    return as_clip(model).logit_scale.exp() * image_features @ text_features.T


def contrastive_loss(
    logits_per_image: torch.Tensor,
    labels: torch.Tensor,
    label_smoothing: float = 0.0,
    text_rows: int | None = None,
) -> torch.Tensor:
    """image->text CE over the task's prompts + text->image CE.

    text->image scores a class prompt against every image of the batch; the sum over the
    batch's classes c and their images j of -log softmax_j(prompt c) is the same in both
    forms, only its denominator differs:
    - `text_rows=None` (PROTOCOL.md §2): one row per image (its class prompt), the target
      spread uniformly over that class's images, mean over the B rows;
    - `text_rows=P` (CoDyRA's ``models/codyra.py`` `train_model`:
      ``F.cross_entropy(logit_scale * embeddings @ out.T, mask)``): one row per prompt of
      every class seen so far plus the task's, P rows, the unnormalised 0/1 mask as target
      (rows of prompts absent from the batch have all-zero targets), mean over the P rows.
    Under torchrun the rows are this rank's shard of the batch: the loss is computed on the
    whole batch gathered from every rank (`gather_batch`), so it equals one process's loss.
    """
    logits_per_image, labels = gather_batch(logits_per_image, labels)
    loss_i2t = F.cross_entropy(logits_per_image, labels, label_smoothing=label_smoothing)
    logits_per_text = logits_per_image.T[labels]  # [B, B]: prompt of image i vs every image j
    same_class = (labels[:, None] == labels[None, :]).float()
    targets = same_class / same_class.sum(dim=1, keepdim=True)
    per_row = torch.sum(-targets * F.log_softmax(logits_per_text, dim=1), dim=1)
    if text_rows is None:
        loss_t2i = per_row.mean()
    else:
        if text_rows < logits_per_image.shape[1]:
            raise ValueError(
                f"text_rows={text_rows} is fewer than the task's {logits_per_image.shape[1]} prompts"
            )
        loss_t2i = per_row.sum() / text_rows
    return loss_i2t + loss_t2i


# -- copies and weight-space operations ---------------------------------------------------


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


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over parameter names and values: identifies a set of weights (e.g. zero-shot)."""
    h = hashlib.sha256()
    for name, param in model.named_parameters():
        h.update(name.encode())
        h.update(param.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
