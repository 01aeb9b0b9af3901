"""The toy CLIP sizes (`--toy-model`): configs, where weights live, settings, run dirs, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cl_bench.data.taskfiles import resolve_setting
from cl_bench.data.toy.model import TOY_MODELS, WEIGHTS_PATH, toy_model
from cl_bench.engine.config import RunConfig
from cl_bench.engine.rundir import default_run_dir
from cl_bench.errors import UserError


def test_small_is_the_shipped_model_and_base_lives_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLBENCH_CACHE", str(tmp_path))
    assert toy_model("small").weights_path == WEIGHTS_PATH
    assert (
        toy_model("base").weights_path == tmp_path / "toy" / "models" / "toy_clip_base.safetensors"
    )
    with pytest.raises(UserError, match="unknown toy model 'huge'; valid: small, base"):
        toy_model("huge")


def test_base_config_doubles_the_width_and_keeps_patch_heads_and_context():
    small = json.loads(toy_model("small").config_path.read_text())
    base = json.loads(toy_model("base").config_path.read_text())
    assert base["embed_dim"] == 2 * small["embed_dim"] == 256
    for tower in ("vision_cfg", "text_cfg"):
        assert base[tower]["width"] == 2 * small[tower]["width"]
        assert base[tower]["layers"] == small[tower]["layers"]
    assert base["vision_cfg"]["patch_size"] == small["vision_cfg"]["patch_size"] == 8
    assert base["vision_cfg"]["head_width"] == small["vision_cfg"]["head_width"]  # head dim 32
    assert base["text_cfg"]["width"] // base["text_cfg"]["heads"] == 32
    assert base["text_cfg"]["context_length"] == small["text_cfg"]["context_length"]


def test_base_has_about_four_times_the_small_models_step_flops():
    """The capacity experiment's premise (issue 25: 'about 4x the compute'), counted by torch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cl_bench.data.toy.model import create_toy_clip, toy_tokenizer

    flops = {}
    for key in ("small", "base"):
        spec = TOY_MODELS[key]
        model = create_toy_clip(spec)
        images = torch.zeros(4, 3, 32, 32)
        text = toy_tokenizer(spec)(["a photo of a cat."] * 4)
        with FlopCounterMode(display=False) as counter:
            model(images, text)
        flops[key] = counter.get_total_flops()
    assert 3.0 < flops["base"] / flops["small"] < 4.5


def test_a_settings_toy_variant_section_replaces_the_toy_keys_it_names():
    small = resolve_setting("xtail", "toy")
    base = resolve_setting("xtail", "toy", toy_model="base")
    assert (base.iterations, base.batch_size) == (small.iterations, small.batch_size)
    assert base.full_finetune_lr > 0  # [toy.base] names its own (calibrated) value
    assert resolve_setting("xtail", "toy", toy_model="small") == small


def test_a_toy_variant_without_its_own_lr_is_refused(tmp_path, monkeypatch):
    from cl_bench.data.taskfiles import tasks_dir

    src = tasks_dir()
    tasks = tmp_path / "tasks"
    (tasks / "settings").mkdir(parents=True)
    (tasks / "datasets").symlink_to(src / "datasets")
    text = (src / "settings" / "mtil.toml").read_text()
    assert "[toy.base]" not in text
    (tasks / "settings" / "mtil.toml").write_text(text)
    (tasks / "settings" / "odd.toml").write_text(
        text.replace('name = "mtil"', 'name = "odd"') + "\n[toy.base]\nbatchsize = 3\n"
    )
    monkeypatch.setenv("CLBENCH_TASKS_DIR", str(tasks))
    with pytest.raises(UserError, match=r"\[toy.base\] needs full_finetune_lr"):
        resolve_setting("mtil", "toy", toy_model="base")
    with pytest.raises(UserError, match=r"unknown keys \['batchsize'\] in \[toy.base\]"):
        resolve_setting("odd", "toy")


def test_toy_model_is_checked_against_the_world_and_names_the_run_dir():
    RunConfig(toy_model="base").validate()
    with pytest.raises(UserError, match="unknown --toy-model 'tiny'; valid: small, base"):
        RunConfig(toy_model="tiny").validate()
    from cl_bench.data.worlds import get_world

    with pytest.raises(UserError, match="--toy-model applies to --world toy only"):
        get_world(RunConfig(world="real", toy_model="base"))
    setting = resolve_setting("xtail", "toy")
    assert default_run_dir(RunConfig(), setting, "lora", "toy").name == "toy-xtail-lora-seed0"
    named = default_run_dir(RunConfig(toy_model="base"), setting, "lora", "toy").name
    assert named == "toy-base-xtail-lora-seed0"


def test_base_weights_load_from_the_cache_and_the_manifest_names_them(tmp_path, monkeypatch):
    """A randomly initialised base model saved where `clbench toy pretrain --model base`
    writes: the world finds it, loads it at width 256 and describes it."""
    import torch

    from cl_bench.data.toy.model import create_toy_clip, save_weights
    from cl_bench.data.worlds import get_world

    monkeypatch.setenv("CLBENCH_CACHE", str(tmp_path))
    cfg = RunConfig(toy_model="base")
    world = get_world(cfg)
    assert [p for p in world.check([]) if "clbench toy pretrain --model base" in p]
    spec = toy_model("base")
    save_weights(create_toy_clip(spec), spec.weights_path, {"model": spec.config_name})
    assert world.check([]) == []
    backbone = world.backbone(torch.device("cpu"))
    assert backbone.model.visual.transformer.width == 256
    assert backbone.name == "toy-clip-base"
    about = world.describe()
    assert (about["toy_model"], about["model_config"]) == ("base", "toy-clip-base")
    assert about["weights_file"] == "toy_clip_base.safetensors"


def test_run_with_missing_base_weights_exits_2_with_the_command_to_make_them(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "CLBENCH_CACHE": str(tmp_path)}
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "cl_bench.cli", "run", "--toy-model", "base", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "clbench toy pretrain --model base" in proc.stderr


def test_pretrain_with_an_unknown_model_exits_2_naming_the_valid_ones(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "cl_bench.cli", "toy", "pretrain", "--model", "huge",
         "--out", str(tmp_path / "w.safetensors")],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "unknown toy model 'huge'; valid: small, base" in proc.stderr
    assert not (tmp_path / "w.safetensors").exists()


def test_weights_of_the_other_size_are_refused_with_the_command_to_remake_them(
    tmp_path, monkeypatch
):
    """The shipped small weights copied to where base looks: a UserError, not a traceback."""
    import shutil

    import torch

    from cl_bench.data.toy.model import load_toy_backbone

    monkeypatch.setenv("CLBENCH_CACHE", str(tmp_path))
    spec = toy_model("base")
    spec.weights_path.parent.mkdir(parents=True)
    shutil.copy(WEIGHTS_PATH, spec.weights_path)
    with pytest.raises(
        UserError, match=r"does not match the toy-clip-base config \(size mismatch"
    ) as err:
        load_toy_backbone(torch.device("cpu"), spec.weights_path, spec)
    assert "re-create it with `clbench toy pretrain --model base`" in str(err.value)
    assert "\n" not in str(err.value)
