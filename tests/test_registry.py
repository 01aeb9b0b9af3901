"""The learner registry: decorator, entry points, module and file targets, errors."""

import textwrap
from dataclasses import dataclass
from importlib.metadata import entry_points

import pytest

from cl_bench.api.hyperparameters import build_config
from cl_bench.api.learner import Learner
from cl_bench.api.registry import available_learners, get_learner, register_learner
from cl_bench.errors import UserError


def test_builtins_and_entry_points_are_listed():
    names = available_learners()
    assert {"zeroshot", "drslora", "gated_lora", "lora", "finetune"} <= set(names)
    eps = {ep.name for ep in entry_points(group="cl_bench.learners")}
    assert "finetune" in eps
    assert get_learner("finetune").__name__ == "Finetune"


def test_decorator_registers_and_rejects_duplicates_and_non_learners():
    @register_learner("test_dummy_learner")
    class Dummy(Learner):
        def train_step(self, batch, step):
            return {}

    assert get_learner("test_dummy_learner") is Dummy
    with pytest.raises(UserError, match="registered twice"):

        @register_learner("test_dummy_learner")
        class Other(Learner):
            def train_step(self, batch, step):
                return {}

    with pytest.raises(UserError, match="not a Learner"):
        register_learner("not_a_learner")(object)


def test_unknown_name_suggests_close_matches():
    with pytest.raises(UserError, match="Did you mean drslora"):
        get_learner("drslra")


def test_module_and_file_targets(tmp_path):
    assert get_learner("cl_bench_baselines.finetune:Finetune").name == "finetune"
    src = tmp_path / "my_learner.py"
    src.write_text(
        textwrap.dedent("""
        from cl_bench import Learner

        class Mine(Learner):
            def train_step(self, batch, step):
                return {}

        class NotOne:
            pass
    """)
    )
    assert get_learner(f"{src}:Mine").__name__ == "Mine"
    with pytest.raises(UserError, match="not a Learner subclass"):
        get_learner(f"{src}:NotOne")
    with pytest.raises(UserError, match="has no attribute"):
        get_learner(f"{src}:Missing")
    with pytest.raises(UserError, match="does not exist"):
        get_learner(f"{tmp_path}/nope.py:X")
    broken = tmp_path / "broken.py"
    broken.write_text("import not_a_real_module_xyz\n")
    with pytest.raises(UserError, match="failed to import"):
        get_learner(f"{broken}:X")


def test_build_config_converts_and_rejects():
    class WithConfig(Learner):
        name = "with_config"

        @dataclass
        class Config:
            lr: float = 1e-3
            steps: int = 3
            flag: bool = False
            kinds: tuple[str, ...] = ("q", "k")
            maybe: float | None = None

        def train_step(self, batch, step):
            return {}

    cfg = build_config(
        WithConfig, {"lr": "5e-4", "steps": "7", "flag": "true", "kinds": "q,v,o", "maybe": "none"}
    )
    assert (cfg.lr, cfg.steps, cfg.flag, cfg.kinds, cfg.maybe) == (
        5e-4,
        7,
        True,
        ("q", "v", "o"),
        None,
    )
    with pytest.raises(UserError, match="Valid keys: lr, steps, flag, kinds, maybe"):
        build_config(WithConfig, {"nope": "1"})
    with pytest.raises(UserError, match="expected int"):
        build_config(WithConfig, {"steps": "1.5"})
    with pytest.raises(UserError, match="expected a boolean"):
        build_config(WithConfig, {"flag": "maybe"})
