"""clip_ast — CLIP-AST: adaptive parameter selection, run per task of the stream.

Paper: "Adaptive Parameter Selection for Tuning Vision-Language Models" (CLIP-AST, Zhang et
al., CVPR 2025). No official code; an unofficial implementation exists
(github.com/skumar-ml/clip_ast, ``trainers/clip_ast.py``, ``trainers/losses.py``) and was read
for the selection rule and the losses. The method as PROTOCOL.md §4 states it:

- Candidates: every parameter tensor inside each transformer block ("sub-layer" tensors:
  ln_1/ln_2 weight and bias, attention in_proj/out_proj weight and bias, MLP c_fc/c_proj
  weight and bias; 12 per open_clip block) of both encoders. Everything outside the blocks
  (embeddings, final norms, projections, `logit_scale`) stays frozen.
- Importance warm-up: the first `selection_warmup_fraction` of the task's steps (default 0.1:
  8 of the toy's 80 X-TAIL steps, 50 of 500) train all candidates with AdamW. Then each
  tensor's importance is v' = mean(1 / (sqrt(v̂) + eps)), v̂ AdamW's bias-corrected second
  moment, and the `top_k` (6) tensors with the largest v' per block and encoder stay
  trainable for the rest of the task.
- Loss: cross-entropy over the task's prompts (image→text) + 10 · L1(image features) + 25 ·
  L1(text features) + 1 · KL(frozen ‖ current) on the logits, the L1 and KL terms against a
  frozen copy of the initial (zero-shot) model (PromptSRC's self-consistency terms and
  weights). Features are L2-normalised; L1 is the element mean; KL is batch-mean, T = 1.
- fp32 optimizer state: Adam's second moments underflow in fp16 (1/sqrt(v̂) → inf/NaN); the
  master weights and AdamW state are fp32 (`--precision` only autocasts the forward). If the
  state had to be half precision, use `--set eps=1e-5`.
The tensors chosen per task go to ``selected.parquet`` (one row per candidate: `after_task`,
`task`, `encoder`, `layer`, `kind` = tensor name within the block, `importance`,
`importance_rank` (1 = highest v' in its block), `selected`, `numel`).

Harness choices (not in the paper; labelled): the selection runs on every task of the stream.
At the moment of selection the non-selected candidates are reset to their task-start values
(so a task changes only its selected tensors; the unofficial code keeps its stage-1 updates
of all blocks) and the selected ones keep their warm-up updates and Adam state: one AdamW with
one warm-up + cosine schedule over the whole task instead of two optimizers. The frozen
reference is the initial model (PROTOCOL.md §4; the unofficial code copies the model after
its stage 1). lr = the setting's full-fine-tuning lr (a subset of full fine-tuning), weight
decay 1e-4 (unofficial code), 10 % lr warm-up. The manifest's trainable count is
`trainable()`'s at the task's start, i.e. during the warm-up (all candidates); the selected
count per task is in the manifest, `derived.clip_ast.selected_parameters_per_task`.

Memory: one frozen copy of the model for the whole run (ViT-B/16 ~0.6 GB fp32; toy ~31 MB)
and, during the warm-up, a copy of the candidates' task-start values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.api.learner import Batch, Learner, StepInfo, Task
from cl_bench.api.optim import OptimizerConfig
from cl_bench.api.registry import register_learner
from cl_bench.api.toolkit import clip_features, frozen_copy
from cl_bench.errors import UserError
from cl_bench.models.backbone import as_clip


def block_candidates(model: nn.Module) -> list[tuple[str, int, dict[str, nn.Parameter]]]:
    """(encoder, layer, {tensor name: parameter}) for every transformer block of both towers."""
    clip: Any = model  # open_clip CLIP towers: attributes nn.Module's stubs cannot type
    towers = (("vision", clip.visual.transformer), ("text", clip.transformer))
    return [
        (encoder, layer, dict(block.named_parameters()))
        for encoder, tower in towers
        for layer, block in enumerate(tower.resblocks)
    ]


def adam_importance(state: dict[str, Any], beta2: float, eps: float) -> float:
    """v' = mean(1 / (sqrt(v̂) + eps)), v̂ = exp_avg_sq / (1 − β2^t) (AdamW's bias correction)."""
    step = float(state["step"])
    v_hat = state["exp_avg_sq"].float() / (1.0 - beta2**step)
    return float(torch.mean(1.0 / (v_hat.sqrt() + eps)))


def self_consistency(
    image: torch.Tensor,
    text: torch.Tensor,
    logits: torch.Tensor,
    frozen_image: torch.Tensor,
    frozen_text: torch.Tensor,
    frozen_logits: torch.Tensor,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L1 image features, L1 text features, KL(frozen ‖ current) of the logits · T²)."""
    l1_image = F.l1_loss(image, frozen_image.detach())
    l1_text = F.l1_loss(text, frozen_text.detach())
    kl = F.kl_div(
        F.log_softmax(logits / temperature, dim=-1),
        F.log_softmax(frozen_logits.detach() / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    return l1_image, l1_text, kl * temperature**2


@register_learner("clip_ast")
class CLIPAST(Learner):
    description = "CLIP-AST: fine-tune the top-6 tensors per block (AdamW second-moment importance) + L1/KL to the frozen model"

    @dataclass
    class Config(OptimizerConfig):
        # lr None = the setting's full-fine-tuning lr for this world; eps 1e-8 with fp32
        # state (1e-5 if the state were fp16)
        weight_decay: float = 1e-4  # unofficial reference code
        warmup_fraction: float = 0.1  # lr warm-up, then cosine
        top_k: int = 6  # tensors kept trainable per block and encoder
        selection_warmup_fraction: float = 0.1  # of the task's steps, all candidates train
        label_smoothing: float = 0.0
        image_l1_weight: float = 10.0  # PromptSRC / CLIP-AST
        text_l1_weight: float = 25.0  # PromptSRC / CLIP-AST
        kl_weight: float = 1.0
        kl_temperature: float = 1.0

    def __init__(self, backbone, cfg, ctx) -> None:
        super().__init__(backbone, cfg, ctx)
        self.blocks = block_candidates(self.model)
        per_block = min(len(params) for _, _, params in self.blocks)
        if not 1 <= cfg.top_k <= per_block:
            raise UserError(
                f"--set top_k={cfg.top_k}: must lie in [1, {per_block}] (tensors per transformer block)"
            )
        if not 0.0 < cfg.selection_warmup_fraction < 1.0:
            raise UserError(
                f"--set selection_warmup_fraction={cfg.selection_warmup_fraction}: must lie in (0, 1)"
            )
        half = [
            f"{e}.{i}.{n}"
            for e, i, params in self.blocks
            for n, p in params.items()
            if p.dtype != torch.float32
        ]
        if half:
            raise UserError(
                f"clip_ast keeps fp32 weights and AdamW state, but {half[0]} is not fp32; load the model in fp32 (--precision bf16 autocasts the forward only)"
            )
        self.frozen = frozen_copy(self.model)
        self.selected_per_task: list[int] = []
        self.selected: set[int] | None = None

    # -- selection -----------------------------------------------------------------------
    def candidates(self) -> list[nn.Parameter]:
        return [p for _, _, params in self.blocks for p in params.values()]

    def selection_step(self, iterations: int) -> int:
        """The number of warm-up steps after which the selection runs (>= 1, <= iterations)."""
        return min(iterations, max(1, round(self.cfg.selection_warmup_fraction * iterations)))

    @torch.no_grad()
    def select(self, task: Task, optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
        """Keep the top-K tensors per block trainable; reset and freeze the others."""
        rows: list[dict[str, Any]] = []
        selected: set[int] = set()
        for encoder, layer, params in self.blocks:
            scores = {
                name: adam_importance(optimizer.state[p], self.cfg.beta2, self.cfg.eps)
                for name, p in params.items()
            }
            order = sorted(scores, key=lambda n: -scores[n])  # stable: block order breaks ties
            keep = set(order[: self.cfg.top_k])
            for name, p in params.items():
                if name in keep:
                    selected.add(id(p))
                else:
                    p.copy_(self.task_start[id(p)])
                    p.requires_grad_(False)
                    p.grad = None
                    optimizer.state.pop(p, None)  # frees the state; grad None: AdamW skips p
                rows.append(
                    {
                        "task": task.name,
                        "encoder": encoder,
                        "layer": layer,
                        "kind": name,
                        "importance": scores[name],
                        "importance_rank": order.index(name) + 1,
                        "selected": name in keep,
                        "numel": p.numel(),
                    }
                )
        self.selected = selected
        self.task_start: dict[int, torch.Tensor] = {}  # frees the warm-up's task-start copies
        self.ctx.record("selected", rows)
        count = sum(r["numel"] for r in rows if r["selected"])
        self.selected_per_task.append(count)
        self.ctx.note(f"{self.name}.selected_parameters_per_task", list(self.selected_per_task))
        return rows

    # -- Learner API ---------------------------------------------------------------------
    def begin_task(self, task: Task) -> None:
        self.task_start = {id(p): p.detach().clone() for p in self.candidates()}
        self.selected = None
        self.select_after = self.selection_step(task.iterations)
        self.ctx.note(f"{self.name}.lr", self.optimizer_config(task).lr)
        self.ctx.note(f"{self.name}.selection_warmup_steps", self.select_after)
        with torch.no_grad():
            self.frozen_text: torch.Tensor | None = F.normalize(
                as_clip(self.frozen).encode_text(task.text_tokens), dim=-1
            )
        self.current_task = task

    def trainable(self, task: Task) -> list[nn.Parameter]:
        return self.candidates()

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The four loss terms on a batch (task CE, L1 image, L1 text, KL)."""
        frozen_text = self.frozen_text
        if frozen_text is None:
            raise RuntimeError("clip_ast: losses outside a task (begin_task encodes the prompts)")
        frozen = as_clip(self.frozen)
        image, text = clip_features(self.model, batch.images, batch.text_tokens)
        logits = as_clip(self.model).logit_scale.exp() * image @ text.T
        with torch.no_grad():
            frozen_image = F.normalize(frozen.encode_image(batch.images), dim=-1)
            frozen_logits = frozen.logit_scale.exp() * frozen_image @ frozen_text.T
        ce = F.cross_entropy(logits, batch.labels, label_smoothing=self.cfg.label_smoothing)
        l1_image, l1_text, kl = self_consistency(
            image,
            text,
            logits,
            frozen_image,
            frozen_text,
            frozen_logits,
            self.cfg.kl_temperature,
        )
        return {"ce": ce, "l1_image": l1_image, "l1_text": l1_text, "kl": kl}

    def loss(self, batch: Batch, step: StepInfo) -> tuple[torch.Tensor, dict[str, Any]]:
        terms = self.losses(batch)
        loss = (
            terms["ce"]
            + self.cfg.image_l1_weight * terms["l1_image"]
            + self.cfg.text_l1_weight * terms["l1_text"]
            + self.cfg.kl_weight * terms["kl"]
        )
        return loss, {k: v.detach() for k, v in terms.items()}

    def after_step(self, step: StepInfo) -> None:
        """After the warm-up's last step: select from the optimizer's second moments."""
        if self.selected is None and step.step + 1 >= self.select_after:
            if step.optimizer is None:
                raise RuntimeError("clip_ast: the selection needs the engine's optimizer")
            self.select(self.current_task, step.optimizer)

    def end_task(self, task: Task) -> None:
        if self.selected is None:
            raise RuntimeError(
                f"clip_ast: task {task.name} ended before the selection step {self.select_after}"
            )
        self.model.requires_grad_(False)
        self.frozen_text = None
        self.selected = None

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "selected_per_task": list(self.selected_per_task)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.selected_per_task = list(state.get("selected_per_task", []))
