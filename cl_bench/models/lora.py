"""LoRA-family adapters for open_clip models, as weight parametrizations.

The adapter adds a low-rank delta to chosen weight matrices of the vision and/or text
transformer: attention q, k, v (row slices of the packed ``attn.in_proj_weight``), out
(``attn.out_proj.weight``) and the MLP's ``c_fc`` / ``c_proj`` weights. It uses
`torch.nn.utils.parametrize`, so ``nn.MultiheadAttention``'s fused path (which reads
``in_proj_weight`` and ``out_proj.weight`` directly, ignoring a replaced ``out_proj``
module) sees the adapted weights, and no module is swapped. peft is not used: its MHA
LoRA double-counts the out_proj delta (DESIGN.md, "Models").

Three block variants share one class, `LowRankBlock`:

- ``"lora"``       ΔW = B A                      (plain LoRA, no α/r scaling)
- ``"importance"`` ΔW = B diag(w) A              (CoDyRA; w one importance per rank)
- ``"gated"``      ΔW = I_τ(s) · B A             (Selective LoRA; hard gate, straight-through)

A is Kaiming-uniform, B = 0, so every adapter starts as the identity edit. Adapter
tensors are fp32 whatever the base dtype; the delta is cast to the base dtype in the
forward, and `LoRAAdapter.merge` adds it in fp32 before writing the base weight back.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from cl_bench.errors import UserError

MatrixKind = Literal["q", "k", "v", "out", "fc", "proj"]
Variant = Literal["lora", "importance", "gated"]
MATRIX_KINDS: tuple[str, ...] = ("q", "k", "v", "out", "fc", "proj")
ENCODERS: tuple[str, ...] = ("vision", "text")
_QKV_INDEX = {"q": 0, "k": 1, "v": 2}


@dataclass(frozen=True)
class Site:
    """One adapted weight matrix: where it lives and which rows of its tensor it covers."""

    encoder: str  # "vision" | "text"
    layer: int
    kind: str  # one of MATRIX_KINDS
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
                    sites.append(
                        Site(
                            encoder, layer, kind, attn, "in_proj_weight", i * width, (i + 1) * width
                        )
                    )
                else:
                    module = {"out": attn.out_proj, "fc": block.mlp.c_fc, "proj": block.mlp.c_proj}[
                        kind
                    ]
                    sites.append(
                        Site(encoder, layer, kind, module, "weight", 0, module.weight.shape[0])
                    )
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
        """ΔW in fp32."""
        if self.importance is not None:
            return (self.lora_B * self.importance) @ self.lora_A
        delta = self.lora_B @ self.lora_A
        if self.gate_score is not None:
            delta = self.gate() * delta
        return delta


class WeightDelta(nn.Module):
    """Parametrization W -> W + ΔW, ΔW assembled from the blocks of one tensor's row slices."""

    def __init__(self, shape: torch.Size) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.blocks = nn.ModuleDict()
        self.rows: dict[str, tuple[int, int]] = {}

    def add_block(self, key: str, block: LowRankBlock, row_start: int, row_stop: int) -> None:
        self.blocks[key] = block
        self.rows[key] = (row_start, row_stop)

    def _block(self, key: str) -> LowRankBlock:
        return cast(LowRankBlock, self.blocks[key])

    def delta(self) -> torch.Tensor:
        """The full-tensor ΔW in fp32 (zero rows where no block is attached)."""
        covered = sorted(self.rows.items(), key=lambda kv: kv[1][0])
        if len(covered) == 1 and covered[0][1] == (0, self.shape[0]):
            return self._block(covered[0][0]).delta()
        device = next(self.blocks.parameters()).device
        parts, cursor = [], 0
        for key, (start, stop) in covered:
            if start > cursor:
                parts.append(torch.zeros(start - cursor, self.shape[1], device=device))
            parts.append(self._block(key).delta())
            cursor = stop
        if cursor < self.shape[0]:
            parts.append(torch.zeros(self.shape[0] - cursor, self.shape[1], device=device))
        return torch.cat(parts, dim=0)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta().to(weight.dtype)


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
        self._parametrizations: dict[tuple[int, str], tuple[nn.Module, str, WeightDelta]] = {}
        for site in sites:
            base = getattr(site.module, site.tensor_name)
            key = (id(site.module), site.tensor_name)
            if key not in self._parametrizations:
                if parametrize.is_parametrized(site.module, site.tensor_name):
                    raise UserError(
                        f"{site.encoder} layer {site.layer} {site.tensor_name} already carries a parametrization; merge the previous adapter first"
                    )
                self._parametrizations[key] = (
                    site.module,
                    site.tensor_name,
                    WeightDelta(base.shape),
                )
            block = LowRankBlock(
                base.shape[1],
                site.out_features,
                rank,
                variant,
                base.device,
                gate_init,
                gate_threshold,
            )
            self._parametrizations[key][2].add_block(
                site.kind, block, site.row_start, site.row_stop
            )
            self.attached.append(AttachedBlock(site, block))
        for module, name, delta in self._parametrizations.values():
            parametrize.register_parametrization(module, name, delta)
        self.merged = False

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
        """W ← W + ΔW in fp32 for every adapted tensor, then remove the parametrizations.

        Afterwards the model has exactly its base parameters (the blocks are gone) and
        computes what it computed with the adapter attached.
        """
        if self.merged:
            raise RuntimeError("this adapter was already merged")
        for module, name, delta in self._parametrizations.values():
            parametrized: Any = module.parametrizations
            new_weight = parametrized[name].original.float() + delta.delta().float()
            parametrize.remove_parametrizations(module, name, leave_parametrized=False)
            getattr(module, name).copy_(new_weight.to(getattr(module, name).dtype))
        self.merged = True

    @torch.no_grad()
    def remove(self) -> None:
        """Detach without merging: the model returns to its base weights."""
        for module, name, _ in self._parametrizations.values():
            parametrize.remove_parametrizations(module, name, leave_parametrized=False)
        self.merged = True
