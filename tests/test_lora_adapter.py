"""The LoRA-family adapter (cl_bench.models.lora): branch forward, merge, pruning, STE."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from cl_bench.errors import UserError
from cl_bench.models.lora import MATRIX_KINDS, LoRAAdapter, LoRAAttention, find_sites
from cl_bench.models.tiny import random_tiny_clip

ALL = ("vision", "text")


def tiny_model(seed: int = 0) -> torch.nn.Module:
    return random_tiny_clip(seed=seed, width=32, layers=2).model.eval()


def inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(3, 3, 16, 16, generator=g)
    tokens = torch.randint(1, 49407, (4, 16), generator=g)
    tokens[:, -1] = 49407  # end-of-text token: the text pooling point
    return images, tokens


def encode(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    images, tokens = inputs()
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(tokens)


def randomize(adapter: LoRAAdapter, seed: int = 2) -> None:
    """Non-zero B (the init is B = 0, which would make every test trivially pass)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for item in adapter.attached:
            item.block.lora_B.copy_(0.2 * torch.randn(item.block.lora_B.shape, generator=g))


def explicit_delta(block) -> torch.Tensor:
    """ΔW written out rank by rank: Σ_i w_i B[:, i] A[i, :] (gate times B A for gated)."""
    delta = torch.zeros(block.lora_B.shape[0], block.lora_A.shape[1])
    for i in range(block.rank):
        w = block.importance[i] if block.importance is not None else 1.0
        delta += w * torch.outer(block.lora_B[:, i], block.lora_A[i])
    if block.gate_score is not None:
        delta *= float(block.gate_score >= block.gate_threshold)
    return delta.detach()


def manual_weights(base: torch.nn.Module, adapter: LoRAAdapter) -> torch.nn.Module:
    """A copy of `base` (the model before the adapter) with W + ΔW written into its plain
    tensors, ΔW computed rank by rank."""
    twin = copy.deepcopy(base)
    kinds = tuple(dict.fromkeys(a.site.kind for a in adapter.attached))
    encoders = tuple(dict.fromkeys(a.site.encoder for a in adapter.attached))
    twin_sites = find_sites(twin, encoders, kinds)
    assert [(s.encoder, s.layer, s.kind) for s in twin_sites] == [
        (a.site.encoder, a.site.layer, a.site.kind) for a in adapter.attached
    ]
    with torch.no_grad():
        for site, item in zip(twin_sites, adapter.attached, strict=True):
            getattr(site.module, site.tensor_name)[site.row_start : site.row_stop] += (
                explicit_delta(item.block)
            )
    return twin


def test_sites_cover_all_six_kinds_in_both_encoders() -> None:
    model = tiny_model()
    sites = find_sites(model, ALL, MATRIX_KINDS)
    assert len(sites) == 2 * 2 * 6  # encoders x layers x kinds
    q, k, v = (s for s in sites[:3])
    assert (q.row_start, k.row_start, v.row_start, v.row_stop) == (0, 32, 64, 96)
    assert (
        sites[3].tensor_name == "weight"
        and sites[3].module is model.visual.transformer.resblocks[0].attn.out_proj
    )
    with pytest.raises(UserError, match="kinds"):
        find_sites(model, ALL, ("q", "mlp"))


@pytest.mark.parametrize("variant", ["lora", "importance", "gated"])
def test_branch_forward_equals_manual_weights(variant: str) -> None:
    model = tiny_model()
    base = copy.deepcopy(model)
    base_img, base_txt = encode(model)
    adapter = LoRAAdapter(model, find_sites(model, ALL, MATRIX_KINDS), rank=3, variant=variant)
    randomize(adapter)
    img, txt = encode(model)
    ref_img, ref_txt = encode(manual_weights(base, adapter))
    torch.testing.assert_close(img, ref_img, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(txt, ref_txt, atol=1e-5, rtol=1e-5)
    assert (img - base_img).abs().max() > 1e-3 and (txt - base_txt).abs().max() > 1e-3


def test_fresh_adapter_is_the_identity() -> None:
    model = tiny_model()
    before = encode(model)
    adapter = LoRAAdapter(model, find_sites(model, ALL, MATRIX_KINDS), rank=4, variant="importance")
    blocks = [a.block for a in adapter.attached]
    assert all(torch.count_nonzero(b(torch.randn(5, b.lora_A.shape[1]))) == 0 for b in blocks)
    after = encode(model)  # LoRAAttention's own attention path: equal up to rounding
    torch.testing.assert_close(before, after, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("mask", ["none", "causal_float", "causal_bool"])
def test_lora_attention_without_branches_is_multihead_attention(
    batch_first: bool, mask: str
) -> None:
    """Forward and input gradient equal nn.MultiheadAttention's own (training mode)."""
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(32, 4, batch_first=batch_first).train()
    wrapped = LoRAAttention(attn, {})
    length = 7
    x = torch.randn((3, length, 32) if batch_first else (length, 3, 32), requires_grad=True)
    causal = torch.ones(length, length, dtype=torch.bool).triu(1)  # True = not allowed
    masks = {
        "none": None,
        "causal_float": torch.zeros(length, length).masked_fill(causal, float("-inf")),
        "causal_bool": causal,
    }
    m = masks[mask]
    want = attn(x, x, x, need_weights=False, attn_mask=m)[0]
    (g_want,) = torch.autograd.grad(want.square().sum(), x)
    got, weights = wrapped(x, x, x, need_weights=False, attn_mask=m)
    (g_got,) = torch.autograd.grad(got.square().sum(), x)
    assert weights is None
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(g_got, g_want, atol=1e-5, rtol=1e-5)


def test_lora_attention_refuses_calls_it_does_not_implement() -> None:
    attn = nn.MultiheadAttention(8, 2, batch_first=True)
    wrapped = LoRAAttention(attn, {})
    x, y = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    with pytest.raises(RuntimeError, match="self-attention only"):
        wrapped(x, y, y, need_weights=False)
    with pytest.raises(RuntimeError, match="need_weights=False"):
        wrapped(x, x, x)  # nn.MultiheadAttention's default need_weights=True
    with pytest.raises(RuntimeError, match="key_padding_mask"):
        wrapped(x, x, x, need_weights=False, key_padding_mask=torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(UserError, match="add_bias_kv"):
        LoRAAttention(nn.MultiheadAttention(8, 2, add_bias_kv=True), {})


def test_only_selected_matrices_change() -> None:
    model = tiny_model()
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    adapter = LoRAAdapter(
        model, find_sites(model, ("vision",), ("k", "fc")), rank=2, variant="lora"
    )
    randomize(adapter)
    adapter.merge()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, base[n])}
    assert changed == {
        f"visual.transformer.resblocks.{i}.{t}"
        for i in range(2)
        for t in ("attn.in_proj_weight", "mlp.c_fc.weight")
    }
    w = model.visual.transformer.resblocks[0].attn.in_proj_weight
    w0 = base["visual.transformer.resblocks.0.attn.in_proj_weight"]
    assert torch.equal(w[:32], w0[:32]) and torch.equal(w[64:], w0[64:])  # q and v rows untouched
    assert not torch.equal(w[32:64], w0[32:64])


@pytest.mark.parametrize("variant", ["lora", "importance", "gated"])
def test_merge_equals_explicit_sum_and_keeps_outputs(variant: str) -> None:
    model = tiny_model()
    base_params = sum(p.numel() for p in model.parameters())
    base_keys = list(model.state_dict())
    base_weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    adapter = LoRAAdapter(model, find_sites(model, ALL, MATRIX_KINDS), rank=3, variant=variant)
    randomize(adapter)
    assert sum(p.numel() for p in model.parameters()) > base_params
    expected = {id(a.block): explicit_delta(a.block) for a in adapter.attached}
    before = encode(model)
    adapter.merge()
    after = encode(model)
    torch.testing.assert_close(before, after, atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in model.parameters()) == base_params
    assert list(model.state_dict()) == base_keys  # the same keys, in the same order
    assert type(model.visual.transformer.resblocks[0].attn) is nn.MultiheadAttention
    assert type(model.transformer.resblocks[1].mlp.c_proj) is nn.Linear
    names = {id(m): n for n, m in model.named_modules()}
    for item in adapter.attached:
        s = item.site
        key = f"{names[id(s.module)]}.{s.tensor_name}"
        got = getattr(s.module, s.tensor_name)[s.row_start : s.row_stop]
        want = base_weights[key][s.row_start : s.row_stop] + expected[id(item.block)]
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_pruned_rank_contributes_nothing() -> None:
    model = tiny_model()
    adapter = LoRAAdapter(
        model, find_sites(model, ("text",), ("out",)), rank=4, variant="importance"
    )
    randomize(adapter)
    block = adapter.attached[0].block
    with torch.no_grad():
        block.importance[1] = 0.0
    delta = block.delta().detach().clone()
    with torch.no_grad():  # whatever rank 1's factors hold, ΔW must not change
        block.lora_A[1] += 5.0
        block.lora_B[:, 1] -= 3.0
    torch.testing.assert_close(block.delta(), delta, atol=0, rtol=0)
    assert block.surviving_ranks() == 3
    with torch.no_grad():
        block.importance[2] = 1e-3  # tiny but non-zero still counts and contributes
        block.lora_A[2] += 5.0
    assert block.surviving_ranks() == 3
    assert not torch.equal(block.delta(), delta)


def test_gate_is_hard_forward_and_straight_through_backward() -> None:
    model = tiny_model()
    adapter = LoRAAdapter(
        model,
        find_sites(model, ("vision",), ("fc",)),
        rank=2,
        variant="gated",
        gate_init=0.15,
        gate_threshold=0.1,
    )
    randomize(adapter)
    block = adapter.attached[0].block
    full = (block.lora_B @ block.lora_A).detach()
    torch.testing.assert_close(block.delta().detach(), full, atol=0, rtol=0)  # s = 0.15 ≥ τ: gate 1
    grad_out = torch.randn_like(full)
    (block.delta() * grad_out).sum().backward()
    torch.testing.assert_close(
        block.gate_score.grad, (grad_out * full).sum(), rtol=1e-5, atol=1e-6
    )  # d/ds = <g, BA>
    block.gate_score.grad = None
    with torch.no_grad():
        block.gate_score.fill_(0.05)  # below τ: the forward is exactly zero ...
    assert torch.count_nonzero(block.delta().detach()) == 0 and not block.is_active()
    (block.delta() * grad_out).sum().backward()
    assert (
        block.gate_score.grad is not None and abs(float(block.gate_score.grad)) > 1e-4
    )  # ... the score still learns
    torch.testing.assert_close(block.gate_score.grad, (grad_out * full).sum(), rtol=1e-5, atol=1e-6)


def test_closed_gate_is_not_merged() -> None:
    model = tiny_model()
    base = model.visual.transformer.resblocks[0].mlp.c_fc.weight.detach().clone()
    adapter = LoRAAdapter(model, find_sites(model, ("vision",), ("fc",)), rank=2, variant="gated")
    randomize(adapter)
    with torch.no_grad():
        adapter.attached[0].block.gate_score.fill_(0.0)
    adapter.merge()
    assert torch.equal(model.visual.transformer.resblocks[0].mlp.c_fc.weight, base)
    assert not torch.equal(
        model.visual.transformer.resblocks[1].mlp.c_fc.weight,
        tiny_model().visual.transformer.resblocks[1].mlp.c_fc.weight,
    )


def test_gradients_reach_only_the_adapter_through_the_fused_attention() -> None:
    model = tiny_model().train()
    model.requires_grad_(False)
    adapter = LoRAAdapter(model, find_sites(model, ALL, ("q", "out")), rank=2, variant="importance")
    randomize(adapter)
    images, tokens = inputs()
    (model.encode_image(images).sum() + model.encode_text(tokens).sum()).backward()
    grads = [p.grad for p in adapter.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(float(a.block.lora_A.grad.abs().sum()) > 0 for a in adapter.attached)
    assert all(
        p.grad is None for p in model.parameters() if not any(p is q for q in adapter.parameters())
    )


def test_second_adapter_before_merge_is_refused_and_remove_restores_base() -> None:
    model = tiny_model()
    before = encode(model)
    modules = list(model.modules())
    early_sites = find_sites(model, ALL, ("fc",))  # found before the first adapter
    adapter = LoRAAdapter(model, find_sites(model, ALL, MATRIX_KINDS), rank=2, variant="lora")
    randomize(adapter)
    assert not torch.equal(encode(model)[0], before[0])
    with pytest.raises(UserError, match="merge the previous adapter"):
        LoRAAdapter(model, find_sites(model, ALL, ("out",)), rank=2, variant="lora")
    with pytest.raises(UserError, match="merge the previous adapter"):
        LoRAAdapter(model, early_sites, rank=2, variant="lora")
    adapter.remove()
    assert list(model.modules()) == modules  # the very same module objects, in place again
    torch.testing.assert_close(encode(model), before, atol=0, rtol=0)
