"""Zero-shot style evaluation: text classifiers and top-1 accuracy.

Within one evaluation each dataset's text classifier is computed once and each test image is
encoded once. Task-incremental settings (MTIL) average each dataset's templates. In a
task-agnostic setting (X-TAIL) the stream datasets share one classifier, the union of all
stream domains' class prompts, one prompt per class in the setting's `union_classifier`
convention (CoDyRA: each dataset's templates[0]; RAIL: 'a photo of a {}.'), and a dataset's
labels are offset to its block; hold-out datasets keep their own label space, built the same way.

Across evaluations (one per task) an `EvalCache` reuses a dataset's text classifier while
every tensor the text encoder reads is bit-identical to the moment it was computed, and a
dataset's image features while the vision encoder's tensors are (`TowerSnapshot`). The check
compares a saved copy, so it is exact and never stale: vision-only learners never re-encode
prompts, `zeroshot` re-encodes nothing after row 0, and learners that change both towers
(drslora, finetune) pay only the snapshot copy (one pass over the weights per evaluation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from itertools import chain
from typing import Any

import numpy as np
import torch
from torch import nn

from cl_bench.api.learner import LabelSpace, Learner
from cl_bench.data.scoring import (
    Top1Tally,
    image_features,
    prompt_classifier,
    text_classifier,
    top1_accuracy,
    top1_correct,
    top1_counts,
    uint8_batches,
)
from cl_bench.data.world import DatasetInfo, ImageSet
from cl_bench.engine.distributed import Distributed
from cl_bench.engine.precision import autocast
from cl_bench.engine.progress import NullReporter, Reporter
from cl_bench.engine.settings import Setting
from cl_bench.errors import UserError
from cl_bench.models.backbone import Backbone

_PRIMITIVES = (bool, int, float, str, type(None))


@dataclass(frozen=True)
class EvalResult:
    dataset: str
    split: str  # "stream" | "holdout"
    correct: int
    total: int
    # Task-agnostic stream datasets only: how many of the test images were predicted into each
    # stream domain's block of the union classifier (stream order). Where the errors go:
    # another domain's classes, or the right domain's wrong class.
    predicted_domains: tuple[int, ...] = ()

    @property
    def accuracy(self) -> float:
        return top1_accuracy(self.correct, self.total)


# ---------------------------------------------------------------------------------------
# Exact change detection for one encoder
# ---------------------------------------------------------------------------------------


def _in_tower(name: str, tower: str, is_clip: bool) -> bool:
    """Does the parameter/module `name` feed `tower` ("text" | "vision")?

    open_clip CLIPs: encode_image reads only `visual`; encode_text reads everything else but
    the logit scale/bias. Any other module: everything (safe: a change anywhere invalidates).
    """
    if not is_clip:
        return True
    in_visual = name == "visual" or name.startswith("visual.")
    if tower == "vision":
        return in_visual or name == ""
    return not in_visual and name not in ("logit_scale", "logit_bias")


def _plain_attrs(module: nn.Module) -> tuple:
    """A module's plain-value attributes (flags, thresholds, pool types) and hook ids."""
    attrs = []
    for key, value in vars(module).items():
        if isinstance(value, _PRIMITIVES) or (
            isinstance(value, tuple) and all(isinstance(v, _PRIMITIVES) for v in value)
        ):
            attrs.append((key, value))
    hooks = (tuple(module._forward_hooks), tuple(module._forward_pre_hooks))
    return tuple(sorted(attrs, key=lambda kv: kv[0])), hooks


def _tower_state(model: nn.Module, tower: str) -> tuple[tuple, list[torch.Tensor]]:
    """(structure key, tensors) of everything `tower`'s encoder reads."""
    is_clip = isinstance(getattr(model, "visual", None), nn.Module)
    named = chain(
        model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False)
    )
    tensors = [(n, t) for n, t in named if _in_tower(n, tower, is_clip)]
    modules = tuple(
        (n, type(m).__qualname__, _plain_attrs(m))
        for n, m in model.named_modules(remove_duplicate=False)
        if _in_tower(n, tower, is_clip)
    )
    key = (
        modules,
        tuple((n, tuple(t.shape), t.dtype, t.device, t.layout) for n, t in tensors),
    )
    return key, [t.detach() for _, t in tensors]


class TowerSnapshot:
    """A copy of what one encoder reads; `matches(model)` is True only if all of it is equal.

    Memory: one copy of the encoder's weights on their device (toy text tower ~28 MB,
    ViT-B/16's ~250 MB). Equal structure + bit-equal tensors => identical encoder outputs.
    """

    def __init__(self, model: nn.Module, tower: str) -> None:
        self.tower = tower
        with torch.no_grad():
            self.key, tensors = _tower_state(model, tower)
            self.tensors = [t.clone() for t in tensors]

    def matches(self, model: nn.Module) -> bool:
        key, tensors = _tower_state(model, self.tower)
        if key != self.key:
            return False
        return all(torch.equal(a, b) for a, b in zip(tensors, self.tensors, strict=True))


# ---------------------------------------------------------------------------------------
# Counting (text classifiers, image features and top-1 counts: cl_bench.data.scoring)
# ---------------------------------------------------------------------------------------


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
    feats = image_features(model, backbone, images, batch_size, device, on_batch)
    return top1_correct(feats, images.labels, classifier, label_offset)


@torch.inference_mode()
def custom_counts(
    logits_fn: Callable[[torch.Tensor, LabelSpace], torch.Tensor],
    space: LabelSpace,
    backbone: Backbone,
    images: ImageSet,
    batch_size: int,
    device: torch.device,
    precision: str,
    block_starts: np.ndarray | None,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[int, tuple[int, ...]]:
    """(top-1 correct, predictions per block) with a learner's own logits for every batch."""
    tally = Top1Tally(images.labels, space.label_offset, block_starts, device)
    done = 0
    for chunk in uint8_batches(images.images, batch_size, device):
        with autocast(device, precision):
            logits = logits_fn(backbone.normalize(chunk), space)
        if logits.shape != (chunk.shape[0], space.num_classes):
            raise UserError(
                f"eval_logits returned shape {tuple(logits.shape)} for {space.dataset}; expected "
                f"[{chunk.shape[0]}, {space.num_classes}] (batch, classes of the label space)"
            )
        tally.add(logits.argmax(dim=1), done)
        done += chunk.shape[0]
        if on_batch is not None:
            on_batch(chunk.shape[0])
    return tally.result()


@dataclass
class EvalCache:
    """Text classifiers and image features kept across evaluations while exactly valid.

    `enabled=False` recomputes everything each evaluation (still once per dataset).
    Counters let tests guard the caching without timing anything.
    """

    enabled: bool = True
    text_hits: int = 0
    text_misses: int = 0
    image_hits: int = 0
    image_misses: int = 0
    _snapshots: dict[str, TowerSnapshot] = field(default_factory=dict)
    _text: dict[tuple, torch.Tensor] = field(default_factory=dict)
    _images: dict[tuple, torch.Tensor] = field(default_factory=dict)

    def _still_valid(self, model: nn.Module, tower: str) -> bool:
        """True when `tower` is unchanged since the last call; else re-snapshot and drop."""
        snap = self._snapshots.get(tower)
        if snap is not None and snap.matches(model):
            return True
        (self._text if tower == "text" else self._images).clear()
        self._snapshots.pop(tower, None)  # free the old copy before taking the new one
        self._snapshots[tower] = TowerSnapshot(model, tower)
        return False

    def begin(self, model: nn.Module) -> None:
        """Called once per evaluation, before any lookup: validate both towers."""
        if not self.enabled:
            self._text.clear()
            self._images.clear()
            return
        self._still_valid(model, "text")
        self._still_valid(model, "vision")

    def text(self, key: tuple, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        if key in self._text:
            self.text_hits += 1
        else:
            self.text_misses += 1
            self._text[key] = compute()
        return self._text[key]

    def image(self, key: tuple, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        if key in self._images:
            self.image_hits += 1
        else:
            self.image_misses += 1
            self._images[key] = compute()
        return self._images[key]

    def stats(self) -> dict[str, Any]:
        return {
            "text_hits": self.text_hits,
            "text_misses": self.text_misses,
            "image_hits": self.image_hits,
            "image_misses": self.image_misses,
        }


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
    cache: EvalCache | None = None,
    precision: str = "fp32",
    custom_logits: Callable[[torch.Tensor, LabelSpace], torch.Tensor] | None = None,
    union_classifier: str | None = None,
) -> list[EvalResult]:
    """Accuracy of `model` on every stream dataset and every hold-out dataset.

    `cache` (the engine keeps one per run) carries results across evaluations; None
    computes everything once for this evaluation. `custom_logits` (a learner's
    `eval_logits`) scores the images instead of the CLIP classifier; its image scores are
    never cached (they depend on the learner's state, not only on the vision tower).
    `union_classifier` (task-agnostic settings: "codyra" | "rail") builds every classifier from
    one prompt per class (`DatasetInfo.union_prompts`); None averages each dataset's templates.
    """
    cache = cache if cache is not None else EvalCache(enabled=False)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), autocast(device, precision):
            cache.begin(model)
            names = tuple(dict.fromkeys(stream + holdout))
            classifiers = {
                n: _classifier(
                    model, backbone, infos[n], device, cache, precision, union_classifier
                )
                for n in names
            }
            feats = {}
            for n in names if custom_logits is None else ():
                key = (n, test_sets[n].ids_hash, len(test_sets[n]), batch_size, precision)
                before = cache.image_hits
                feats[n] = cache.image(
                    key,
                    partial(
                        image_features, model, backbone, test_sets[n], batch_size, device, on_batch
                    ),
                )
                if cache.image_hits > before and on_batch is not None:
                    on_batch(len(test_sets[n]))
        results = []
        if task_agnostic:
            union = torch.cat([classifiers[n] for n in stream])
            offsets = np.cumsum([0] + [infos[n].num_classes for n in stream])[:-1]
            scored = [(n, union, int(o)) for n, o in zip(stream, offsets, strict=True)]
        else:
            scored = [(n, classifiers[n], 0) for n in stream]
        blocks = offsets if task_agnostic else None
        if custom_logits is not None:
            domains = tuple(stream) if task_agnostic else ()
            starts = tuple(int(o) for o in offsets) if task_agnostic else ()
            jobs = [(n, "stream", clf, off, blocks, domains, starts) for n, clf, off in scored]
            jobs += [(n, "holdout", classifiers[n], 0, None, (), ()) for n in holdout]
            for name, split, classifier, offset, block_starts, doms, dstarts in jobs:
                names_in_space = (
                    tuple(c for d in stream for c in infos[d].classnames)
                    if block_starts is not None
                    else infos[name].classnames
                )
                space = LabelSpace(
                    name, names_in_space, classifier, doms, dstarts, offset,
                    _prompts(infos, stream if block_starts is not None else (name,), union_classifier),
                )  # fmt: skip
                c, counts = custom_counts(
                    custom_logits, space, backbone, test_sets[name], batch_size, device,
                    precision, block_starts, on_batch,
                )  # fmt: skip
                results.append(EvalResult(name, split, c, len(test_sets[name]), counts))
            return results
        for name, classifier, offset in scored:
            c, predicted = top1_counts(
                feats[name], test_sets[name].labels, classifier, offset, blocks
            )
            results.append(EvalResult(name, "stream", c, len(test_sets[name]), predicted))
        for name in holdout:
            c = top1_correct(feats[name], test_sets[name].labels, classifiers[name], 0)
            results.append(EvalResult(name, "holdout", c, len(test_sets[name])))
        return results
    finally:
        model.train(was_training)


def _prompts(
    infos: dict[str, DatasetInfo], datasets: tuple[str, ...], union_classifier: str | None
) -> tuple[tuple[str, ...], ...]:
    """Per class of `datasets` (concatenated), the prompts `_classifier` averages for it."""
    if union_classifier is not None:
        return tuple((p,) for d in datasets for p in infos[d].union_prompts(union_classifier))
    return tuple(
        tuple(t.format(c) for t in infos[d].templates)
        for d in datasets
        for c in infos[d].classnames
    )


def _classifier(
    model: nn.Module,
    backbone: Backbone,
    info: DatasetInfo,
    device: torch.device,
    cache: EvalCache,
    precision: str,
    union_classifier: str | None,
) -> torch.Tensor:
    """A dataset's text classifier: template-averaged, or one prompt per class (task-agnostic)."""
    if union_classifier is None:
        key: tuple = (info.name, info.classnames, info.templates, precision)
        return cache.text(key, partial(text_classifier, model, backbone.tokenizer, info, device))
    prompts = info.union_prompts(union_classifier)
    key = (info.name, "prompts", tuple(prompts), precision)
    return cache.text(key, partial(prompt_classifier, model, backbone.tokenizer, prompts, device))


def subsample(images: ImageSet, limit: int | None, seed: int) -> ImageSet:
    """A fixed random subset of at most `limit` images (same for every run with this seed)."""
    if limit is None or limit >= len(images):
        return images
    idx = np.sort(np.random.default_rng(seed).permutation(len(images))[:limit])
    return ImageSet(images.images[idx], images.labels[idx], f"{images.ids_hash}-first{limit}")


class Evaluator:
    """Scores a learner on every test set of the run: this rank's share, counts summed.

    The text classifiers and image features live in one `EvalCache` across the run's
    evaluations (exact: see evaluator.py); a learner with its own `eval_logits` scores the
    images itself and its image scores are never cached.
    """

    def __init__(
        self,
        setting: Setting,
        backbone: Backbone,
        infos: dict[str, DatasetInfo],
        test_sets: dict[str, ImageSet],
        batch_size: int,
        device: torch.device,
        precision: str = "fp32",
        dist: Distributed | None = None,
        reporter: Reporter | None = None,
    ) -> None:
        self.setting = setting
        self.backbone = backbone
        self.infos = infos
        self.test_sets = test_sets
        self.batch_size = batch_size
        self.device = device
        self.precision = precision
        self.dist = dist or Distributed()
        self.reporter: Reporter = reporter or NullReporter()
        self.cache = EvalCache()

    def evaluate(self, learner: Learner, label: str) -> list[EvalResult]:
        s = self.setting
        eval_sets = {n: self.dist.shard_images(t) for n, t in self.test_sets.items()}
        self.reporter.phase(label, sum(len(eval_sets[n]) for n in s.eval_datasets))
        results = evaluate_all(
            learner.eval_model(),
            self.backbone,
            self.infos,
            eval_sets,
            s.datasets,
            tuple(h for h in s.holdout if h not in s.datasets),
            s.task_agnostic,
            self.batch_size,
            self.device,
            on_batch=lambda n: self.reporter.advance(n),
            cache=self.cache,
            precision=self.precision,
            custom_logits=learner.eval_logits if learner.custom_eval_logits else None,
            union_classifier=s.union_classifier if s.task_agnostic else None,
        )
        counts = self.dist.sum_counts([(r.correct, r.total, *r.predicted_domains) for r in results])
        return [
            EvalResult(r.dataset, r.split, c, n, tuple(domains))
            for r, (c, n, *domains) in zip(results, counts, strict=True)
        ]
