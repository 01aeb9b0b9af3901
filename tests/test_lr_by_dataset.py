"""ZSCL's full-shot MTIL scripts train Aircraft and MNIST at 5e-5 and the rest at 1e-5."""

from __future__ import annotations

import pytest

from cl_bench.engine.settings import resolve_setting
from cl_bench.errors import UserError


def test_real_full_shot_mtil_has_zscl_lrs() -> None:
    s = resolve_setting("mtil", "real")
    assert s.full_finetune_lr == 1e-5
    assert dict(s.full_finetune_lr_by_dataset) == {"aircraft": 5e-5, "mnist": 5e-5}
    lrs = {d: s.full_finetune_lr_for(d) for d in s.datasets}
    assert [d for d, lr in lrs.items() if lr == 5e-5] == ["aircraft", "mnist"]
    assert all(lr == 1e-5 for d, lr in lrs.items() if d not in ("aircraft", "mnist"))
    # order II holds the same datasets in another order: same table
    assert resolve_setting("mtil", "real", order="II").full_finetune_lr_for("mnist") == 5e-5


def test_few_shot_and_toy_and_xtail_have_no_table() -> None:
    assert resolve_setting("mtil", "real", shots=5).full_finetune_lr_by_dataset == ()
    assert resolve_setting("mtil", "toy").full_finetune_lr_by_dataset == ()
    assert resolve_setting("xtail", "real").full_finetune_lr_by_dataset == ()


def test_learner_resolves_lr_none_per_task() -> None:
    import dataclasses

    import torch
    from cl_bench_baselines.finetune import Finetune
    from fakeworld import FakeWorld
    from test_baselines import make_ctx, make_task

    backbone = FakeWorld().backbone(torch.device("cpu"))
    ctx = make_ctx(backbone)
    ctx.full_finetune_lr_by_dataset = {"aircraft": 5e-5}
    learner = Finetune(backbone, Finetune.Config(), ctx)
    aircraft = make_task(backbone)
    other = dataclasses.replace(aircraft, name="dtd")
    assert learner.optimizer_config(aircraft).lr == 5e-5
    assert learner.optimizer_config(other).lr == 1e-3  # make_ctx's full_finetune_lr
    explicit = Finetune(backbone, Finetune.Config(lr=2e-4), ctx)
    assert explicit.optimizer_config(aircraft).lr == 2e-4  # an explicit lr wins


def test_unknown_dataset_in_table_is_a_user_error(tmp_path, monkeypatch) -> None:
    import shutil

    from cl_bench.data import taskfiles

    root = tmp_path / "tasks"
    shutil.copytree(taskfiles.tasks_dir(), root)
    path = root / "settings" / "mtil.toml"
    path.write_text(path.read_text().replace("mnist = 5e-5", "mnsit = 5e-5"))
    monkeypatch.setenv("CLBENCH_TASKS_DIR", str(root))
    with pytest.raises(UserError, match=r"mnsit.*dataset = lr pairs"):
        resolve_setting("mtil", "real")
