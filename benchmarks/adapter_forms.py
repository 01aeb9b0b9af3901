"""The LoRA adapter's two forms, timed on one training step in one process (issue 24).

    python benchmarks/adapter_forms.py --model ViT-B-16 --batch 8 --prompts 20   # random weights
    python benchmarks/adapter_forms.py --model toy --batch 32 --prompts 20

- `branch` (the harness, `cl_bench.models.lora`): W x + B (w ⊙ (A x)) with W frozen, as
  CoDyRA's `loralib/codyra.py` computes it; backward takes gradients of A, w, B only.
- `parametrized` (cl-bench until 2026-12-02, rebuilt here for the comparison only): a
  `torch.nn.utils.parametrize` parametrization W → W + B diag(w) A on the packed
  `in_proj_weight` slices, `out_proj.weight` and the MLP weights, so every forward rebuilds
  each adapted matrix and backward computes its full weight gradient.

Both forms carry the same blocks (drslora's importance variant, q, k, v, out, fc, proj of both
towers) with the same values, and the script first checks that they compute the same
features. A step is the forward of `--batch` images and `--prompts` prompts, a contrastive
loss, the backward and an AdamW step; the forms are timed in turn, round after round.
"""

from __future__ import annotations

import argparse
import copy
import sys

import open_clip
import torch
from _timing import print_ratio_table, time_in_turn
from torch import nn
from torch.nn.utils import parametrize

from cl_bench.api.toolkit import clip_logits, contrastive_loss
from cl_bench.data.toy.model import TOY_MODELS, register_config
from cl_bench.models.lora import ENCODERS, MATRIX_KINDS, LoRAAdapter, LowRankBlock, find_sites


class _Delta(nn.Module):
    """W -> W + ΔW, ΔW stacked from the blocks on the tensor's row slices (the old form)."""

    def __init__(self, rows: int, blocks: list[tuple[int, LowRankBlock]]) -> None:
        super().__init__()
        self.rows = rows
        self.starts = [start for start, _ in blocks]
        self.blocks = nn.ModuleList(block for _, block in blocks)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        parts, cursor = [], 0
        for start, block in zip(self.starts, self.blocks, strict=True):
            assert isinstance(block, LowRankBlock)
            if start > cursor:
                parts.append(weight.new_zeros(start - cursor, weight.shape[1]))
            parts.append(block.delta())
            cursor = start + block.lora_B.shape[0]
        if cursor < self.rows:
            parts.append(weight.new_zeros(self.rows - cursor, weight.shape[1]))
        return weight + torch.cat(parts).to(weight.dtype)


def parametrized(model: nn.Module, rank: int) -> tuple[nn.Module, list[nn.Parameter]]:
    model = copy.deepcopy(model).requires_grad_(False)
    per_tensor: dict[tuple[int, str], tuple[nn.Module, str, list[tuple[int, LowRankBlock]]]] = {}
    params: list[nn.Parameter] = []
    for site in find_sites(model, ENCODERS, MATRIX_KINDS):
        base = getattr(site.module, site.tensor_name)
        block = LowRankBlock(base.shape[1], site.out_features, rank, "importance", base.device)
        entry = per_tensor.setdefault(
            (id(site.module), site.tensor_name), (site.module, site.tensor_name, [])
        )
        entry[2].append((site.row_start, block))
        params += list(block.parameters())
    for module, name, blocks in per_tensor.values():
        rows = getattr(module, name).shape[0]
        parametrize.register_parametrization(module, name, _Delta(rows, blocks))
    return model, params


def branch(model: nn.Module, rank: int) -> tuple[nn.Module, list[nn.Parameter]]:
    model = copy.deepcopy(model).requires_grad_(False)
    adapter = LoRAAdapter(model, find_sites(model, ENCODERS, MATRIX_KINDS), rank, "importance")
    return model, list(adapter.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16", help="open_clip model name, or toy")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--rank", type=int, default=16, help="16 at width 768; toy: 3")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per form a round")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    name = args.model
    if name == "toy":
        spec = TOY_MODELS["small"]
        register_config(spec)
        name = spec.config_name
    model = open_clip.create_model(name, pretrained=None).train()
    size = model.visual.image_size
    size = size[0] if isinstance(size, tuple) else size
    context = model.context_length
    images = torch.randn(args.batch, 3, size, size)
    text = torch.randint(1, 49000, (args.prompts, context))
    text[:, context // 3] = 49407  # the end-of-text token, where open_clip pools
    labels = torch.randint(0, args.prompts, (args.batch,))

    torch.manual_seed(1)
    forms = {"parametrized": parametrized(model, args.rank)}
    torch.manual_seed(1)
    forms["branch"] = branch(model, args.rank)
    with torch.no_grad():  # the same blocks, non-zero B, in both forms
        for old, new in zip(forms["parametrized"][1], forms["branch"][1], strict=True):
            if old.dim() == 2 and not old.any():
                old.normal_(0, 0.02)
            new.copy_(old)
        logits = {k: clip_logits(m, images, text) for k, (m, _) in forms.items()}
    gap = float((logits["branch"] - logits["parametrized"]).abs().max())
    scale = float(logits["parametrized"].abs().max())
    if gap > 1e-4 * max(scale, 1.0):
        sys.exit(
            f"adapter_forms: the two forms disagree (max |logit difference| {gap:.2e}); timing them would compare different functions"
        )

    def step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
        loss = contrastive_loss(clip_logits(model, images, text), labels, 0.0, None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    optimizers = {
        k: torch.optim.AdamW(p, lr=5e-4, betas=(0.9, 0.9999), weight_decay=0, foreach=True)
        for k, (_, p) in forms.items()
    }
    steps = {k: (lambda m=m, o=optimizers[k]: step(m, o)) for k, (m, _) in forms.items()}
    times = time_in_turn(steps, args.rounds, args.steps, warmup=1)
    print(
        f"{args.model}: batch {args.batch} images + {args.prompts} prompts (context {context}), "
        f"rank {args.rank}, {args.threads} threads, {args.rounds} rounds x {args.steps} steps; "
        f"max |logit difference| between the forms {gap:.2e} (logits up to {scale:.1f})"
    )
    print_ratio_table(times, "form", "parametrized", digits=3)


if __name__ == "__main__":
    main()
