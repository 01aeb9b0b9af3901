"""What the result-changing fast paths would save per drslora step on the toy CLIP (issue 24).

    python benchmarks/fast_paths.py --dataset sun397 --rounds 8

None of these is in the harness: each changes results bit for bit, and issue 24 takes only
bit-identical wins (docs/performance.md, "The toy stream, closer to its own limit"). This
measures them so that the decision to offer one as a named option rests on figures:

- `fused AdamW`: `torch.optim.AdamW(fused=True)` instead of the engine's `foreach=True`;
- `text cut at the longest EOT`: the text tower run on the task's prompts up to the longest
  prompt's end-of-text token instead of the full context (the same function under the
  causal mask; other matmul shapes, so other roundings);
- `both`.

One drslora-like step: the adapter on q, k, v, out, fc, proj of both towers (the toy rank),
the task's prompts (one per class, templates[0]) against a batch of 32 of its training
images, the CLIP contrastive loss, AdamW as the engine sets it (lr 5e-4, betas 0.9/0.9999).
The variants are timed in turn, round after round, in one process (a shared machine drifts;
the median per variant and its ratio to today's form are the figures).
"""

from __future__ import annotations

import argparse
import copy

import open_clip
import torch
from _timing import print_ratio_table, time_in_turn
from torch import nn

from cl_bench.api.toolkit import clip_logits, contrastive_loss
from cl_bench.data.toy.model import TOY_MODELS, register_config, toy_tokenizer
from cl_bench.data.toy.world import ToyWorld
from cl_bench.learners.lora import scaled_rank
from cl_bench.models.backbone import Backbone
from cl_bench.models.lora import ENCODERS, MATRIX_KINDS, LoRAAdapter, find_sites

BATCH = 32


def text_cut_model(backbone: Backbone, context: int, model_key: str) -> nn.Module:
    """The same toy CLIP with a `context`-token text tower (positional embedding cut)."""
    spec = TOY_MODELS[model_key]
    register_config(spec)
    cfg = open_clip.get_model_config(spec.config_name)
    model = open_clip.create_model(
        spec.config_name, pretrained=None, text_cfg=dict(cfg["text_cfg"], context_length=context)
    )
    state = {
        k: (v[:context] if k == "positional_embedding" else v)
        for k, v in backbone.model.state_dict().items()
        if k != "attn_mask"  # rebuilt for the shorter context
    }
    missing, unexpected = model.load_state_dict(state, strict=False)
    if [k for k in missing if k != "attn_mask"] or unexpected:
        raise RuntimeError(f"text-cut model: missing {missing}, unexpected {unexpected}")
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="sun397", help="toy X-TAIL dataset (its prompts)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant a round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--toy-model", default="small")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    world = ToyWorld(model=args.toy_model)
    backbone = world.backbone(torch.device("cpu"))
    info = world.dataset_info(args.dataset)
    tokens = toy_tokenizer(TOY_MODELS[args.toy_model])(info.prompts())
    context = int(tokens.argmax(dim=-1).max()) + 1  # open_clip pools at the EOT (largest id)
    train = world.load_split(args.dataset, "train", 16, 42, backbone.image_size)
    pick = torch.randperm(len(train.labels))[:BATCH].numpy()  # a batch as the sampler draws one
    images = torch.from_numpy(train.images[pick])
    labels = torch.from_numpy(train.labels[pick].astype("int64"))
    rank = scaled_rank(16, backbone.width)

    def make(model: nn.Module, fused: bool) -> tuple[nn.Module, torch.optim.Optimizer]:
        model = copy.deepcopy(model).requires_grad_(False)
        adapter = LoRAAdapter(model, find_sites(model, ENCODERS, MATRIX_KINDS), rank, "importance")
        kind = {"fused": True} if fused else {"foreach": True}
        opt = torch.optim.AdamW(
            list(adapter.parameters()), lr=5e-4, betas=(0.9, 0.9999), weight_decay=0, **kind
        )
        return model, opt

    def step(model: nn.Module, opt: torch.optim.Optimizer, text: torch.Tensor) -> None:
        logits = clip_logits(model, backbone.normalize(images), text)  # the learners' logits
        loss = contrastive_loss(logits, labels, 0.0, None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    cut = text_cut_model(backbone, context, args.toy_model)
    variants = {
        "today (the harness's adapter, foreach AdamW, full context)": (
            make(backbone.model, False),
            tokens,
        ),
        "fused AdamW": (make(backbone.model, True), tokens),
        "text cut at the longest EOT": (make(cut, False), tokens[:, :context]),
        "both": (make(cut, True), tokens[:, :context]),
    }
    steps = {
        name: (lambda m=model, o=opt, t=text: step(m, o, t))
        for name, ((model, opt), text) in variants.items()
    }
    times = time_in_turn(steps, args.rounds, args.steps, warmup=3)
    print(
        f"{args.dataset}: {len(tokens)} prompts, context {tokens.shape[1]} -> {context}; "
        f"batch {BATCH}, rank {rank}, {args.threads} threads, {args.rounds} rounds x {args.steps} steps"
    )
    print_ratio_table(times, "variant", "today", digits=2)


if __name__ == "__main__":
    main()
