"""Contrastive pre-training of the toy CLIP on the toy world's pre-training distribution.

Deterministic by seed (single-threaded ops aside, see docs/toy-world.md). A curriculum is needed
for the patch-8 model to leave the chance-level loss (PROTOCOL.md §5): the first part of
training shows only the generic style, then the share of domain styles ramps up to the final
mixture. Concepts that occur several times in a batch are all positives of each other.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cl_bench.data.toy.distribution import (
    FINAL_DOMAIN_STYLE_FRACTION,
    GENERATOR_VERSION,
    PretrainDistribution,
)
from cl_bench.data.toy.model import (
    DEFAULT_TOY_MODEL,
    IMAGE_SIZE_PX,
    MEAN,
    STD,
    TOY_MODELS,
    ToyModel,
    toy_model,
)

SUBSET_TEST_IMAGES = 96  # per domain: what the test suite re-checks quickly


@dataclass
class PretrainConfig:
    steps: int = 900
    batch_size: int = 128
    lr: float = 1.5e-3
    weight_decay: float = 0.1
    warmup_fraction: float = 0.05
    generic_only_fraction: float = 0.2  # curriculum: generic style only for this share of steps
    ramp_end_fraction: float = 0.5  # ... then domain styles ramp up until this share
    seed: int = 0
    threads: int = 1
    init_logit_scale: float = 50.0  # start sharper than open_clip's 1/0.07 (see docs/toy-world.md)
    model: str = DEFAULT_TOY_MODEL  # which toy CLIP size (TOY_MODELS); the recipe is the same


def domain_style_fraction(step: int, cfg: PretrainConfig) -> float:
    """The curriculum: 0 during the generic phase, a linear ramp, then the final mixture."""
    s = step / max(1, cfg.steps)
    if s < cfg.generic_only_fraction:
        return 0.0
    ramp = (s - cfg.generic_only_fraction) / max(
        1e-9, cfg.ramp_end_fraction - cfg.generic_only_fraction
    )
    return FINAL_DOMAIN_STYLE_FRACTION * min(1.0, ramp)


def concept_contrastive_loss(logits, concept_ids):
    """Symmetric CE; images/captions of the same concept share the target mass uniformly."""
    import torch
    import torch.nn.functional as F

    same = (concept_ids[:, None] == concept_ids[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    loss_i = torch.sum(-targets * F.log_softmax(logits, dim=1), dim=1).mean()
    loss_t = torch.sum(-targets * F.log_softmax(logits.T, dim=1), dim=1).mean()
    return 0.5 * (loss_i + loss_t)


def pretrain(
    cfg: PretrainConfig, out: Path | None = None, log: Callable[[str], None] = print
) -> dict:
    """Train from scratch, evaluate zero-shot, write fp16 safetensors + the JSON record."""
    import torch

    from cl_bench.api.optim import OptimizerConfig, build_optimizer
    from cl_bench.data.toy.model import (
        create_toy_clip,
        load_toy_backbone,
        save_weights,
        toy_tokenizer,
    )

    spec = toy_model(cfg.model)
    out = spec.weights_path if out is None else out
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng([cfg.seed, 1234])
    model: Any = create_toy_clip(spec)  # an open_clip CLIP: attributes nn.Module cannot type
    with torch.no_grad():
        model.logit_scale.fill_(math.log(cfg.init_logit_scale))
    model.train()
    tokenizer = toy_tokenizer(spec)
    dist = PretrainDistribution(IMAGE_SIZE_PX)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "embedding" in n]
    settings = OptimizerConfig(
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        beta2=0.98,
        eps=1e-6,
        warmup_fraction=cfg.warmup_fraction,
    )
    optimizer, scheduler = build_optimizer(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        settings,
        cfg.steps,
    )
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    start = time.time()
    running = float("nan")
    for step in range(cfg.steps):
        images, captions, concepts = dist.sample(
            cfg.batch_size, rng, domain_style_fraction(step, cfg)
        )
        x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
        img_f, txt_f, scale = model(x, tokenizer(captions))
        loss = concept_contrastive_loss(scale * img_f @ txt_f.T, torch.from_numpy(concepts))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        running = loss.item() if math.isnan(running) else 0.95 * running + 0.05 * loss.item()
        if (step + 1) % 100 == 0 or step + 1 == cfg.steps:
            log(
                f"step {step + 1}/{cfg.steps}  loss {running:.3f}  domain-style {domain_style_fraction(step, cfg):.2f}  scale {model.logit_scale.exp().item():.1f}  {time.time() - start:.0f}s"
            )
    train_s = time.time() - start
    record = {
        "model": spec.config_name,
        "toy_model": spec.key,
        "generator_version": GENERATOR_VERSION,
        "command": f"clbench toy pretrain --model {spec.key} --steps {cfg.steps} --batch-size {cfg.batch_size} --lr {cfg.lr} --seed {cfg.seed}",
        "config": asdict(cfg),
        "train_seconds": round(train_s, 1),
        "torch": torch.__version__,
    }
    save_weights(model, out, record)
    # The recorded accuracies are those of the saved (fp16) file, reloaded as every run loads it.
    shipped = load_toy_backbone(torch.device("cpu"), out, spec).model
    record["zeroshot_accuracy"] = zero_shot_accuracies(shipped, spec=spec)
    record["zeroshot_accuracy_subset"] = zero_shot_accuracies(shipped, SUBSET_TEST_IMAGES, spec)
    record["weights_sha256"] = save_weights(model, out, record)
    log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) after {train_s:.0f}s of training")
    return record


def zero_shot_accuracies(
    model,
    test_images_per_domain: int | None = None,
    spec: ToyModel = TOY_MODELS[DEFAULT_TOY_MODEL],
) -> dict[str, Any]:
    """Zero-shot top-1 (%) per domain: own label space, and the X-TAIL union space.

    `test_images_per_domain` evaluates a prefix of each test split (balanced: labels are
    interleaved), which the tests use to check the recorded numbers quickly.
    """
    import torch

    from cl_bench.data.scoring import image_features, text_classifier, top1_accuracy, top1_correct
    from cl_bench.data.taskfiles import load_setting_file
    from cl_bench.data.toy.model import toy_tokenizer
    from cl_bench.data.toy.world import ToyWorld
    from cl_bench.data.world import ImageSet
    from cl_bench.models.backbone import Backbone

    world = ToyWorld()
    names = world.dataset_names()
    infos = {n: world.dataset_info(n) for n in names}
    tests = {}
    for n in names:
        s = world.load_split(n, "test", None, 0, IMAGE_SIZE_PX)
        k = len(s) if test_images_per_domain is None else min(len(s), test_images_per_domain)
        tests[n] = ImageSet(np.asarray(s.images[:k]), np.asarray(s.labels[:k]), s.ids_hash)
    bb = Backbone(
        model, toy_tokenizer(spec), IMAGE_SIZE_PX, MEAN, STD, spec.config_name, "pretraining"
    )
    device = torch.device("cpu")
    xtail = tuple(load_setting_file("xtail")["datasets"])
    # what the engine's evaluation computes (fp32, no cache): one text classifier per domain,
    # the X-TAIL union space their concatenation in setting order, labels offset to a block
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            classifiers = {n: text_classifier(model, bb.tokenizer, infos[n], device) for n in names}
            feats = {n: image_features(model, bb, tests[n], 512, device) for n in names}
    finally:
        model.train(was_training)

    def accuracy(name: str, classifier: torch.Tensor, offset: int) -> float:
        correct = top1_correct(feats[name], tests[name].labels, classifier, offset)
        return round(top1_accuracy(correct, len(tests[name])), 2)

    union = torch.cat([classifiers[n] for n in xtail])
    offsets = np.cumsum([0] + [infos[n].num_classes for n in xtail])[:-1]
    return {
        "own": {n: accuracy(n, classifiers[n], 0) for n in names},
        "xtail_union": {n: accuracy(n, union, int(o)) for n, o in zip(xtail, offsets, strict=True)},
        "test_images_per_domain": test_images_per_domain,
    }
