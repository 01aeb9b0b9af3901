"""The `clbench` command line. Heavy imports (torch, open_clip) live inside command bodies so
`clbench --help` and `clbench list` stay fast."""

from __future__ import annotations

import contextlib
import gc
import inspect
import json
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

try:  # typer >= 0.20 vendors click
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as click_exc  # type: ignore[no-redef]  # same module, older home

from cl_bench.engine.config import RunConfig, cli_options, from_cli, load_config_file
from cl_bench.errors import RunFailed, UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Continual-learning benchmark harness for CLIP-style models.",
)
list_app = typer.Typer(no_args_is_help=True, help="List learners, settings or datasets.")
app.add_typer(list_app, name="list")


# ------------------------------------------------------------------------------ run options
# The options shared by `run`, `sweep` and `bench` are RunConfig's fields (flag, help text,
# help group: cl_bench.engine.config); each command lists only its own options explicitly.
PER_CELL = ("learner", "seed", "out", "resume", "force")  # a sweep sets these for each cell
BENCH_OPTIONS = ("setting", "learner", "world", "overrides", "device", "eval_limit", "precision", "threads")  # fmt: skip


def _option_parameter(opt: Any, default: Any) -> inspect.Parameter:
    """A RunConfig option as a typer option parameter."""
    if opt.name == "overrides":  # repeatable --set KEY=VALUE; parsed by from_cli
        annotation, default = list[str] | None, None
    else:
        annotation = opt.type
    derived = "--" + opt.name.replace("_", "-")
    decls = () if opt.flag == derived else (opt.flag,)
    info = typer.Option(*decls, help=opt.help, rich_help_panel=opt.group)
    return inspect.Parameter(
        opt.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[annotation, info],
    )


def run_options(
    only: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    defaults: dict[str, Any] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command RunConfig's CLI options (all, `only` these, or all but `exclude`) after
    its own parameters; the command receives them as **options (field name -> CLI value)."""
    by_name = {o.name: o for o in cli_options()}
    names = list(only) if only is not None else [n for n in by_name if n not in set(exclude)]
    defaults = defaults or {}

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        sig = inspect.signature(func, eval_str=True)
        own = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
        derived = [
            _option_parameter(by_name[n], defaults.get(n, by_name[n].default)) for n in names
        ]
        func.__signature__ = sig.replace(parameters=[*own, *derived])  # type: ignore[attr-defined]
        return func

    return decorate


def config_values(options: dict[str, Any]) -> dict[str, Any]:
    """The CLI values of RunConfig options -> RunConfig field values."""
    return {k: from_cli(k, v) for k, v in options.items()}


def run_config(ctx: typer.Context, config: Path | None, options: dict[str, Any]) -> RunConfig:
    """`clbench run`'s RunConfig: the --config file, with flags given on the command line
    beating it, and --set items added to its [set] table. Validated."""
    values = load_config_file(config) if config else {}
    flags = config_values(options)
    for key, value in flags.items():
        if key == "overrides":
            continue
        source = ctx.get_parameter_source(key)
        if key not in values or getattr(source, "name", "") == "COMMANDLINE":
            values[key] = value
    values["overrides"] = {**values.get("overrides", {}), **flags.get("overrides", {})}
    cfg = RunConfig(**values)
    cfg.validate()
    return cfg


_START_UP_DONE = False


@contextlib.contextmanager
def start_up_without_gc() -> Iterator[None]:
    """The process's first heavy start-up (torch, open_clip, the engine) runs with Python's
    cyclic garbage collector off; what it built is then frozen out of later collections.

    Why: those imports allocate about a million long-lived objects, none of them garbage,
    and the collector walks them again and again while they are built (≈ 1.2 s of a run's
    start-up here) and once more at exit (≈ 1 s). Only the first call in a process does
    anything (a long-lived caller such as a test session freezes once, not once per run);
    numerics are untouched. docs/performance.md, "Start-up".
    """
    global _START_UP_DONE
    if _START_UP_DONE or not gc.isenabled():
        yield
        return
    _START_UP_DONE = True
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.enable()


def _mount_sub_apps() -> None:
    """The world-specific command groups; their modules import only typer at top level."""
    from cl_bench.data.real.cli import app as data_app
    from cl_bench.data.toy.cli import app as toy_app

    app.add_typer(
        toy_app, name="toy", help="The embedded toy world: pre-train its CLIP, look at it."
    )
    app.add_typer(data_app, name="data", help="Real datasets: prepare and check.")


_mount_sub_apps()


@app.command()
@run_options()
def run(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option(help="TOML file with run options and a \\[set] table.")
    ] = None,
    **options: Any,
) -> None:
    """Stream a setting's tasks through a learner; write accuracy/summary parquet + manifest."""
    cfg = run_config(ctx, config, options)

    from cl_bench.cli.view import RichReporter, print_summary

    with start_up_without_gc():
        from cl_bench.engine.loop import Engine

        reporter = RichReporter()
        # resolves and validates everything before any bar is drawn
        engine = Engine(cfg, reporter)
    with reporter if engine.dist.is_main else contextlib.nullcontext():  # torchrun: rank 0 draws
        outcome = engine.run()
    if engine.dist.is_main:
        print_summary(outcome)


@list_app.command("learners")
def list_learners(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable JSON.")] = False,
) -> None:
    """Registered learners (built-ins and installed plug-ins) with a one-line description."""
    from cl_bench.api.registry import available_learners
    from cl_bench.cli.view import describe_target, print_rows

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
    from cl_bench.cli.view import print_rows
    from cl_bench.engine.settings import available_settings, load_setting_file

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
    setting: Annotated[
        str | None,
        typer.Option(help="This setting's datasets as its protocol defines them (+ classifier)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable JSON.")] = False,
) -> None:
    """Datasets of each world: class and template counts (--setting: class names, union template)."""
    from cl_bench.cli.view import dataset_rows, print_rows

    if setting is not None:
        from cl_bench.data.taskfiles import setting_dataset_rows

        rows = setting_dataset_rows(world, setting)
        if not as_json:  # the class names go to --json only
            rows = [{k: v for k, v in r.items() if k != "classnames"} for r in rows]
        print_rows(rows, as_json, f"Datasets of {setting}")
        return
    print_rows(dataset_rows(world), as_json, "Datasets")


@app.command()
def leaderboard(
    dirs: Annotated[
        list[Path] | None, typer.Argument(help="Run directories or folders containing them.")
    ] = None,
    setting: Annotated[str | None, typer.Option(help="Only runs of this setting.")] = None,
    metric: Annotated[
        str, typer.Option(help="transfer, average, last or all (adds gain, forgetting).")
    ] = "all",
    per_dataset: Annotated[
        bool, typer.Option(help="One block per metric, one column per dataset.")
    ] = False,
    fmt: Annotated[
        str, typer.Option("--format", help="markdown, latex, csv or html (one page).")
    ] = "markdown",
    out: Annotated[Path | None, typer.Option(help="Write to this file instead of stdout.")] = None,
    world: Annotated[str | None, typer.Option(help="Only runs of this data world.")] = None,
    order: Annotated[str | None, typer.Option(help="Only runs of this task order.")] = None,
    shots: Annotated[
        int | None, typer.Option(help="Only runs with this many shots (0 = full).")
    ] = None,
) -> None:
    """Paper-style tables from many runs (mean ± std over seeds, best marked, hold-out, cost)."""
    from cl_bench.analysis.leaderboard import render_leaderboard

    text, skipped = render_leaderboard(
        dirs or [Path("results/runs")],
        setting=setting,
        metric=metric,
        per_dataset=per_dataset,
        fmt=fmt,
        world=world,
        order=order,
        shots=shots,
    )
    for run_dir, reason in skipped:
        print(f"skipped {run_dir}: {reason}", file=sys.stderr)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    else:
        sys.stdout.write(text)


@app.command()
@run_options(exclude=PER_CELL)
def sweep(
    learners: Annotated[
        str, typer.Option(help="Comma-separated learner names, or 'all' (every registered one).")
    ],
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "0,1,2",
    out: Annotated[
        Path, typer.Option(help="Folder that receives one run directory per (learner, seed).")
    ] = Path("results/runs"),
    dry_run: Annotated[
        bool, typer.Option(help="Print what would run, resume or be skipped; run nothing.")
    ] = False,
    jobs: Annotated[
        int | None, typer.Option(help="--executor local: runs in parallel (default 1).")
    ] = None,
    executor: Annotated[
        str, typer.Option(help="Where runs execute: local, slurm (submitit) or ray.")
    ] = "local",
    slurm_partition: Annotated[
        str | None, typer.Option(help="--executor slurm: partition (default: the cluster's).")
    ] = None,
    gpus_per_run: Annotated[
        int | None, typer.Option(help="slurm / ray: GPUs per run (default 1 with --device cuda).")
    ] = None,
    cpus_per_run: Annotated[
        int | None, typer.Option(help="slurm / ray: CPU cores per run (and its torch threads).")
    ] = None,
    mem_gb: Annotated[
        float | None, typer.Option(help="--executor slurm: host memory per run in GB.")
    ] = None,
    time_min: Annotated[
        int | None, typer.Option(help="--executor slurm (required): time limit per run in minutes.")
    ] = None,
    array_parallelism: Annotated[
        int | None,
        typer.Option(help="--executor slurm: most jobs queued or running at once (default all)."),
    ] = None,
    slurm_logs: Annotated[
        Path | None,
        typer.Option(help="--executor slurm: folder for job logs (default ./slurm-logs/<job id>)."),
    ] = None,
    submitit_cluster: Annotated[
        str | None, typer.Option(hidden=True, help="submitit cluster: slurm or local (tests).")
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(help="--executor ray: cluster to join, e.g. auto (default: a new local one)."),
    ] = None,
    **options: Any,
) -> None:
    """Run a learner x seed grid; finished runs are skipped, interrupted ones resumed."""
    from cl_bench.sweep.executors import check_gpu_request
    from cl_bench.sweep.plan import (
        GridView,
        check_states,
        executor_options,
        expand_learners,
        make_executor,
        parse_seeds,
        plan_jobs,
        run_sweep,
    )

    names, seed_list = expand_learners(learners), parse_seeds(seeds)
    base = RunConfig(**config_values(options))
    base.validate()
    executor_args = executor_options(
        executor, jobs, partition=slurm_partition,
        gpus_per_run=check_gpu_request(executor, base.device, gpus_per_run),
        cpus_per_run=cpus_per_run, mem_gb=mem_gb, time_min=time_min,
        array_parallelism=array_parallelism, slurm_logs=slurm_logs, cluster=submitit_cluster,
        ray_address=ray_address,
    )  # fmt: skip
    plan = plan_jobs(base, names, seed_list, out)
    if dry_run:
        for job in plan:
            print(f"{job.action:7s} {job.learner} seed {job.seed} -> {job.run_dir}")
        return
    runner = make_executor(executor, **executor_args)  # a cluster executor connects here
    with GridView(names, seed_list) as view:
        states = run_sweep(plan, runner, view)
    check_states(states)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="One run directory.")],
    out: Annotated[
        Path | None, typer.Option(help="Folder for the PNGs (default RUN_DIR/plots).")
    ] = None,
    as_html: Annotated[
        bool, typer.Option("--html", help="One self-contained OUT/report.html instead.")
    ] = False,
) -> None:
    """PNG plots of one run: accuracy matrix and curves, training curves, drslora ranks, gates."""
    if as_html:
        from cl_bench.analysis.report_html import report_html

        print(report_html(run_dir, out))
        return
    from cl_bench.analysis.report import report_run

    for path in report_run(run_dir, out):
        print(path)


@app.command()
def compare(
    dirs: Annotated[list[Path], typer.Argument(help="Run directories or folders containing them.")],
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("compare.png"),
    setting: Annotated[str | None, typer.Option(help="Only runs of this setting.")] = None,
    world: Annotated[str | None, typer.Option(help="Only runs of this data world.")] = None,
    order: Annotated[str | None, typer.Option(help="Only runs of this task order.")] = None,
    shots: Annotated[int | None, typer.Option(help="Only runs with this many shots.")] = None,
) -> None:
    """Learners side by side: Transfer / Average / Last bars (mean ± std over seeds)."""
    from cl_bench.analysis.report import compare_runs

    filters = {"setting": setting, "world": world, "order": order, "shots": shots}
    path, skipped = compare_runs(dirs, out, filters)
    for run_dir, reason in skipped:
        print(f"skipped {run_dir}: {reason}", file=sys.stderr)
    print(path)


@app.command("import")
def import_matrix(
    matrix: Annotated[Path, typer.Argument(help="A published accuracy matrix: .npy or .csv.")],
    setting: Annotated[str, typer.Option(help="The setting it was measured on (mtil, xtail).")],
    learner: Annotated[str, typer.Option(help="The learner's name in the tables.")],
    source: Annotated[str, typer.Option(help="Where it was published: paper, table, file.")],
    order: Annotated[str | None, typer.Option(help="The task order (default: the first).")] = None,
    shots: Annotated[
        int | None, typer.Option(help="Shots per class (default: the setting's).")
    ] = None,
    layout: Annotated[
        str, typer.Option(help="plain (T or T+1 rows x T) or zscl (ZSCL's mtil/results/*.npy).")
    ] = "plain",
    scale: Annotated[str, typer.Option(help="percent (0-100) or fraction (0-1).")] = "percent",
    role: Annotated[
        str | None, typer.Option(help="continual (ranked) or reference (default: by learner).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the published run, if several.")] = 0,
    model: Annotated[str | None, typer.Option(help="Its backbone (default ViT-B-16).")] = None,
    pretrained: Annotated[
        str | None, typer.Option(help="Its weights tag (default openai).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Run directory to write (default results/runs/<id>).")
    ] = None,
) -> None:
    """A paper's accuracy matrix as a run directory, shown by `clbench leaderboard` beside yours."""
    from dataclasses import asdict

    from cl_bench.analysis.importer import import_matrix as write_import
    from cl_bench.analysis.results import SUMMARY_FILE, read_parquet
    from cl_bench.engine.settings import resolve_setting
    from cl_bench.models.openclip import DEFAULT_MODEL, DEFAULT_PRETRAINED

    resolved = asdict(resolve_setting(setting, "real", order, shots))
    run_dir = write_import(
        matrix, resolved, learner=learner, source=source, model=model or DEFAULT_MODEL,
        pretrained=pretrained or DEFAULT_PRETRAINED, out=out, seed=seed, role=role,
        layout=layout, scale=scale,
    )  # fmt: skip
    mean = read_parquet(run_dir / SUMMARY_FILE).set_index("dataset").loc["mean"]
    shown = ", ".join(f"{k} {mean[k]:.1f}" for k in ("transfer", "average", "last"))
    print(f"{run_dir}: {learner} ({source}): {shown}")


@app.command()
@run_options(only=BENCH_OPTIONS, defaults={"learner": "drslora"})
def bench(
    steps: Annotated[int, typer.Option(help="Training steps per measurement.")] = 40,
    repeats: Annotated[
        int, typer.Option(help="Engine/bare pairs; the median ratio is reported.")
    ] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
    **options: Any,
) -> None:
    """Harness overhead: engine vs bare training steps and evaluation (ratios, rates, memory)."""
    from cl_bench.engine.bench import format_result, run_bench

    result = run_bench(steps=steps, repeats=repeats, **config_values(options))
    if as_json:
        print(json.dumps(result.to_dict()))
    else:
        print(format_result(result))


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one line (several problems: a count line, then one line
    each) and exit 2; --debug shows the traceback."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    try:
        rc = app(args=args, standalone_mode=False, prog_name="clbench")
        if isinstance(rc, int) and rc:
            sys.exit(rc)
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
