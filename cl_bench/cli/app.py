"""The `clbench` command line. Heavy imports (torch, open_clip) live inside command bodies so
`clbench --help` and `clbench list` stay fast."""

from __future__ import annotations

import contextlib
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


# Options shared by `run`, `sweep` and `bench` (one definition, one help text).
OrderOption = Annotated[str | None, typer.Option(help="Task order (MTIL: I or II).")]
ShotsOption = Annotated[int | None, typer.Option(help="Images per class for training (0 = all).")]
IterationsOption = Annotated[
    int | None, typer.Option(help="Override the per-task iteration count.")
]
BatchSizeOption = Annotated[int | None, typer.Option(help="Override the training batch size.")]
DeviceOption = Annotated[str, typer.Option(help="cpu or cuda.")]
EvalLimitOption = Annotated[
    int | None, typer.Option(help="At most N test images per dataset (quick looks).")
]
MaxTasksOption = Annotated[
    int | None, typer.Option(help="Only the first N tasks of the stream (quick looks).")
]
DataRootOption = Annotated[
    str | None, typer.Option(help="Real world: directory holding the datasets.")
]
ModelOption = Annotated[
    str | None, typer.Option(help="Real world: open_clip model name (default ViT-B-16).")
]
PretrainedOption = Annotated[
    str | None, typer.Option(help="Real world: open_clip weights tag (default openai).")
]
SplitDirOption = Annotated[
    str | None, typer.Option(help="Real world: directory of CoOp-style split JSON files.")
]
ReferenceImagesOption = Annotated[
    str | None, typer.Option(help="Real world: reference image folder for ZSCL.")
]
ReferenceCaptionsOption = Annotated[
    str | None, typer.Option(help="Real world: reference caption list (one per line) for ZSCL.")
]


def _mount_sub_apps() -> None:
    """The world-specific command groups; their modules import only typer at top level."""
    from cl_bench.data.real.cli import app as data_app
    from cl_bench.data.toy.cli import app as toy_app

    app.add_typer(
        toy_app, name="toy", help="The embedded toy world: pre-train its CLIP, look at it."
    )
    app.add_typer(data_app, name="data", help="Real datasets: prepare and check.")


_mount_sub_apps()


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
    order: OrderOption = None,
    shots: ShotsOption = None,
    iterations: IterationsOption = None,
    batch_size: BatchSizeOption = None,
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
    device: DeviceOption = "cpu",
    config: Annotated[
        Path | None, typer.Option(help="TOML file with run options and a [set] table.")
    ] = None,
    model: ModelOption = None,
    pretrained: PretrainedOption = None,
    data_root: DataRootOption = None,
    split_dir: SplitDirOption = None,
    reference_images: ReferenceImagesOption = None,
    reference_captions: ReferenceCaptionsOption = None,
    eval_limit: EvalLimitOption = None,
    max_tasks: MaxTasksOption = None,
    precision: Annotated[
        str,
        typer.Option(help="fp32, bf16 or fp16 (autocast, fp32 master weights; fp16 CUDA only)."),
    ] = "fp32",
    threads: Annotated[
        int | None,
        typer.Option(help="torch CPU threads (default: all cores; 1 is faster on a busy machine)."),
    ] = None,
) -> None:
    """Stream a setting's tasks through a learner; write accuracy/summary parquet + manifest."""
    from cl_bench.engine.config import RunConfig, load_config_file

    values = load_config_file(config) if config else {}
    flags = {
        "setting": setting, "learner": learner, "world": world, "order": order, "shots": shots,
        "iterations": iterations, "batch_size": batch_size, "seed": seed, "out": out, "resume": resume,
        "force": force, "device": device, "model": model, "pretrained": pretrained, "data_root": data_root,
        "eval_limit": eval_limit, "max_tasks": max_tasks, "split_dir": split_dir,
        "reference_images": reference_images, "reference_captions": reference_captions,
        "precision": precision, "threads": threads,
    }  # fmt: skip
    for key, value in flags.items():  # flags given on the command line beat the file
        source = ctx.get_parameter_source(key)
        if key not in values or getattr(source, "name", "") == "COMMANDLINE":
            values[key] = value
    values["overrides"] = {**values.get("overrides", {}), **_parse_sets(set_ or [])}
    cfg = RunConfig(**values)
    cfg.validate()

    from cl_bench.cli.view import RichReporter, print_summary
    from cl_bench.engine.loop import Engine

    reporter = RichReporter()
    engine = Engine(cfg, reporter)  # resolves and validates everything before any bar is drawn
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
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable JSON.")] = False,
) -> None:
    """Datasets of each world: class and template counts."""
    from cl_bench.cli.view import dataset_rows, print_rows

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
        str, typer.Option("--format", help="markdown, latex, csv or html.")
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
def sweep(
    learners: Annotated[
        str, typer.Option(help="Comma-separated learner names, or 'all' (every registered one).")
    ],
    setting: Annotated[str, typer.Option(help="Protocol: xtail or mtil.")] = "xtail",
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "0,1,2",
    world: Annotated[str, typer.Option(help="Data world: toy or real.")] = "toy",
    order: OrderOption = None,
    shots: ShotsOption = None,
    iterations: IterationsOption = None,
    batch_size: BatchSizeOption = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Learner hyperparameter KEY=VALUE for every learner."),
    ] = None,
    out: Annotated[
        Path, typer.Option(help="Folder that receives one run directory per (learner, seed).")
    ] = Path("results/runs"),
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
    device: DeviceOption = "cpu",
    precision: Annotated[str, typer.Option(help="fp32, bf16 or fp16.")] = "fp32",
    threads: Annotated[
        int | None,
        typer.Option(help="torch CPU threads per run (default: cores // --jobs when --jobs > 1)."),
    ] = None,
    eval_limit: EvalLimitOption = None,
    max_tasks: MaxTasksOption = None,
    dry_run: Annotated[
        bool, typer.Option(help="Print what would run, resume or be skipped; run nothing.")
    ] = False,
    model: ModelOption = None,
    pretrained: PretrainedOption = None,
    data_root: DataRootOption = None,
    split_dir: SplitDirOption = None,
    reference_images: ReferenceImagesOption = None,
    reference_captions: ReferenceCaptionsOption = None,
) -> None:
    """Run a learner x seed grid; finished runs are skipped, interrupted ones resumed."""
    from cl_bench.engine.config import RunConfig
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
    base = RunConfig(
        setting=setting, world=world, order=order, shots=shots, iterations=iterations,
        batch_size=batch_size, overrides=_parse_sets(set_ or []), device=device,
        precision=precision, threads=threads, eval_limit=eval_limit, max_tasks=max_tasks,
        model=model, pretrained=pretrained, data_root=data_root, split_dir=split_dir,
        reference_images=reference_images, reference_captions=reference_captions,
    )  # fmt: skip
    base.validate()
    options = executor_options(
        executor, jobs, partition=slurm_partition,
        gpus_per_run=check_gpu_request(executor, device, gpus_per_run),
        cpus_per_run=cpus_per_run, mem_gb=mem_gb, time_min=time_min,
        array_parallelism=array_parallelism, slurm_logs=slurm_logs, cluster=submitit_cluster,
        ray_address=ray_address,
    )  # fmt: skip
    plan = plan_jobs(base, names, seed_list, out)
    if dry_run:
        for job in plan:
            print(f"{job.action:7s} {job.learner} seed {job.seed} -> {job.run_dir}")
        return
    runner = make_executor(executor, **options)  # a cluster executor connects here
    with GridView(names, seed_list) as view:
        states = run_sweep(plan, runner, view)
    check_states(states)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="One run directory.")],
    out: Annotated[
        Path | None, typer.Option(help="Folder for the PNGs (default RUN_DIR/plots).")
    ] = None,
) -> None:
    """PNG plots of one run: accuracy matrix and curves, training curves, drslora ranks, gates."""
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


@app.command()
def bench(
    setting: Annotated[str, typer.Option(help="Protocol: xtail or mtil.")] = "xtail",
    learner: Annotated[str, typer.Option(help="Learner to measure.")] = "drslora",
    world: Annotated[str, typer.Option(help="Data world: toy or real.")] = "toy",
    steps: Annotated[int, typer.Option(help="Training steps per measurement.")] = 40,
    repeats: Annotated[
        int, typer.Option(help="Engine/bare pairs; the median ratio is reported.")
    ] = 3,
    device: DeviceOption = "cpu",
    precision: Annotated[str, typer.Option(help="fp32, bf16 or fp16.")] = "fp32",
    threads: Annotated[
        int | None, typer.Option(help="torch CPU threads (default: all cores).")
    ] = None,
    eval_limit: Annotated[
        int | None, typer.Option(help="At most N test images per dataset.")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Learner hyperparameter KEY=VALUE.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Harness overhead: engine vs bare training steps and evaluation (ratios, rates, memory)."""
    from cl_bench.engine.bench import format_result, run_bench

    result = run_bench(
        setting=setting, learner=learner, world=world, steps=steps, repeats=repeats,
        device=device, precision=precision, eval_limit=eval_limit, threads=threads,
        overrides=_parse_sets(set_ or []),
    )  # fmt: skip
    if as_json:
        print(json.dumps(result.to_dict()))
    else:
        print(format_result(result))


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one line and exit 2; --debug shows the traceback."""
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
