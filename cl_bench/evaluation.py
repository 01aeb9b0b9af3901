"""Zero-shot style evaluation: template-averaged text classifiers and top-1 accuracy.

Each dataset's text classifier is computed once per evaluation (never per batch); for a
task-agnostic setting (X-TAIL) the stream datasets share one classifier, the union of all
stream domains' class prompts, and a dataset's labels are offset to its block.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.data.world import DatasetInfo, ImageSet
from cl_bench.models.backbone import Backbone

TEXT_CHUNK = 1024


@dataclass(frozen=True)
class EvalResult:
    dataset: str
    split: str  # "stream" | "holdout"
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return 100.0 * self.correct / self.total if self.total else float("nan")


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
    feats = torch.cat(
        [
            F.normalize(model.encode_text(tokens[i : i + TEXT_CHUNK]).float(), dim=-1)
            for i in range(0, len(prompts), TEXT_CHUNK)
        ]
    )
    feats = feats.view(len(info.templates), info.num_classes, -1).mean(dim=0)
    return F.normalize(feats, dim=-1)


@torch.inference_mode()
def count_correct(
    model: nn.Module,
    backbone: Backbone,
    images: ImageSet,
    classifier: torch.Tensor,
    label_offset: int,
    batch_size: int,
    device: torch.device,
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Top-1 correct predictions of `images` against the rows of `classifier`."""
    correct = 0
    for start in range(0, len(images), batch_size):
        chunk = torch.from_numpy(
            np.ascontiguousarray(images.images[start : start + batch_size])
        ).to(device)
        labels = (
            torch.from_numpy(np.asarray(images.labels[start : start + batch_size])).to(device)
            + label_offset
        )
        feats = F.normalize(model.encode_image(backbone.normalize(chunk)).float(), dim=-1)
        correct += int((feats @ classifier.T).argmax(dim=1).eq(labels).sum())
        if on_batch is not None:
            on_batch(chunk.shape[0])
    return correct


def evaluate_all(
    model: nn.Module,
    backbone: Backbone,
    infos: dict[str, DatasetInfo],
    test_sets: dict[str, ImageSet],
    stream: tuple[str, ...],
    holdout: tuple[str, ...],
    task_agnostic: bool,
    batch_size: int,
    device: torch.device,
    on_batch: Callable[[int], None] | None = None,
) -> list[EvalResult]:
    """Accuracy of `model` on every stream dataset and every hold-out dataset."""
    was_training = model.training
    model.eval()
    try:
        classifiers = {
            name: text_classifier(model, backbone.tokenizer, infos[name], device)
            for name in dict.fromkeys(stream + holdout)
        }
        results = []
        if task_agnostic:
            union = torch.cat([classifiers[n] for n in stream])
            offsets = np.cumsum([0] + [infos[n].num_classes for n in stream])[:-1]
            for name, offset in zip(stream, offsets, strict=True):
                c = count_correct(
                    model,
                    backbone,
                    test_sets[name],
                    union,
                    int(offset),
                    batch_size,
                    device,
                    on_batch,
                )
                results.append(EvalResult(name, "stream", c, len(test_sets[name])))
        else:
            for name in stream:
                c = count_correct(
                    model,
                    backbone,
                    test_sets[name],
                    classifiers[name],
                    0,
                    batch_size,
                    device,
                    on_batch,
                )
                results.append(EvalResult(name, "stream", c, len(test_sets[name])))
        for name in holdout:
            c = count_correct(
                model, backbone, test_sets[name], classifiers[name], 0, batch_size, device, on_batch
            )
            results.append(EvalResult(name, "holdout", c, len(test_sets[name])))
        return results
    finally:
        model.train(was_training)
