"""The LoRA-family learners: soft-threshold, κ schedule and its budget scaling, rank scaling,
parameter counts, and short runs through the engine that train and merge cleanly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from learner_steps import steps

from cl_bench.api.context import RunContext
from cl_bench.api.hyperparameters import build_config
from cl_bench.api.learner import Task
from cl_bench.api.registry import get_learner
from cl_bench.errors import UserError
from cl_bench.learners.drslora import (
    DRSLoRA,
    compressed_staircase,
    kappa_schedule,
    official_staircase,
    reference_schedule,
    reference_threshold_,
    soft_threshold_,
)
from cl_bench.learners.gated_lora import GatedLoRA
from cl_bench.learners.lora import LoRA, scaled_rank
from cl_bench.models.backbone import Backbone

# Σκ of the staircase definition (PROTOCOL.md §4): Σ linspace(0, 0.005, 50) = 0.125 per
# step of the staircase; X-TAIL 250 sparse steps -> interval 5, MTIL (5-shot) 150 -> interval 3.
XTAIL_TOTAL = 5 * sum(i * 0.005 / 49 for i in range(50))  # 5 * 0.125 = 0.625
MTIL_TOTAL = 3 * sum(i * 0.005 / 49 for i in range(50))  # 3 * 0.125 = 0.375
# Σκ of CoDyRA's loop (models/codyra.py), counted by hand. X-TAIL: dense = 250, step 5; the
# level moves to 1 at i = 250 (not thresholded: i > dense only), so level 1 runs 4 steps
# (251-254), levels 2..48 five each, level 49 from i = 490 to 499: ten.
REF_XTAIL_TOTAL = 0.005 / 49 * (4 * 1 + 5 * sum(range(2, 49)) + 10 * 49)  # 0.64990
# MTIL: dense = 350, step 3; 350 % 3 = 2, so the level moves at 351, 354, ...: levels 1..48
# three steps each from 351 on, level 49 from i = 495 to 499: five.
REF_MTIL_TOTAL = 0.005 / 49 * (3 * sum(range(1, 49)) + 5 * 49)  # 0.385
TOTALS = {"textbook": (XTAIL_TOTAL, MTIL_TOTAL), "reference": (REF_XTAIL_TOTAL, REF_MTIL_TOTAL)}


def test_reference_threshold_is_three_sequential_updates() -> None:
    """w[w>κ]-=κ; w[w<-κ]+=κ; w[|w|<κ]=0: |w| < 2κ ends at 0, |w| = κ stays, the rest shrinks."""
    w = torch.tensor([-1.0, -0.0099, -0.003, 0.0, 0.002, 0.005, 0.0051, 0.0099, 0.0101, 0.8])
    reference_threshold_(w, 0.005)
    expected = torch.tensor([-0.995, 0.0, 0.0, 0.0, 0.0, 0.005, 0.0, 0.0, 0.0051, 0.795])
    torch.testing.assert_close(w, expected, atol=1e-7, rtol=0)
    v = torch.tensor([0.3, -0.3, 1e-9])
    reference_threshold_(v, 0.0)
    assert v.tolist() == pytest.approx([0.3, -0.3, 1e-9])


def test_reference_schedule_counts_as_codyras_loop() -> None:
    xtail = reference_schedule(500, 0.5, 0.005)
    assert xtail.sum() == pytest.approx(REF_XTAIL_TOTAL, abs=1e-12)
    assert REF_XTAIL_TOTAL == pytest.approx(0.6499, abs=1e-4)
    assert xtail[250] == 0.0 and xtail[251] == pytest.approx(0.005 / 49)  # level 1 at once
    assert xtail[489] == pytest.approx(48 * 0.005 / 49) and xtail[490] == pytest.approx(0.005)
    mtil = reference_schedule(500, 0.7, 0.005)
    assert mtil.sum() == pytest.approx(REF_MTIL_TOTAL, abs=1e-12)
    assert REF_MTIL_TOTAL == pytest.approx(0.385)
    assert mtil[350] == 0.0 and mtil[351] == pytest.approx(0.005 / 49)
    assert reference_schedule(1000, 0.7, 0.005).sum() == pytest.approx(0.77, abs=1e-9)
    # the toy's 80 iterations: (80 - 40) // 50 = 0, the level never moves: κ stays 0
    assert reference_schedule(80, 0.5, 0.005).sum() == 0.0


def test_soft_threshold_shrinks_toward_zero_and_zeroes_small() -> None:
    w = torch.tensor([-1.0, -0.01, -0.003, 0.0, 0.002, 0.005, 0.0051, 0.8])
    soft_threshold_(w, 0.005)
    expected = torch.tensor([-0.995, -0.005, 0.0, 0.0, 0.0, 0.0, 0.0001, 0.795])
    torch.testing.assert_close(w, expected, atol=1e-7, rtol=0)
    v = torch.tensor([0.3, -0.3])
    soft_threshold_(v, 0.0)
    assert v.tolist() == pytest.approx([0.3, -0.3])


def test_paper_totals_from_the_staircase_definition() -> None:
    assert official_staircase(250, 0.005).sum() == pytest.approx(XTAIL_TOTAL, abs=1e-12)
    assert official_staircase(150, 0.005).sum() == pytest.approx(MTIL_TOTAL, abs=1e-12)
    assert XTAIL_TOTAL == pytest.approx(0.625) and MTIL_TOTAL == pytest.approx(0.375)


@pytest.mark.parametrize("proximal", ["reference", "textbook"])
@pytest.mark.parametrize("schedule", ["official", "paper_total"])
@pytest.mark.parametrize(("dense", "sparse"), [(0.5, 250), (0.7, 150)])
def test_kappa_is_zero_when_dense_and_kappa_max_at_the_end(
    schedule: str, dense: float, sparse: int, proximal: str
) -> None:
    kappas, facts = kappa_schedule(500, dense, 0.005, 50, schedule, 500, proximal)
    assert facts["sparse_steps"] == sparse and facts["dense_steps"] == 500 - sparse
    assert np.all(kappas[: 500 - sparse] == 0)
    assert kappas[-1] == pytest.approx(0.005)
    assert np.all(np.diff(kappas) >= 0) and kappas[500 - sparse] == 0.0  # a staircase from 0
    assert len(np.unique(kappas[500 - sparse :])) == 50


@pytest.mark.parametrize("proximal", ["reference", "textbook"])
@pytest.mark.parametrize("iterations", [7, 24, 80, 101, 333, 500, 1000, 2000])
@pytest.mark.parametrize(("dense", "setting"), [(0.5, 0), (0.7, 1)])
def test_scaled_schedule_keeps_the_paper_total_for_any_budget(
    iterations: int, dense: float, setting: int, proximal: str
) -> None:
    paper_total = TOTALS[proximal][setting]
    kappas, facts = kappa_schedule(iterations, dense, 0.005, 50, "paper_total", 500, proximal)
    assert kappas.sum() == pytest.approx(paper_total, rel=1e-9)
    assert facts["kappa_total_paper"] == pytest.approx(paper_total, rel=1e-12)
    sparse = facts["sparse_steps"]
    assert np.all(kappas[: iterations - sparse] == 0) and np.all(np.diff(kappas) >= 0)
    if iterations != 500:  # the official staircase would not keep the total
        assert (
            abs(
                kappa_schedule(iterations, dense, 0.005, 50, "official", 500, proximal)[0].sum()
                - paper_total
            )
            > 0.005
        )


def test_scaled_schedule_is_official_at_the_paper_budget_and_reaches_top_level() -> None:
    np.testing.assert_array_equal(compressed_staircase(250, 0.005), official_staircase(250, 0.005))
    stairs = compressed_staircase(24, 0.005)
    assert stairs[0] == 0.0 and stairs[-1] == pytest.approx(0.005)
    # a 1000-iteration reference budget: 300 sparse steps, interval 6
    textbook = kappa_schedule(80, 0.7, 0.005, 50, "paper_total", 1000, "textbook")
    assert textbook[0].sum() == pytest.approx(0.75)
    reference = kappa_schedule(80, 0.7, 0.005, 50, "paper_total", 1000, "reference")
    assert reference[0].sum() == pytest.approx(0.77)


def test_resampled_reference_schedule_is_the_reference_at_its_budget() -> None:
    for dense in (0.5, 0.7):
        kappas, _ = kappa_schedule(500, dense, 0.005, 50, "paper_total", 500, "reference")
        np.testing.assert_array_equal(kappas, reference_schedule(500, dense, 0.005))


def test_budget_scaling_takes_codyras_500_iterations_not_the_settings_budget() -> None:
    """Full-shot MTIL's 1000 iterations are ZSCL's full-fine-tuning budget; drslora's Σκ and
    gated_lora's score lr scale against CoDyRA's 500 (PROTOCOL.md §4, §5: Σκ ≈ 0.37 MTIL)."""
    from test_lora_adapter import tiny_model

    backbone = Backbone(tiny_model(), lambda t: t, 32, (0.5,) * 3, (0.5,) * 3, "tiny", "random")
    ctx = make_ctx(backbone.width, task_agnostic=False, paper_iterations=1000)
    drslora = DRSLoRA(backbone, DRSLoRA.Config(), ctx)
    steps(drslora).begin(make_task(80))
    facts = ctx.derived["drslora.kappa"]
    assert facts["kappa_total"] == pytest.approx(REF_MTIL_TOTAL)
    assert facts["kappa_total_paper"] == pytest.approx(REF_MTIL_TOTAL)
    other = Backbone(tiny_model(), lambda t: t, 32, (0.5,) * 3, (0.5,) * 3, "tiny", "random")
    gated = GatedLoRA(other, GatedLoRA.Config(), ctx)
    steps(gated).begin(make_task(80))
    assert ctx.derived["gated_lora.score_lr"] == pytest.approx(5e-4 * 500 / 80)


def test_rank_scales_with_width() -> None:
    assert scaled_rank(16, 768) == 16
    assert scaled_rank(16, 128) == 3
    assert scaled_rank(16, 32) == 2  # floor of 2
    assert scaled_rank(8, 512) == 5


def make_ctx(
    width: int, world: str = "toy", task_agnostic: bool = True, paper_iterations: int = 500
) -> RunContext:
    return RunContext(
        torch.device("cpu"),
        0,
        "xtail" if task_agnostic else "mtil",
        task_agnostic,
        world,
        10,
        paper_iterations,
        1e-4,
        width,
        lambda t: torch.zeros(len(t), 16, dtype=torch.long),
    )


def make_task(iterations: int = 80) -> Task:
    return Task(
        0,
        "aircraft",
        ("a", "b"),
        ("a photo of a.", "a photo of b."),
        torch.zeros(2, 16, dtype=torch.long),
        iterations,
        4,
        10,
    )


def test_drslora_trainable_parameters_on_vit_b16() -> None:
    import open_clip

    model = open_clip.create_model("ViT-B-16", pretrained=None)
    backbone = Backbone(model, lambda t: t, 224, (0.5,) * 3, (0.5,) * 3, "ViT-B-16", "random")
    ctx = make_ctx(backbone.width, world="real")
    learner = DRSLoRA(backbone, DRSLoRA.Config(), ctx)
    assert learner.rank == 16
    steps(learner).begin(make_task(500))
    assert steps(learner).trainable_parameters == 4_425_984  # CoDyRA reports 4.4M
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 4_425_984
    assert ctx.derived["drslora.kappa_schedule"] == "official" and ctx.derived["drslora.kappa"][
        "kappa_total"
    ] == pytest.approx(REF_XTAIL_TOTAL)


def test_config_fields_are_settable() -> None:
    cfg = build_config(
        DRSLoRA,
        {
            "kappa_max": "0.01",
            "encoders": "vision",
            "kinds": "q,v",
            "dense_fraction": "0.6",
            "kappa_schedule": "official",
            "rank": "8",
        },
    )
    assert (
        cfg.kappa_max,
        cfg.encoders,
        cfg.kinds,
        cfg.dense_fraction,
        cfg.kappa_schedule,
        cfg.rank,
    ) == (0.01, ("vision",), ("q", "v"), 0.6, "official", 8)
    assert build_config(DRSLoRA, {"dense_fraction": "none"}).dense_fraction is None
    gated = build_config(GatedLoRA, {"gate_threshold": "0.2", "score_lr_budget_scaling": "false"})
    assert (
        gated.gate_threshold == 0.2
        and gated.score_lr_budget_scaling is False
        and gated.weight_decay == 0.1
    )
    with pytest.raises(UserError):
        build_config(DRSLoRA, {"kappa_schedule": "linear"})
    assert (
        get_learner("lora") is LoRA
        and get_learner("drslora") is DRSLoRA
        and get_learner("gated_lora") is GatedLoRA
    )


def test_bad_targets_are_user_errors() -> None:
    from cl_bench.models.tiny import random_tiny_clip

    backbone = random_tiny_clip()
    with pytest.raises(UserError, match="encoders"):
        LoRA(backbone, build_config(LoRA, {"encoders": "audio"}), make_ctx(32))
    with pytest.raises(UserError, match="dense_fraction"):
        DRSLoRA(backbone, build_config(DRSLoRA, {"dense_fraction": "1.5"}), make_ctx(32))


@pytest.mark.parametrize("learner", ["lora", "drslora", "gated_lora"])
def test_short_run_learns_and_merges_cleanly(tiny_run, fake_base_model, learner: str) -> None:
    overrides = {"lr": "5e-3"} | (
        {"score_lr_budget_scaling": "false"} if learner == "gated_lora" else {}
    )
    # unscaled scores: gates stay open 12 steps
    engine = tiny_run(learner, overrides, iterations=12)
    model = engine.learner.model
    base = fake_base_model
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in base.parameters())
    assert list(model.state_dict()) == list(base.state_dict())
    assert [type(m) for m in model.modules()] == [type(m) for m in base.modules()]  # unwrapped
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, base.get_parameter(n))]
    assert changed and all(
        n.endswith(("in_proj_weight", "out_proj.weight", "c_fc.weight", "c_proj.weight"))
        for n in changed
    )
    manifest = engine.manifest
    assert manifest["status"] == "finished" and manifest["extra_inference_parameters"] == 0
    width, rank = 32, 2  # the tiny model: r = max(2, round(16 * 32 / 768))
    per_layer = (
        3 * rank * 2 * width + rank * (width + width) + 2 * rank * (width + 2 * width)
    )  # q,k,v + out + fc,proj (mlp_ratio 2)
    expected = 2 * per_layer + (
        2 * 6 * rank if learner == "drslora" else 2 * 6 if learner == "gated_lora" else 0
    )
    assert [t["trainable_parameters"] for t in manifest["tasks"]] == [expected, expected]
    assert manifest["derived"][f"{learner}.rank"] == rank
    acc = pd.read_parquet(engine.run_dir / "accuracy.parquet")
    rows0 = acc[acc.after_task == 0].set_index("eval_dataset")["correct"]
    rows2 = acc[acc.after_task == 2].set_index("eval_dataset")["correct"]
    assert not rows0.equals(rows2)  # training changed the predictions


def test_drslora_prunes_and_records_ranks(tiny_run) -> None:
    engine = tiny_run("drslora", {"lr": "5e-3", "kappa_max": "0.2"}, setting="mtil", iterations=12)
    ranks = pd.read_parquet(engine.run_dir / "ranks.parquet")
    assert set(ranks.columns) >= {
        "after_task",
        "task",
        "encoder",
        "layer",
        "kind",
        "rank",
        "surviving",
    }
    assert len(ranks) == 2 * 12 and set(ranks.after_task) == {1, 2}  # 2 tasks x 12 matrices
    assert (ranks["rank"] == 2).all() and ranks.surviving.between(0, 2).all()
    assert ranks.surviving.sum() < ranks["rank"].sum()  # a large κ prunes
    derived = engine.manifest["derived"]
    assert (
        derived["drslora.dense_fraction"] == 0.7
        and derived["drslora.kappa_schedule"] == "paper_total"
    )
    assert derived["drslora.kappa"]["sparse_steps"] == 12 - round(0.7 * 12)
    assert set(derived["drslora.surviving_fraction_per_task"]) == {"aircraft", "caltech101"}


def test_gated_lora_records_gates(tiny_run) -> None:
    engine = tiny_run("gated_lora", {"lr": "5e-3"}, iterations=12)
    gates = pd.read_parquet(engine.run_dir / "gates.parquet")
    assert len(gates) == 2 * 12 and set(gates.columns) >= {
        "after_task",
        "encoder",
        "layer",
        "kind",
        "score",
        "active",
    }
    assert (gates.active == (gates.score >= 0.1)).all()
    assert (gates.score < 0.15).any()  # the |s| penalty moved scores down
    derived = engine.manifest["derived"]
    assert derived["gated_lora.score_lr"] == pytest.approx(5e-3 * 500 / 12)


@pytest.mark.parametrize("schedule", ["paper_total", "official"])
@pytest.mark.parametrize(("kappa_max", "levels"), [(0.0, 50), (0.005, 1)])
def test_a_schedule_without_shrinkage_is_zero_not_nan(schedule, kappa_max, levels):
    """κ_max = 0 (or a single level at 0) turns the ℓ1 step off: drslora = LoRA with w."""
    kappas, facts = kappa_schedule(80, 0.7, kappa_max, levels, schedule, 1000)
    assert np.all(kappas == 0.0)
    assert facts["kappa_total"] == 0.0 and facts["kappa_last"] == 0.0
