"""The `clbench` command line. Heavy imports (torch, open_clip) live inside command bodies so
`clbench --help` and `clbench list` stay fast."""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer

try:  # typer >= 0.20 vendors click
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as click_exc

from cl_bench.errors import RunFailed, UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Continual-learning benchmark harness for CLIP-style models.",
)
list_app = typer.Typer(no_args_is_help=True, help="List learners, settings or datasets.")
app.add_typer(list_app, name="list")


def _mount_optional(name: str, module: str, help_text: str) -> None:
    """Sub-apps of other modules (toy, data, ...) — mounted when their module exists."""
    import importlib.util

    try:
        if importlib.util.find_spec(module) is None:
            return
    except ModuleNotFoundError:
        return
    sub = __import__(module, fromlist=["app"]).app
    app.add_typer(sub, name=name, help=help_text)


def _parse_sets(values: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set lr=1e-4")
        out[key.strip()] = value.strip()
    return out


@app.command()
def run(
    ctx: typer.Context,
    setting: Annotated[
        str, typer.Option(help="Protocol: xtail or mtil (tasks/settings/*.toml).")
    ] = "xtail",
    learner: Annotated[
        str, typer.Option(help="Learner name, package.module:Class or file.py:Class.")
    ] = "zeroshot",
    world: Annotated[
        str, typer.Option(help="Data world: toy (embedded, default) or real.")
    ] = "toy",
    order: Annotated[str | None, typer.Option(help="Task order (MTIL: I or II).")] = None,
    shots: Annotated[
        int | None, typer.Option(help="Images per class for training (0 = all).")
    ] = None,
    iterations: Annotated[
        int | None, typer.Option(help="Override the per-task iteration count.")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Override the training batch size.")
    ] = None,
    seed: Annotated[
        int, typer.Option(help="Seed for initialisation, batch order, augmentation.")
    ] = 0,
    out: Annotated[
        str | None,
        typer.Option(
            help="Run directory (default results/runs/<world>-<setting>-<learner>-seed<S>)."
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted run from its last completed task.")
    ] = False,
    force: Annotated[
        bool, typer.Option(help="Overwrite a finished run / resume despite a changed config.")
    ] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Learner hyperparameter KEY=VALUE (repeatable)."),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    config: Annotated[
        Path | None, typer.Option(help="TOML file with run options and a [set] table.")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Real world: open_clip model name (default ViT-B-16).")
    ] = None,
    pretrained: Annotated[
        str | None, typer.Option(help="Real world: open_clip weights tag (default openai).")
    ] = None,
    data_root: Annotated[
        str | None, typer.Option(help="Real world: directory holding the datasets.")
    ] = None,
    eval_limit: Annotated[
        int | None, typer.Option(help="At most N test images per dataset (quick looks).")
    ] = None,
    max_tasks: Annotated[
        int | None, typer.Option(help="Only the first N tasks of the stream (quick looks).")
    ] = None,
) -> None:
    """Stream a setting's tasks through a learner; write accuracy/summary parquet + manifest."""
    from cl_bench.config import RunConfig, load_config_file

    values = load_config_file(config) if config else {}
    flags = {
        "setting": setting, "learner": learner, "world": world, "order": order, "shots": shots,
        "iterations": iterations, "batch_size": batch_size, "seed": seed, "out": out, "resume": resume,
        "force": force, "device": device, "model": model, "pretrained": pretrained, "data_root": data_root,
        "eval_limit": eval_limit, "max_tasks": max_tasks,
    }  # fmt: skip
    for key, value in flags.items():  # flags given on the command line beat the file
        source = ctx.get_parameter_source(key)
        if key not in values or getattr(source, "name", "") == "COMMANDLINE":
            values[key] = value
    values["overrides"] = {**values.get("overrides", {}), **_parse_sets(set_ or [])}
    cfg = RunConfig(**values)
    cfg.validate()

    from cl_bench.cli_view import RichReporter, print_summary
    from cl_bench.engine import Engine

    reporter = RichReporter()
    engine = Engine(cfg, reporter)  # resolves and validates everything before any bar is drawn
    with reporter:
        outcome = engine.run()
    print_summary(outcome)


@list_app.command("learners")
def list_learners(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable JSON.")] = False,
) -> None:
    """Registered learners (built-ins and installed plug-ins) with a one-line description."""
    from cl_bench.cli_view import describe_target, print_rows
    from cl_bench.learner import available_learners

    rows = [
        {"name": n, "target": t, "description": describe_target(t)}
        for n, t in available_learners().items()
    ]
    print_rows(rows, as_json, "Learners")


@list_app.command("settings")
def list_settings(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable JSON.")] = False,
) -> None:
    """Protocols in tasks/settings/."""
    from cl_bench.cli_view import print_rows
    from cl_bench.settings import available_settings, load_setting_file

    rows = []
    for name in available_settings():
        raw = load_setting_file(name)
        datasets = raw.get("datasets") or next(iter(raw["orders"].values()))
        rows.append(
            {
                "name": name,
                "version": raw["version"],
                "tasks": len(datasets),
                "task_agnostic": raw["task_agnostic"],
                "shots": raw["shots"],
                "iterations": raw["iterations"],
                "description": raw["description"],
            }
        )
    print_rows(rows, as_json, "Settings")


@list_app.command("datasets")
def list_datasets(
    world: Annotated[str, typer.Option(help="toy, real or all.")] = "all",
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable JSON.")] = False,
) -> None:
    """Datasets of each world: class and template counts."""
    from cl_bench.cli_view import dataset_rows, print_rows

    print_rows(dataset_rows(world), as_json, "Datasets")


@app.command()
def leaderboard(
    dirs: Annotated[
        list[Path] | None, typer.Argument(help="Run directories or folders containing them.")
    ] = None,
    setting: Annotated[str | None, typer.Option(help="Only runs of this setting.")] = None,
    metric: Annotated[str, typer.Option(help="transfer, average, last or all.")] = "all",
    per_dataset: Annotated[bool, typer.Option(help="One column per dataset.")] = False,
    fmt: Annotated[
        str, typer.Option("--format", help="markdown, latex, csv or html.")
    ] = "markdown",
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
) -> None:
    """Paper-style tables from many runs (mean ± std over seeds)."""
    from cl_bench.leaderboard import render_leaderboard

    text, skipped = render_leaderboard(
        dirs or [Path("results/runs")],
        setting=setting,
        metric=metric,
        per_dataset=per_dataset,
        fmt=fmt,
    )
    for run_dir, reason in skipped:
        print(f"skipped {run_dir}: {reason}", file=sys.stderr)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    else:
        sys.stdout.write(text)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one line and exit 2; --debug shows the traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    _mount_optional(
        "toy", "cl_bench.data.toy.cli", "The embedded toy world: pre-train its CLIP, look at it."
    )
    _mount_optional("data", "cl_bench.data.real.cli", "Real datasets: prepare and check.")
    try:
        app(args=args, standalone_mode=False, prog_name="clbench")
    except UserError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except click_exc.NoArgsIsHelpError:
        sys.exit(0)
    except click_exc.UsageError as exc:
        hint = (
            f" (see clbench {exc.ctx.info_name} --help)"
            if exc.ctx and exc.ctx.info_name != "clbench"
            else " (see clbench --help)"
        )
        print(f"error: {exc.format_message()}{hint}", file=sys.stderr)
        sys.exit(2)
    except RunFailed as exc:
        if debug:
            traceback.print_exc()
        print(f"run failed: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted; resume with --resume", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()


__all__ = ["app", "main", "json"]
