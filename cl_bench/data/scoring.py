"""Zero-shot CLIP scoring: template-averaged text classifiers (task-incremental settings),
one-prompt-per-class classifiers (task-agnostic settings: `DatasetInfo.union_prompts`), image
features of a test set, and top-1 counts against a classifier's rows.

Pure functions of a model and a dataset, shared by the engine's evaluator
(`cl_bench.engine.evaluator`, which adds caching, precision and the task-agnostic label space
and re-exports them) and the toy world's pretraining record (`cl_bench.data.toy.pretrain`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.api.sampling import to_device
from cl_bench.data.world import DatasetInfo, ImageSet
from cl_bench.models.backbone import Backbone, as_clip

TEXT_CHUNK = 1024  # prompts per encode_text call
SCORE_CHUNK = 8192  # image features scored against a classifier at once (bounds logits memory)


def top1_accuracy(correct: int, total: int) -> float:
    """Top-1 accuracy in percent; NaN for an empty test set."""
    return 100.0 * correct / total if total else float("nan")


@torch.inference_mode()
def text_classifier(
    model: nn.Module,
    tokenize: Callable[[list[str]], torch.Tensor],
    info: DatasetInfo,
    device: torch.device,
) -> torch.Tensor:
    """[num_classes, D]: mean over templates of normalized text features, renormalized."""
    prompts = [t.format(c) for t in info.templates for c in info.classnames]
    tokens = tokenize(prompts).to(device)
    clip = as_clip(model)
    feats = torch.cat(
        [
            F.normalize(clip.encode_text(tokens[i : i + TEXT_CHUNK]).float(), dim=-1)
            for i in range(0, len(prompts), TEXT_CHUNK)
        ]
    )
    feats = feats.view(len(info.templates), info.num_classes, -1).mean(dim=0)
    return F.normalize(feats, dim=-1)


@torch.inference_mode()
def prompt_classifier(
    model: nn.Module,
    tokenize: Callable[[list[str]], torch.Tensor],
    prompts: list[str],
    device: torch.device,
) -> torch.Tensor:
    """[len(prompts), D]: the normalized text feature of each prompt (one prompt per class)."""
    tokens = tokenize(prompts).to(device)
    clip = as_clip(model)
    return torch.cat(
        [
            F.normalize(clip.encode_text(tokens[i : i + TEXT_CHUNK]).float(), dim=-1)
            for i in range(0, len(prompts), TEXT_CHUNK)
        ]
    )


def uint8_batches(
    images: np.ndarray, batch_size: int, device: torch.device
) -> Iterator[torch.Tensor]:
    """Consecutive uint8 NHWC batches on `device`; pinned + non-blocking copies on CUDA."""
    for start in range(0, len(images), batch_size):
        yield to_device(images[start : start + batch_size], device)


@torch.inference_mode()
def image_features(
    model: nn.Module,
    backbone: Backbone,
    images: ImageSet,
    batch_size: int,
    device: torch.device,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """[N, D] normalized fp32 image features of a test set, in order (no host syncs)."""
    clip = as_clip(model)
    parts = []
    for chunk in uint8_batches(images.images, batch_size, device):
        parts.append(F.normalize(clip.encode_image(backbone.normalize(chunk)).float(), dim=-1))
        if on_batch is not None:
            on_batch(chunk.shape[0])
    return torch.cat(parts) if parts else torch.empty(0, 0, device=device)


@torch.inference_mode()
def top1_correct(
    features: torch.Tensor, labels: np.ndarray, classifier: torch.Tensor, label_offset: int
) -> int:
    """How many rows of `features` score highest on the classifier row of their label."""
    return top1_counts(features, labels, classifier, label_offset)[0]


class Top1Tally:
    """Top-1 correct and predictions per block, accumulated on the device batch by batch
    (one host sync, in `result`). Block k holds label-space rows block_starts[k] ..
    block_starts[k + 1] - 1 (the union classifier's domains); no blocks, no per-block counts."""

    def __init__(
        self,
        labels: np.ndarray,
        label_offset: int,
        block_starts: np.ndarray | None,
        device: torch.device,
    ) -> None:
        self.target = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
        self.label_offset = label_offset
        self.starts = None if block_starts is None else torch.as_tensor(block_starts, device=device)
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        blocks = 0 if self.starts is None else len(self.starts)
        self.per_block = torch.zeros(blocks, dtype=torch.long, device=device)

    def add(self, pred: torch.Tensor, start: int) -> None:
        """Predictions (label-space indices) of the images start .. start + len(pred) - 1."""
        target = self.target[start : start + pred.shape[0]]
        self.correct += pred.eq(target + self.label_offset).sum()
        if self.starts is not None:
            block = torch.bucketize(pred, self.starts, right=True) - 1
            self.per_block += torch.bincount(block, minlength=len(self.starts))

    def result(self) -> tuple[int, tuple[int, ...]]:
        return int(self.correct), tuple(int(c) for c in self.per_block.tolist())


@torch.inference_mode()
def top1_counts(
    features: torch.Tensor,
    labels: np.ndarray,
    classifier: torch.Tensor,
    label_offset: int,
    block_starts: np.ndarray | None = None,
) -> tuple[int, tuple[int, ...]]:
    """(top-1 correct, predictions per block) of `features` against the rows of `classifier`."""
    tally = Top1Tally(labels, label_offset, block_starts, features.device)
    for start in range(0, features.shape[0], SCORE_CHUNK):
        tally.add((features[start : start + SCORE_CHUNK] @ classifier.T).argmax(dim=1), start)
    return tally.result()  # the one host sync per dataset
