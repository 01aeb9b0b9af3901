"""The registries: the generic `Registry`; learners (decorator, entry points, module and file
targets, errors), worlds and executors as instances of it."""

import sys
import textwrap
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

import pytest

from cl_bench.api.hyperparameters import build_config
from cl_bench.api.learner import Learner
from cl_bench.api.registry import (
    BUILTIN_LEARNERS,
    ENTRY_POINT_GROUP,
    LEARNERS,
    Registry,
    available_learners,
    get_learner,
    register_learner,
)
from cl_bench.engine.config import RunConfig
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


# ------------------------------------------------------------------------------ Registry
class Base(LookupError):  # a stdlib base, so that plug-in modules in tmp_path can subclass it
    name = ""


def _module(tmp_path, monkeypatch, name: str, source: str) -> str:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_registry_imports_targets_only_on_lookup(tmp_path, monkeypatch):
    mod = _module(
        tmp_path,
        monkeypatch,
        "reg_lazy_mod",
        """
        class Thing(LookupError):
            pass
        """,
    )
    things = Registry("thing", base=LookupError, targets={"thing": f"{mod}:Thing"})
    assert things.targets() == {"thing": f"{mod}:Thing"} and "thing" in things
    assert mod not in sys.modules  # listing imports nothing
    assert things.get("thing").__name__ == "Thing" and mod in sys.modules


def test_registry_duplicates_name_both_targets():
    things = Registry("thing", base=Base, targets={"a": "pkg.one:A"})
    things.add("a", "pkg.one:A")  # the same target again is no conflict
    with pytest.raises(
        UserError, match=r"thing 'a' is registered twice \(pkg.one:A and pkg.two:A\)"
    ):
        things.add("a", "pkg.two:A")

    @things.register("b")
    class B(Base):
        pass

    assert B.name == "b" and things.get("b") is B
    with pytest.raises(UserError, match="registered twice"):

        @things.register("b")
        class OtherB(Base):
            pass

    @things.register("a")  # a class under a target's name: the lookup refuses, naming both
    class A(Base):
        pass

    with pytest.raises(UserError, match=r"'a' is registered twice \(pkg.one:A and .*:.*A\)"):
        things.get("a")


def test_registry_checks_the_base_class(tmp_path, monkeypatch):
    things = Registry("thing", base=Base, base_hint="test.Base")
    with pytest.raises(UserError, match=r"not a Base subclass; inherit from test.Base"):
        things.register("x")(int)
    mod = _module(tmp_path, monkeypatch, "reg_not_base", "class Other:\n    pass\n")
    with pytest.raises(UserError, match="is not a Base subclass"):
        things.load(f"{mod}:Other")
    anything = Registry("thing")  # no base: anything goes, names are not set
    assert anything.load(f"{mod}:Other").__name__ == "Other"


def test_registry_unknown_name_lists_close_matches_and_valid_names():
    things = Registry("thing", targets={"alpha": "m:A", "beta": "m:B", "alphabet": "m:C"})
    with pytest.raises(UserError) as exc:
        things.get("alpah")
    assert (
        str(exc.value)
        == "unknown thing 'alpah'. Did you mean alpha, alphabet? Valid: alpha, alphabet, beta"
    )
    with pytest.raises(UserError, match=r"^unknown thing 'zzz'\. Valid: alpha, alphabet, beta$"):
        things.check("zzz")
    ordered = Registry("thing", targets={"b": "m:B", "a": "m:A"}, sort=False)
    assert ordered.names() == ["b", "a"]


def test_registry_reads_entry_points_inside_every_lookup(tmp_path, monkeypatch):
    import cl_bench.api.registry as registry

    things = Registry("thing", base=LookupError, entry_point_group="test.things")
    assert things.names() == []
    mod = _module(tmp_path, monkeypatch, "reg_plugin", "class P(LookupError):\n    pass\n")
    broken = _module(tmp_path, monkeypatch, "reg_broken", "raise RuntimeError('plug-in bug')\n")
    eps = [
        EntryPoint("plugin", f"{mod}:P", "test.things"),
        EntryPoint("broken", f"{broken}:X", "test.things"),
    ]
    monkeypatch.setattr(
        registry, "entry_points", lambda group: [e for e in eps if e.group == group]
    )
    assert things.names() == ["broken", "plugin"]  # installed after the registry was made
    assert things.get("plugin").__name__ == "P"
    with pytest.raises(UserError) as exc:
        things.get("broken")
    message = str(exc.value)
    assert "thing plug-in 'broken' (entry point test.things" in message
    assert "'reg_broken' failed to import: RuntimeError: plug-in bug" in message
    things.add("plugin", "elsewhere:P")
    with pytest.raises(
        UserError, match=r"provided twice \(elsewhere:P and reg_plugin:P\); uninstall one"
    ):
        things.get("plugin")


def test_learner_registry_is_one_registry_instance():
    assert LEARNERS.targets() == available_learners()
    assert set(BUILTIN_LEARNERS) <= set(available_learners())
    assert ENTRY_POINT_GROUP == LEARNERS.entry_point_group == "cl_bench.learners"


# ------------------------------------------------------------------------------ worlds, executors
def test_world_lookups():
    from cl_bench.data.worlds import WORLDS, get_world, world_class

    assert WORLDS.names() == ["toy", "real"]
    assert world_class("toy").__name__ == "ToyWorld" and world_class("toy").name == "toy"
    with pytest.raises(UserError) as exc:
        world_class("tyo")
    assert str(exc.value) == "unknown world 'tyo' (did you mean toy?); valid worlds: toy, real"
    with pytest.raises(UserError, match=r"^unknown world 'mars'; valid worlds: toy, real$"):
        RunConfig(world="mars").validate()
    with pytest.raises(UserError, match="--model applies to --world real only"):
        get_world(RunConfig(model="ViT-B-16"))


def test_executor_lookups():
    from cl_bench.sweep.executors import RayExecutor, SlurmExecutor
    from cl_bench.sweep.plan import EXECUTORS, LocalExecutor, make_executor

    assert EXECUTORS.names() == ["local", "slurm", "ray"]
    assert [EXECUTORS.get(n) for n in EXECUTORS] == [LocalExecutor, SlurmExecutor, RayExecutor]
    local = make_executor("local", 3)
    assert isinstance(local, LocalExecutor) and local.capacity == 3
    with pytest.raises(
        UserError,
        match=r"^unknown --executor 'rya' \(did you mean ray\?\); valid: local, slurm, ray$",
    ):
        make_executor("rya")
