"""ReSoRA's redundancy terms (cl_bench.models.redundancy) on small matrices, and the `resora`
learner: zero for orthogonal subspaces, growth with overlap, gradients to A and B, and a short
run through the engine that logs the term and merges cleanly."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from learner_steps import steps

from cl_bench.api.hyperparameters import build_config
from cl_bench.api.registry import get_learner
from cl_bench.errors import UserError
from cl_bench.learners.resora import ReSoRA
from cl_bench.models.lora import LowRankBlock
from cl_bench.models.redundancy import (
    FORMS,
    block_redundancy,
    redundancy_loss,
    redundancy_penalty,
    set_redundancy,
)


def orthogonal_rows(r: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, r, generator=g))
    scales = torch.linspace(0.5, 3.0, r)[:, None]  # unequal lengths: the terms are scale-free
    return q.T * scales  # [r, d], mutually orthogonal rows


def pair_at_angle(overlap: float) -> torch.Tensor:
    """Two unit vectors in the plane, 0 = orthogonal, 1 = identical direction."""
    angle = math.pi / 2 * (1.0 - overlap)
    return torch.tensor([[1.0, 0.0, 0.0], [math.cos(angle), math.sin(angle), 0.0]])


@pytest.mark.parametrize("form", FORMS)
def test_zero_for_orthogonal_subspaces(form: str) -> None:
    for r, d in [(2, 3), (3, 8), (5, 16)]:
        value = set_redundancy(orthogonal_rows(r, d), form)
        assert float(value) == pytest.approx(0.0, abs=1e-5)
    assert float(set_redundancy(torch.zeros(4, 8), form)) == 0.0  # B = 0 at init: no subspace
    assert float(set_redundancy(torch.randn(1, 8), form)) == 0.0  # rank 1: nothing to compare


@pytest.mark.parametrize("form", FORMS)
def test_grows_with_redundancy_and_is_bounded(form: str) -> None:
    values = [float(set_redundancy(pair_at_angle(t), form)) for t in (0.0, 0.2, 0.5, 0.8, 1.0)]
    assert values[0] == pytest.approx(0.0, abs=1e-6)
    assert all(b > a + 1e-3 for a, b in zip(values, values[1:], strict=False)), values
    assert values[-1] == pytest.approx(1.0, abs=2e-3)
    collinear = torch.randn(1, 12) * torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    assert float(set_redundancy(collinear, form)) == pytest.approx(1.0, abs=2e-3)  # sign-free
    rows = torch.randn(6, 10)
    assert 0.0 < float(set_redundancy(rows, form)) < 1.0


def test_forms_at_known_values() -> None:
    # two unit vectors at cos = 0.5: cos² = 0.25, |cos| = 0.5
    v = pair_at_angle(1.0 / 3.0)  # angle 60°
    assert float(set_redundancy(v, "pairwise_cosine")) == pytest.approx(0.25, abs=1e-6)
    assert float(set_redundancy(v, "pairwise_euclidean")) == pytest.approx(0.5, abs=1e-6)
    # linear: R² of one vector on the other = cos² / (1 + ridge)
    assert float(set_redundancy(v, "linear")) == pytest.approx(0.25 / 1.001, abs=1e-6)
    # kernel: K_12 = (e^{-γ d²} − e^{-2γ}) / (1 − e^{-2γ}), d² = 2 − 2·0.5 = 1, γ = 1
    k = (math.exp(-1.0) - math.exp(-2.0)) / (1.0 - math.exp(-2.0))
    alignment = math.sqrt(2) / math.sqrt(2 + 2 * k * k)
    expected = (1.0 - alignment) / (1.0 - 2**-0.5)
    assert float(set_redundancy(v, "kernel")) == pytest.approx(expected, abs=1e-6)


def test_set_to_set_sees_redundancy_that_pairs_do_not() -> None:
    u1, u2 = torch.eye(3)[0], torch.eye(3)[1]
    spanned = torch.stack([u1, u2, (u1 + u2) / math.sqrt(2)])  # third lies in span of the others
    linear = float(set_redundancy(spanned, "linear"))
    pairwise = float(set_redundancy(spanned, "pairwise_cosine"))
    assert linear > 0.99 and pairwise == pytest.approx(1.0 / 3.0, abs=1e-6)


def redundant_block(seed: int = 0) -> LowRankBlock:
    torch.manual_seed(seed)
    block = LowRankBlock(16, 12, 4, "lora", torch.device("cpu"))
    with torch.no_grad():  # overlapping columns of B and rows of A
        block.lora_B.copy_(torch.randn(12, 1) + 0.3 * torch.randn(12, 4))
        block.lora_A.add_(block.lora_A[:1].clone())
    return block


@pytest.mark.parametrize("form", FORMS)
def test_gradients_reach_A_and_B_and_descent_reduces_redundancy(form: str) -> None:
    block = redundant_block()
    with torch.no_grad():
        before = float(block_redundancy(block.lora_A, block.lora_B, form))
    value = redundancy_penalty([block], form)
    value.backward()
    for grad in (block.lora_A.grad, block.lora_B.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    optimizer = torch.optim.SGD([block.lora_A, block.lora_B], lr=0.5)
    for _ in range(50):
        optimizer.zero_grad()
        redundancy_penalty([block], form).backward()
        optimizer.step()
    with torch.no_grad():
        after = float(block_redundancy(block.lora_A, block.lora_B, form))
    assert after < 0.5 * before, (before, after)


@pytest.mark.parametrize("form", FORMS)
def test_zero_B_at_init_gives_zero_term_and_finite_gradients(form: str) -> None:
    block = LowRankBlock(16, 12, 4, "lora", torch.device("cpu"))  # B = 0
    value = redundancy_penalty([block], form)
    value.backward()
    assert torch.isfinite(block.lora_B.grad).all() and torch.isfinite(block.lora_A.grad).all()
    with torch.no_grad():
        a_term = float(set_redundancy(block.lora_A, form))
    assert float(value.detach()) == pytest.approx(0.5 * a_term, abs=1e-7)


def test_block_term_is_mean_of_A_rows_and_B_columns() -> None:
    block = redundant_block()
    with torch.no_grad():
        a = float(set_redundancy(block.lora_A, "linear"))
        b = float(set_redundancy(block.lora_B.T, "linear"))
        term = float(block_redundancy(block.lora_A, block.lora_B, "linear"))
        other = LowRankBlock(16, 12, 4, "lora", torch.device("cpu"))
        mean = float(redundancy_penalty([block, other], "linear"))
        parts = [float(block_redundancy(x.lora_A, x.lora_B, "linear")) for x in (block, other)]
    assert term == pytest.approx((a + b) / 2, rel=1e-6)
    assert mean == pytest.approx(sum(parts) / 2, rel=1e-6)


def test_loss_switch_and_errors() -> None:
    block = redundant_block()
    assert redundancy_loss([block], "none", 1.0) == (None, {})
    loss, scalars = redundancy_loss([block], "kernel", 2.0)
    assert float(loss.detach()) == pytest.approx(2.0 * float(scalars["redundancy"]))
    with pytest.raises(UserError, match="redundancy form"):
        redundancy_loss([block], "quadratic", 1.0)
    with pytest.raises(UserError, match="redundancy_weight"):
        redundancy_loss([block], "linear", -1.0)
    with pytest.raises(UserError, match="no LoRA blocks"):
        redundancy_loss([], "linear", 1.0)


def test_learner_config_and_registry() -> None:
    assert get_learner("resora") is ReSoRA
    assert ReSoRA.Config().redundancy == "linear" and ReSoRA.Config().redundancy_weight == 1.0
    cfg = build_config(ReSoRA, {"redundancy": "kernel", "redundancy_weight": "0.3"})
    assert (cfg.redundancy, cfg.redundancy_weight, cfg.rank) == ("kernel", 0.3, 16)
    with pytest.raises(UserError):
        build_config(ReSoRA, {"redundancy": "cubic"})


def test_resora_trains_logs_the_term_and_merges(tmp_path, tiny_run, fake_base_model) -> None:
    engine = tiny_run("resora", {"lr": "5e-3", "redundancy_weight": "5"})
    model = engine.learner.model
    base = fake_base_model
    assert list(model.state_dict()) == list(base.state_dict())
    assert [type(m) for m in model.modules()] == [type(m) for m in base.modules()]  # unwrapped
    assert engine.manifest["status"] == "finished"
    log = pd.read_parquet(engine.run_dir / "train_log.parquet")
    assert "redundancy" in log and log["redundancy"].between(0.0, 1.0).all()
    assert (log["redundancy"] > 0).any()
    # weight 0 is plain lora exactly: same seed, same data, same final weights
    zero = tiny_run(
        "resora", {"lr": "5e-3", "redundancy_weight": "0"}, out=tmp_path / "zero" / "resora"
    )
    plain = tiny_run("lora", {"lr": "5e-3"}, out=tmp_path / "plain" / "lora")
    for name, p in plain.learner.model.named_parameters():
        assert torch.equal(p, zero.learner.model.get_parameter(name)), name
    assert not torch.equal(
        model.visual.transformer.resblocks[0].attn.in_proj_weight,
        zero.learner.model.visual.transformer.resblocks[0].attn.in_proj_weight,
    )  # the term changed training


@pytest.mark.parametrize("learner", ["lora", "drslora", "gated_lora"])
def test_any_lora_family_learner_can_switch_the_term_on(learner: str) -> None:
    from cl_bench.api.context import RunContext
    from cl_bench.api.learner import Batch, StepInfo, Task
    from cl_bench.models.tiny import random_tiny_clip

    def one_step(overrides: dict[str, str]) -> dict:
        backbone = random_tiny_clip(seed=0)
        ctx = RunContext(
            torch.device("cpu"), 0, "xtail", True, "toy", 10, 500, 1e-4, 32, lambda t: t
        )
        cls = get_learner(learner)
        instance = cls(backbone, build_config(cls, overrides), ctx)
        tokens = backbone.tokenizer(["a photo of a cat.", "a photo of a dog."])
        task = Task(0, "aircraft", ("cat", "dog"), ("", ""), tokens, 4, 4, 10)
        steps(instance).begin(task)
        images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        batch = Batch(images, torch.tensor([0, 1, 0, 1]), tokens, 0)
        steps(instance).step(batch, StepInfo(0, 4, 0, 10))  # B leaves 0
        return steps(instance).step(batch, StepInfo(1, 4, 0, 10))

    assert "redundancy" not in one_step({})  # off by default
    on = one_step({"redundancy": "kernel", "redundancy_weight": "0.5"})
    assert 0.0 < float(on["redundancy"]) <= 1.0
