"""LoRA-family adapters for open_clip models, as explicit low-rank branches.

The adapter adds a low-rank edit ΔW to chosen weight matrices of the vision and/or text
transformer: attention q, k, v (row slices of the packed ``attn.in_proj_weight``), out
(``attn.out_proj.weight``) and the MLP's ``c_fc`` / ``c_proj`` weights. While a task trains,
each adapted layer computes ``W x + b + B (w ⊙ (A x))`` with W frozen, as CoDyRA's
``loralib/codyra.py`` (`codyra_Linear.forward`: ``(x @ A.T).mul(gate) @ B.T``) and every LoRA
library do: backward then needs no gradient of the full W, only of the rank-r factors.
``nn.MultiheadAttention`` reads ``in_proj_weight`` / ``out_proj.weight`` inside its fused
forward, so an adapted attention is wrapped by `LoRAAttention` (the same projections, then
``F.scaled_dot_product_attention``, as CoDyRA's `PlainMultiheadAttentionLoRA`); an adapted MLP
linear by `LoRALinear`. `LoRAAdapter.merge` writes ΔW into the base weights in fp32 and puts
the original modules back, so between tasks the model is exactly the plain open_clip model.
peft is not used: its MHA LoRA double-counts the out_proj delta (DESIGN.md, "Models").

Three block variants share one class, `LowRankBlock`:

- ``"lora"``       ΔW = B A                      (plain LoRA, no α/r scaling)
- ``"importance"`` ΔW = B diag(w) A              (CoDyRA; w one importance per rank)
- ``"gated"``      ΔW = I_τ(s) · B A             (Selective LoRA; hard gate, straight-through)

A is Kaiming-uniform, B = 0, so every adapter starts as the identity edit. Adapter
tensors are fp32 whatever the base dtype; the branch runs in its input's dtype (autocast
casts it like any linear layer), and `LoRAAdapter.merge` adds ΔW in fp32 before writing the
base weight back.

Until 2026-12-02 the adapter was a ``torch.nn.utils.parametrize`` parametrization W → W + ΔW:
the same function, but every forward rebuilt the adapted matrices and every backward computed
their full weight gradients (docs/performance.md, "The explicit low-rank branch").
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.errors import UserError

MatrixKind = Literal["q", "k", "v", "out", "fc", "proj"]
Variant = Literal["lora", "importance", "gated"]
MATRIX_KINDS: tuple[str, ...] = ("q", "k", "v", "out", "fc", "proj")
ENCODERS: tuple[str, ...] = ("vision", "text")
ATTENTION_KINDS: tuple[str, ...] = ("q", "k", "v", "out")
_QKV_INDEX = {"q": 0, "k": 1, "v": 2}
_MLP_NAMES = {"fc": "c_fc", "proj": "c_proj"}
_STACKED = "already carries a LoRA adapter; merge the previous adapter first"


@dataclass(frozen=True)
class Site:
    """One adapted weight matrix: where it lives and which rows of its tensor it covers."""

    encoder: str  # "vision" | "text"
    layer: int
    kind: str  # one of MATRIX_KINDS
    resblock: nn.Module  # the residual block whose attn / mlp.c_fc / mlp.c_proj gets the branch
    module: nn.Module  # owner of the tensor
    tensor_name: str  # "in_proj_weight" or "weight"
    row_start: int
    row_stop: int

    @property
    def out_features(self) -> int:
        return self.row_stop - self.row_start


def _resblocks(model: nn.Module, encoder: str) -> Sequence[nn.Module]:
    clip: Any = model  # open_clip's towers: attributes nn.Module cannot type
    tower = clip.visual.transformer if encoder == "vision" else clip.transformer
    return cast(Sequence[nn.Module], tower.resblocks)


def _carries_adapter(resblock: Any) -> bool:
    """Whether an unmerged adapter is attached to this residual block."""
    return isinstance(resblock.attn, LoRAAttention) or any(
        isinstance(getattr(resblock.mlp, n, None), LoRALinear) for n in _MLP_NAMES.values()
    )


def find_sites(model: nn.Module, encoders: Sequence[str], kinds: Sequence[str]) -> list[Site]:
    """The weight matrices of `model` to adapt, in (encoder, layer, kind) order."""
    bad_enc = [e for e in encoders if e not in ENCODERS]
    bad_kind = [k for k in kinds if k not in MATRIX_KINDS]
    if bad_enc or bad_kind or not encoders or not kinds:
        raise UserError(
            f"LoRA targets: encoders must be a non-empty subset of {ENCODERS} and kinds of {MATRIX_KINDS}; got encoders={tuple(encoders)} kinds={tuple(kinds)}"
        )
    sites: list[Site] = []
    for encoder in ENCODERS:
        if encoder not in encoders:
            continue
        block: Any
        for layer, block in enumerate(_resblocks(model, encoder)):
            attn = block.attn
            if _carries_adapter(block):
                raise UserError(f"{encoder} layer {layer} {_STACKED}")
            if not isinstance(attn, nn.MultiheadAttention) or not attn._qkv_same_embed_dim:
                raise UserError(
                    f"{encoder} layer {layer}: LoRA expects nn.MultiheadAttention with a packed in_proj_weight; this open_clip model has another attention type"
                )
            width = attn.embed_dim
            for kind in MATRIX_KINDS:
                if kind not in kinds:
                    continue
                if kind in _QKV_INDEX:
                    i = _QKV_INDEX[kind]
                    site = Site(
                        encoder,
                        layer,
                        kind,
                        block,
                        attn,
                        "in_proj_weight",
                        i * width,
                        (i + 1) * width,
                    )
                else:
                    module = (
                        attn.out_proj if kind == "out" else getattr(block.mlp, _MLP_NAMES[kind])
                    )
                    rows = module.weight.shape[0]
                    site = Site(encoder, layer, kind, block, module, "weight", 0, rows)
                sites.append(site)
    return sites


class LowRankBlock(nn.Module):
    """One low-rank edit ΔW of shape [out_features, in_features] (see module docstring)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        variant: Variant,
        device: torch.device,
        gate_init: float = 0.15,
        gate_threshold: float = 0.1,
    ) -> None:
        super().__init__()
        if rank < 1:
            raise UserError(f"LoRA rank must be >= 1, got {rank}")
        self.variant = variant
        self.gate_threshold = gate_threshold
        self.lora_A = nn.Parameter(
            torch.empty(rank, in_features, device=device, dtype=torch.float32)
        )
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's / LoRA's default
        self.lora_B = nn.Parameter(
            torch.zeros(out_features, rank, device=device, dtype=torch.float32)
        )
        self.importance = (
            nn.Parameter(torch.randn(rank, device=device, dtype=torch.float32))
            if variant == "importance"
            else None
        )
        self.gate_score = (
            nn.Parameter(torch.tensor(float(gate_init), device=device))
            if variant == "gated"
            else None
        )

    @property
    def rank(self) -> int:
        return self.lora_A.shape[0]

    def gate(self) -> torch.Tensor:
        """Hard gate I_τ(s) in the forward; identity gradient to s (straight-through)."""
        s = self.gate_score
        assert s is not None, "gate() needs the gated variant"
        hard = (s >= self.gate_threshold).to(s.dtype)
        return hard + s - s.detach()

    def is_active(self) -> bool:
        return self.gate_score is None or bool(self.gate_score.detach() >= self.gate_threshold)

    def surviving_ranks(self) -> int:
        """Ranks that contribute to ΔW (importance ≠ 0); all ranks for the other variants."""
        if self.importance is None:
            return self.rank
        return int((self.importance.detach() != 0).sum())

    def delta(self) -> torch.Tensor:
        """ΔW in fp32 (what `LoRAAdapter.merge` adds to the base weight)."""
        if self.importance is not None:
            return (self.lora_B * self.importance) @ self.lora_A
        delta = self.lora_B @ self.lora_A
        if self.gate_score is not None:
            delta = self.gate() * delta
        return delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ΔW x for rows x, without forming ΔW: B (w ⊙ (A x)), CoDyRA's order."""
        dtype = x.dtype
        h = F.linear(x, self.lora_A.to(dtype))
        if self.importance is not None:
            h = h * self.importance.to(dtype)
        out = F.linear(h, self.lora_B.to(dtype))
        if self.gate_score is not None:
            out = self.gate().to(out.dtype) * out
        return out


class LoRALinear(nn.Module):
    """An MLP linear layer with a low-rank branch: ``linear(x) + block(x)``."""

    def __init__(self, linear: nn.Linear, block: LowRankBlock) -> None:
        super().__init__()
        self.linear = linear
        self.block = block

    @property
    def weight(self) -> torch.Tensor:  # open_clip reads c_fc.weight.dtype as the cast dtype
        return self.linear.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.block(x)


class LoRAAttention(nn.Module):
    """The self-attention of an ``nn.MultiheadAttention`` with low-rank branches on q, k, v, out.

    Same projections and scaled dot-product attention as the module's own forward (the
    call open_clip makes: self-attention, ``need_weights=False``, an optional additive or
    boolean mask), with each adapted projection's branch added to its output.
    """

    def __init__(self, attn: nn.MultiheadAttention, blocks: dict[str, LowRankBlock]) -> None:
        super().__init__()
        if attn.bias_k is not None or attn.add_zero_attn:
            raise UserError(
                "LoRA expects nn.MultiheadAttention without add_bias_kv / add_zero_attn (CLIP has neither)"
            )
        self.attn = attn
        self.blocks = nn.ModuleDict(blocks)

    def _branch(self, kind: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y + self.blocks[kind](x) if kind in self.blocks else y

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, None]:
        if key is not query or value is not query:
            raise RuntimeError(
                "LoRAAttention adapts self-attention only (key and value are the query)"
            )
        if need_weights or key_padding_mask is not None or is_causal:
            raise RuntimeError(
                "LoRAAttention supports open_clip's call: need_weights=False, no key_padding_mask, an explicit attn_mask"
            )
        attn = self.attn
        x = query if attn.batch_first else query.transpose(0, 1)  # [N, L, D]
        n, length, width = x.shape
        heads = attn.num_heads
        q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (self._branch(kind, x, y) for kind, y in zip("qkv", (q, k, v), strict=True))
        q, k, v = (y.unflatten(-1, (heads, width // heads)).transpose(1, 2) for y in (q, k, v))
        mask = attn_mask
        if mask is not None:
            if mask.dtype == torch.bool:  # MultiheadAttention: True = not allowed
                mask = torch.zeros(mask.shape, dtype=q.dtype, device=mask.device).masked_fill(
                    mask, float("-inf")
                )
            mask = mask.to(q.dtype)
            if mask.dim() == 3:  # [N * heads, L, S]
                mask = mask.view(n, heads, length, -1)
        dropout = attn.dropout if attn.training else 0.0
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        o = o.transpose(1, 2).reshape(n, length, width)
        out = self._branch("out", o, F.linear(o, attn.out_proj.weight, attn.out_proj.bias))
        return (out if attn.batch_first else out.transpose(0, 1)), None


@dataclass
class AttachedBlock:
    site: Site
    block: LowRankBlock


class LoRAAdapter:
    """LoRA blocks attached to `model`'s sites; `merge()` folds them in and detaches.

    Freezes nothing itself: the learner decides what else trains.
    """

    def __init__(
        self,
        model: nn.Module,
        sites: Sequence[Site],
        rank: int,
        variant: Variant,
        gate_init: float = 0.15,
        gate_threshold: float = 0.1,
    ) -> None:
        self.model = model
        self.attached: list[AttachedBlock] = []
        attention: dict[int, tuple[nn.Module, dict[str, LowRankBlock]]] = {}
        linears: list[tuple[nn.Module, str, LowRankBlock]] = []
        for site in sites:  # blocks made in site order: the initial draws follow it
            resblock: Any = site.resblock
            if _carries_adapter(resblock):  # sites found before an earlier adapter attached
                raise UserError(f"{site.encoder} layer {site.layer} {_STACKED}")
            base = getattr(site.module, site.tensor_name)
            block = LowRankBlock(
                base.shape[1],
                site.out_features,
                rank,
                variant,
                base.device,
                gate_init,
                gate_threshold,
            )
            if site.kind in ATTENTION_KINDS:
                attention.setdefault(id(resblock), (resblock, {}))[1][site.kind] = block
            else:
                linears.append((resblock.mlp, _MLP_NAMES[site.kind], block))
            self.attached.append(AttachedBlock(site, block))
        self._wrapped: list[tuple[nn.Module, str, nn.Module]] = []  # (parent, name, original)
        for resblock, blocks in attention.values():
            self._wrap(resblock, "attn", LoRAAttention(resblock.attn, blocks))
        for mlp, name, block in linears:
            self._wrap(mlp, name, LoRALinear(getattr(mlp, name), block))
        self.merged = False

    def _wrap(self, parent: nn.Module, name: str, wrapper: nn.Module) -> None:
        self._wrapped.append((parent, name, getattr(parent, name)))
        setattr(parent, name, wrapper)

    def _unwrap(self) -> None:
        for parent, name, original in reversed(self._wrapped):
            setattr(parent, name, original)
        self._wrapped = []

    def parameters(self) -> Iterator[nn.Parameter]:
        for item in self.attached:
            yield from item.block.parameters()

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def importances(self) -> list[torch.Tensor]:
        return [a.block.importance for a in self.attached if a.block.importance is not None]

    def gate_scores(self) -> list[torch.Tensor]:
        return [a.block.gate_score for a in self.attached if a.block.gate_score is not None]

    @torch.no_grad()
    def merge(self) -> None:
        """W ← W + ΔW in fp32 for every adapted matrix, then put the original modules back.

        Afterwards the model has exactly its base modules and parameters (the blocks are
        gone) and computes what it computed with the adapter attached, up to rounding.
        """
        if self.merged:
            raise RuntimeError("this adapter was already merged")
        for item in self.attached:
            site = item.site
            rows = getattr(site.module, site.tensor_name)[site.row_start : site.row_stop]
            rows.copy_((rows.float() + item.block.delta().float()).to(rows.dtype))
        self._unwrap()
        self.merged = True

    @torch.no_grad()
    def remove(self) -> None:
        """Detach without merging: the model returns to its base weights."""
        self._unwrap()
        self.merged = True
