"""The CLIP contrastive task loss shared by every learner (PROTOCOL.md §2, 'Logits')."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.api.collectives import gather_batch


def clip_features(
    model: nn.Module, images: torch.Tensor, text_tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized image [B, D] and text [C, D] features."""
    image_features = F.normalize(model.encode_image(images), dim=-1)
    text_features = F.normalize(model.encode_text(text_tokens), dim=-1)
    return image_features, text_features


def clip_logits(model: nn.Module, images: torch.Tensor, text_tokens: torch.Tensor) -> torch.Tensor:
    """logit_scale.exp() * normalize(img) @ normalize(txt).T with the model's own scale: [B, C]."""
    image_features, text_features = clip_features(model, images, text_tokens)
    return model.logit_scale.exp() * image_features @ text_features.T


def contrastive_loss(
    logits_per_image: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """image->text CE over the task's prompts + text->image CE.

    text->image: each image's class prompt is scored against all images of the batch; where a
    class occurs several times, the target is spread uniformly over that class's images.
    Under torchrun the rows are this rank's shard of the batch: the loss is computed on the
    whole batch gathered from every rank (`gather_batch`), so it equals one process's loss.
    """
    logits_per_image, labels = gather_batch(logits_per_image, labels)
    loss_i2t = F.cross_entropy(logits_per_image, labels, label_smoothing=label_smoothing)
    logits_per_text = logits_per_image.T[labels]  # [B, B]: prompt of image i vs every image j
    same_class = (labels[:, None] == labels[None, :]).float()
    targets = same_class / same_class.sum(dim=1, keepdim=True)
    loss_t2i = torch.sum(-targets * F.log_softmax(logits_per_text, dim=1), dim=1).mean()
    return loss_i2t + loss_t2i
