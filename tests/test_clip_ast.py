"""clip_ast: importance from AdamW's second moments, top-K selection per block and encoder,
frozen non-selected tensors, the self-consistency terms, and selected.parquet from a run."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from learner_steps import steps

from cl_bench.api.context import RunContext
from cl_bench.api.hyperparameters import build_config
from cl_bench.api.learner import Batch, StepInfo, Task
from cl_bench.api.registry import get_learner
from cl_bench.errors import UserError
from cl_bench.learners.clip_ast import CLIPAST, adam_importance, block_candidates
from cl_bench.models.tiny import random_tiny_clip

PER_BLOCK = 12  # ln_1, attn in/out proj, ln_2, mlp c_fc/c_proj: weight + bias each


def make_ctx() -> RunContext:
    ctx = RunContext(
        torch.device("cpu"),
        0,
        "xtail",
        True,
        "toy",
        10,
        500,
        1e-3,
        32,
        lambda t: torch.zeros(len(t), 16, dtype=torch.long),
    )
    ctx.current_task = 1
    return ctx


def setup(layers: int = 2, **overrides: str):
    backbone = random_tiny_clip(seed=0, layers=layers)
    tokens = backbone.tokenizer(["a photo of a cat.", "a photo of a dog.", "a photo of a car."])
    task = Task(0, "aircraft", ("cat", "dog", "car"), ("",) * 3, tokens, 10, 6, 10)
    ctx = make_ctx()
    learner = CLIPAST(backbone, build_config(CLIPAST, overrides), ctx)
    return backbone, task, ctx, learner


def batch(task: Task, seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(6, 3, 16, 16, generator=g)
    labels = torch.randint(0, task.num_classes, (6,), generator=g)
    return Batch(images, labels, task.text_tokens, task.index)


def run_task(learner: CLIPAST, task: Task) -> list[dict]:
    steps(learner).begin(task)
    for step in range(task.iterations):
        steps(learner).step(batch(task, step), StepInfo(step, task.iterations, 0, 10))
    steps(learner).end(task)
    return learner.ctx.records["selected"]


def test_candidates_are_the_block_tensors_of_both_encoders() -> None:
    backbone = random_tiny_clip(layers=2)
    blocks = block_candidates(backbone.model)
    assert [(e, i) for e, i, _ in blocks] == [
        ("vision", 0),
        ("vision", 1),
        ("text", 0),
        ("text", 1),
    ]
    assert all(len(params) == PER_BLOCK for _, _, params in blocks)
    assert "attn.in_proj_weight" in blocks[0][2] and "ln_2.bias" in blocks[3][2]


def test_importance_is_mean_inverse_sqrt_of_bias_corrected_second_moment() -> None:
    p = torch.nn.Parameter(torch.zeros(4))
    opt = torch.optim.AdamW([p], lr=0.1, betas=(0.9, 0.99), eps=1e-8)
    grads = [torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0.5, 0.5, 0.5, 0.5])]
    for g in grads:
        p.grad = g.clone()
        opt.step()
    v = 0.01 * (0.99 * grads[0] ** 2 + grads[1] ** 2)  # (1−β2) Σ β2^(t−s) g_s²
    v_hat = v / (1 - 0.99**2)
    expected = float(torch.mean(1 / (v_hat.sqrt() + 1e-8)))
    assert adam_importance(opt.state[p], 0.99, 1e-8) == pytest.approx(expected, rel=1e-5)
    # a tensor with smaller gradients has larger v' (it ranks higher)
    q = torch.nn.Parameter(torch.zeros(4))
    opt_q = torch.optim.AdamW([q], lr=0.1, betas=(0.9, 0.99))
    for g in grads:
        q.grad = 0.1 * g
        opt_q.step()
    assert adam_importance(opt_q.state[q], 0.99, 1e-8) > adam_importance(opt.state[p], 0.99, 1e-8)


def test_selects_exactly_k_per_block_per_encoder_by_importance() -> None:
    _, task, _, learner = setup(layers=2, top_k="6")
    rows = pd.DataFrame(run_task(learner, task))
    assert len(rows) == 4 * PER_BLOCK and set(rows.encoder) == {"vision", "text"}
    per_block = rows.groupby(["encoder", "layer"])["selected"].sum()
    assert (per_block == 6).all() and len(per_block) == 4
    for _, block in rows.groupby(["encoder", "layer"]):
        chosen, rest = block[block.selected], block[~block.selected]
        assert chosen.importance.min() >= rest.importance.max()
        assert sorted(chosen.importance_rank) == [1, 2, 3, 4, 5, 6]
    assert learner.ctx.derived["clip_ast.selection_warmup_steps"] == 1  # round(0.1 · 10)
    assert learner.ctx.derived["clip_ast.selected_parameters_per_task"] == [
        int(rows[rows.selected].numel.sum())
    ]
    _, task, _, other = setup(layers=2, top_k="2")
    assert (
        pd.DataFrame(run_task(other, task)).groupby(["encoder", "layer"]).selected.sum() == 2
    ).all()


def test_non_selected_tensors_do_not_change_after_a_task() -> None:
    backbone, task, ctx, learner = setup(layers=2, lr="1e-2", selection_warmup_fraction="0.3")
    before = {n: p.detach().clone() for n, p in backbone.model.named_parameters()}
    rows = pd.DataFrame(run_task(learner, task))
    model = backbone.model
    tower = {"vision": "visual.transformer", "text": "transformer"}
    selected = {
        f"{tower[r.encoder]}.resblocks.{r.layer}.{r.kind}" for r in rows.itertuples() if r.selected
    }
    assert len(selected) == 4 * 6
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= selected  # nothing outside the selection moved
    assert len(changed) >= len(selected) // 2  # and the selection did train
    assert all(not p.requires_grad for p in model.parameters())


def test_self_consistency_terms_are_zero_for_the_frozen_model() -> None:
    _, task, _, learner = setup(layers=1)
    steps(learner).begin(task)
    with torch.no_grad():
        terms = learner.losses(batch(task, 0))
    # zero up to float rounding (the frozen copy runs MultiheadAttention's eval fast path)
    assert float(terms["l1_image"]) == pytest.approx(0.0, abs=1e-6)
    assert float(terms["l1_text"]) == pytest.approx(0.0, abs=1e-6)
    assert float(terms["kl"]) == pytest.approx(0.0, abs=1e-6)
    assert float(terms["ce"]) > 0.0
    with torch.no_grad():  # drift away from the frozen copy: all three grow
        for p in learner.model.visual.transformer.resblocks[0].parameters():
            p.add_(0.3 * torch.randn_like(p))
        for p in learner.model.transformer.resblocks[0].parameters():
            p.add_(0.3 * torch.randn_like(p))
    with torch.no_grad():
        drifted = learner.losses(batch(task, 0))
    assert all(float(drifted[k]) > 1e-4 for k in ("l1_image", "l1_text", "kl"))


def test_loss_weights_and_config() -> None:
    assert get_learner("clip_ast") is CLIPAST
    cfg = CLIPAST.Config()
    assert (cfg.top_k, cfg.image_l1_weight, cfg.text_l1_weight, cfg.kl_weight) == (
        6,
        10.0,
        25.0,
        1.0,
    )
    _, task, _, learner = setup(layers=1, lr="1e-2")
    steps(learner).begin(task)
    b = batch(task, 1)
    steps(learner).step(b, StepInfo(0, 10, 0, 10))  # move away from the frozen copy
    with torch.no_grad():
        terms = learner.losses(b)
    total = terms["ce"] + 10 * terms["l1_image"] + 25 * terms["l1_text"] + terms["kl"]
    scalars = steps(learner).step(b, StepInfo(1, 10, 0, 10))
    assert float(scalars["loss"]) == pytest.approx(float(total), rel=1e-5)
    with pytest.raises(UserError, match="top_k"):
        setup(layers=1, top_k="13")
    with pytest.raises(UserError, match="selection_warmup_fraction"):
        setup(layers=1, selection_warmup_fraction="0")


def test_fp32_optimizer_state() -> None:
    _, task, _, learner = setup(layers=1)
    steps(learner).begin(task)
    steps(learner).step(batch(task, 0), StepInfo(0, 10, 0, 10))
    states = list(steps(learner).optimizer.state.values())
    assert states and all(s["exp_avg_sq"].dtype == torch.float32 for s in states)
    assert all(math.isfinite(float(s["exp_avg_sq"].sum())) for s in states)


def test_run_writes_selected_parquet(tmp_path, tiny_run) -> None:
    engine = tiny_run("clip_ast", {"lr": "5e-3"}, out=tmp_path / "run")
    selected = pd.read_parquet(engine.run_dir / "selected.parquet")
    assert set(selected.columns) == {
        "after_task",
        "task",
        "encoder",
        "layer",
        "kind",
        "importance",
        "importance_rank",
        "selected",
        "numel",
    }
    assert set(selected.after_task) == {1, 2} and len(selected) == 2 * 2 * PER_BLOCK
    assert (selected.groupby(["after_task", "encoder", "layer"]).selected.sum() == 6).all()
    assert engine.manifest["status"] == "finished"
    assert "selected" in engine.manifest["record_tables"]
