"""The LoRA-family adapter (cl_bench.models.lora): parametrized forward, merge, pruning, STE."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn.utils import parametrize

from cl_bench.errors import UserError
from cl_bench.models.lora import MATRIX_KINDS, LoRAAdapter, find_sites
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


def manual_weights(model: torch.nn.Module, adapter: LoRAAdapter) -> torch.nn.Module:
    """A copy of the base model with W + ΔW written into plain tensors, computed explicitly."""
    twin = copy.deepcopy(model)
    for item in adapter.attached:
        site = item.site
        twin_module = twin.get_submodule(_path_of(model, site.module))
        name = site.tensor_name
        base = (
            twin_module.parametrizations[name].original
            if parametrize.is_parametrized(twin_module, name)
            else getattr(twin_module, name)
        )
        with torch.no_grad():
            base[site.row_start : site.row_stop] += explicit_delta(item.block)
    for module in list(twin.modules()):
        for name in list(getattr(module, "parametrizations", {}) or {}):
            parametrize.remove_parametrizations(module, name, leave_parametrized=False)
    return twin


def _path_of(model: torch.nn.Module, target: torch.nn.Module) -> str:
    for name, module in model.named_modules():
        if module is target:
            return name
    raise KeyError(target)


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
def test_parametrized_forward_equals_manual_forward(variant: str) -> None:
    model = tiny_model()
    base_img, base_txt = encode(model)
    adapter = LoRAAdapter(model, find_sites(model, ALL, MATRIX_KINDS), rank=3, variant=variant)
    randomize(adapter)
    img, txt = encode(model)
    ref_img, ref_txt = encode(manual_weights(model, adapter))
    torch.testing.assert_close(img, ref_img, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(txt, ref_txt, atol=1e-5, rtol=1e-5)
    assert (img - base_img).abs().max() > 1e-3 and (txt - base_txt).abs().max() > 1e-3


def test_fresh_adapter_is_the_identity() -> None:
    model = tiny_model()
    before = encode(model)
    LoRAAdapter(model, find_sites(model, ALL, MATRIX_KINDS), rank=4, variant="importance")
    after = encode(model)
    torch.testing.assert_close(before, after, atol=0, rtol=0)  # B = 0 exactly


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
    base_keys = set(model.state_dict())
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
    assert set(model.state_dict()) == base_keys
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
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
    adapter = LoRAAdapter(model, find_sites(model, ALL, MATRIX_KINDS), rank=2, variant="lora")
    randomize(adapter)
    with pytest.raises(UserError, match="merge the previous adapter"):
        LoRAAdapter(model, find_sites(model, ALL, ("out",)), rank=2, variant="lora")
    adapter.remove()
    torch.testing.assert_close(encode(model), before, atol=0, rtol=0)
