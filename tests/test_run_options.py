"""RunConfig is the one definition of a run option: the CLI commands, the sweep's `run_args`,
the TOML loader and the option reference are derived from it, so a new field cannot be
forgotten in one of them."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from cl_bench.cli.app import BENCH_OPTIONS, PER_CELL, app, config_values, run_config
from cl_bench.data.worlds import REAL_WORLD_OPTIONS
from cl_bench.engine.config import (
    GROUPS,
    REAL,
    RunConfig,
    cli_options,
    config_args,
    load_config_file,
    options_markdown,
    run_options,
)
from cl_bench.errors import UserError
from cl_bench.sweep.commands import run_args

TOML_ONLY = {"eval_batch_size", "log_every"}  # decided per field: no flag, a --config key
# Values the config validates, where a made-up one would not do.
VALID = {
    "world": "real",
    "toy_model": "base",
    "device": "cuda",
    "precision": "bf16",
    "holdout": "imagenet,places365",
    "log": ["tensorboard", "wandb"],
}


def every_option_set() -> RunConfig:
    """A config whose every CLI field differs from its default."""
    values: dict[str, typing.Any] = {}
    for opt in cli_options():
        if opt.name in VALID:
            values[opt.name] = VALID[opt.name]
        elif opt.type is bool:
            values[opt.name] = not opt.default
        elif opt.name == "overrides":
            values[opt.name] = {"lr": "1e-4", "kinds": "q,v", "note": "a b"}
        elif int in typing.get_args(opt.type) or opt.type is int:
            values[opt.name] = 7 if opt.default is None else opt.default + 7
        else:
            values[opt.name] = f"/tmp/value of {opt.name}"
    cfg = RunConfig(**values)
    for opt in cli_options():
        assert getattr(cfg, opt.name) != opt.default, opt.name
    return cfg


def command(name: str):
    return get_command(app).commands[name]  # type: ignore[attr-defined]


def help_text(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def test_every_field_is_declared_as_an_option() -> None:
    options = run_options()  # raises for a field declared without option(...)
    assert [o.name for o in options] == [f.name for f in dataclasses.fields(RunConfig)]
    assert {o.name for o in options if not o.cli} == TOML_ONLY
    for o in options:
        assert o.help.endswith(".") and o.group in GROUPS and o.flag.startswith("--")
    assert len({o.flag for o in options}) == len(options)
    # the real world's constructor options are the "Real world" group
    assert [o.name for o in options if o.group == REAL] == list(REAL_WORLD_OPTIONS)


def has_flag(text: str, flag: str) -> bool:
    return re.search(rf"{re.escape(flag)}(?![\w-])", text) is not None


def test_every_cli_field_is_in_the_help_of_run_sweep_and_bench() -> None:
    run_help, sweep_help, bench_help = help_text("run"), help_text("sweep"), help_text("bench")
    for opt in cli_options():
        assert has_flag(run_help, opt.flag), opt.flag
        if opt.name != "out":  # the sweep's own --out is the folder of the grid's run dirs
            assert has_flag(sweep_help, opt.flag) == (opt.name not in PER_CELL), opt.flag
        assert has_flag(bench_help, opt.flag) == (opt.name in BENCH_OPTIONS), opt.flag
    assert "[set] table" in run_help and "--learners" in sweep_help and "--steps" in bench_help


def test_run_args_round_trip_through_clbench_run() -> None:
    """config -> `clbench run` arguments -> parsed by the run command -> the same config."""
    cfg = every_option_set()
    args = run_args(cfg)
    assert args[0] == "run"
    ctx = command("run").make_context("run", args[1:])
    params = dict(ctx.params)
    assert params.pop("config") is None
    assert run_config(ctx, None, params) == cfg
    # defaults survive too: only the set fields are written out
    default = RunConfig()
    ctx = command("run").make_context("run", run_args(default)[1:])
    assert run_config(ctx, None, {k: v for k, v in ctx.params.items() if k != "config"}) == default


def test_sweep_takes_every_option_but_the_per_cell_ones() -> None:
    cfg = every_option_set()
    base = dataclasses.replace(cfg, **{f: getattr(RunConfig(), f) for f in PER_CELL})
    derived = {o.name for o in cli_options()} - set(PER_CELL)
    args = config_args(base, derived)
    ctx = command("sweep").make_context("sweep", ["--learners", "zeroshot", *args])
    options = {k: v for k, v in ctx.params.items() if k in derived}
    assert set(options) == derived
    assert RunConfig(**config_values(options)) == base


def test_bench_defaults_to_drslora() -> None:
    ctx = command("bench").make_context("bench", [])
    assert ctx.params["learner"] == "drslora" and ctx.params["steps"] == 40


def test_config_file_keys_are_the_fields(tmp_path: Path) -> None:
    cfg = every_option_set()
    lines, table = [], []
    for opt in run_options():
        value = getattr(cfg, opt.name)
        if opt.name == "overrides":
            table = [f'{k} = "{v}"' for k, v in value.items()]
        elif isinstance(value, bool):
            lines.append(f"{opt.toml_key} = {'true' if value else 'false'}")
        elif isinstance(value, int):
            lines.append(f"{opt.toml_key} = {value}")
        elif isinstance(value, list):
            lines.append(f"{opt.toml_key} = {json.dumps(value)}")
        else:
            lines.append(f'{opt.toml_key} = "{value}"')
    path = tmp_path / "c.toml"
    path.write_text("\n".join([*lines, "[set]", *table]) + "\n")
    assert RunConfig(**load_config_file(path)) == cfg
    path.write_text("overrides = 1\n")
    with pytest.raises(UserError, match=r"unknown keys \['overrides'\]"):
        load_config_file(path)


def test_toml_only_fields_are_refused_by_run_args() -> None:
    with pytest.raises(UserError, match="log_every has no command-line option"):
        run_args(RunConfig(log_every=3))


def test_the_option_reference_lists_every_field() -> None:
    text = options_markdown()
    for opt in run_options():
        key = f"`[{opt.toml_key}]`" if opt.name == "overrides" else f"`{opt.toml_key}`"
        assert key in text, opt.name


def test_help_and_list_import_no_torch() -> None:
    code = (
        "import sys\n"
        "from cl_bench.cli import main\n"
        "for argv in (['--help'], ['run', '--help'], ['sweep', '--help'], ['bench', '--help'], ['list', 'learners']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as exc:\n"
        "        assert not exc.code, (argv, exc.code)\n"
        "print('torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False"


def test_repeatable_options_are_toml_lists(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('log = ["tensorboard", "wandb"]\nholdout = "none"\n')
    values = load_config_file(path)
    assert values["log"] == ["tensorboard", "wandb"] and values["holdout"] == "none"
    path.write_text('log = "wandb"\n')
    with pytest.raises(UserError, match=r"log must be a list of str, got 'wandb'"):
        load_config_file(path)
    assert "| `--log` | `log` | — |" in options_markdown()
    assert "| `--device` | `device` | `'auto'` |" in options_markdown()
