"""`clbench data check|prepare`: what the real world finds on disk, and fetching what can be fetched."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    no_args_is_help=True,
    help="Real datasets and weights: check what is on disk, prepare (download) what is not.",
)

NamesArg = Annotated[
    list[str] | None,
    typer.Argument(help="Dataset names (default: the --setting's datasets, else all)."),
]
SettingOpt = Annotated[
    str | None, typer.Option(help="Check/prepare the stream + hold-out datasets of this setting.")
]
OrderOpt = Annotated[str | None, typer.Option(help="MTIL order (I or II).")]
RootOpt = Annotated[
    Path | None,
    typer.Option("--root", help="Data root (default: $CLBENCH_DATA or the user data dir)."),
]
ModelOpt = Annotated[str | None, typer.Option(help="open_clip model name (default ViT-B-16).")]
PretrainedOpt = Annotated[str | None, typer.Option(help="Weights tag (default openai).")]


def _names(
    names: list[str] | None, setting: str | None, order: str | None
) -> tuple[list[str], str]:
    """The datasets to look at and the protocol whose definitions describe them (the
    setting's `dataset_protocol`; MTIL's without a setting)."""
    from cl_bench.data.real.spec import available_datasets, load_spec
    from cl_bench.data.taskfiles import DEFAULT_PROTOCOL, resolve_setting

    resolved = resolve_setting(setting, "real", order) if setting else None
    protocol = resolved.dataset_protocol if resolved is not None else DEFAULT_PROTOCOL
    if names:
        for n in names:
            load_spec(n, protocol)  # unknown names fail here, listing the valid ones
        return list(names), protocol
    if resolved is not None:
        return list(resolved.eval_datasets), protocol
    return available_datasets(protocol), protocol


def _size_bytes(path: Path) -> int:
    total, stack = 0, [path]
    while stack:
        p = stack.pop()
        try:
            with os.scandir(p) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(Path(e.path))
                    else:
                        total += e.stat(follow_symlinks=False).st_size
        except NotADirectoryError:
            total += p.stat().st_size
        except OSError:
            pass
    return total


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


@app.command()
def check(
    names: NamesArg = None,
    setting: SettingOpt = None,
    order: OrderOpt = None,
    root: RootOpt = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable JSON.")] = False,
    world_name: Annotated[
        str, typer.Option("--world", help="The data world to check (real: the one read from disk).")
    ] = "real",
    split_dir: Annotated[
        Path | None, typer.Option(help="Directory of split files (as clbench run --split-dir).")
    ] = None,
) -> None:
    """Per dataset: found / missing, where it looked, size on disk; then the weights. Exit 1 if anything is missing.

    The setting's dataset definitions are checked (X-TAIL: its CoOp split files and image
    folders); each missing piece is one line with where to get it and the path to put it at."""
    from cl_bench.data.real import sources
    from cl_bench.data.real.world import RealWorld
    from cl_bench.errors import UserError
    from cl_bench.models.openclip import weights_problem

    if world_name != "real":
        raise UserError(
            f"clbench data check looks at the real world's files; the {world_name} world ships its own data; drop --world {world_name}"
        )
    world = RealWorld(model=model, pretrained=pretrained, data_root=root, split_dir=split_dir)
    selected, protocol = _names(names, setting, order)
    world.select_protocol(protocol)
    rows = []
    for name in selected:
        spec = world.spec(name)
        problems = world.dataset_problems(name)
        marker = sources.marker_path(spec, world.data_root)
        top = sources.top_dir(spec, world.data_root)
        size = _human(_size_bytes(top)) if not problems and top is not None and top.exists() else ""
        where = str(marker) if marker is not None else f"HF cache: {spec.source['id']}"
        if spec.source["kind"] == "split_file":
            where += f" + {world.split_file(name)}"
        rows.append(
            {
                "dataset": name,
                "status": "missing" if problems else "found",
                "looked_at": where,
                "size": size,
                "fixes": problems,  # one line each, with its fix
            }
        )
    weights = weights_problem(world.model, world.pretrained)
    rows.append(
        {
            "dataset": f"weights {world.model}/{world.pretrained}",
            "status": "missing" if weights else "found",
            "looked_at": "Hugging Face cache",
            "size": "",
            "fixes": [weights] if weights else [],
        }
    )
    if as_json:
        out = {"data_root": str(world.data_root), "dataset_protocol": protocol, "items": rows}
        typer.echo(json.dumps(out, indent=2))
    else:
        missing = sum(r["status"] == "missing" for r in rows)
        if missing:  # the problem and the count first; one line per missing piece below
            typer.echo(f"not ready: {missing} of {len(rows)} items missing (fixes below)")
        typer.echo(f"data root: {world.data_root} (dataset definitions: {protocol})")
        for r in rows:
            typer.echo(f"{r['status']:8s} {r['dataset']:28s} {r['size']:>10s}  {r['looked_at']}")
            for fix in r["fixes"]:
                typer.echo(f"         -> {fix}")
    if any(r["status"] == "missing" for r in rows):
        raise SystemExit(1)  # a plain exit code: the CLI runs typer with standalone_mode=False


@app.command()
def prepare(
    names: NamesArg = None,
    setting: SettingOpt = None,
    order: OrderOpt = None,
    root: RootOpt = None,
    weights: Annotated[
        bool,
        typer.Option("--weights", help="Also download the backbone weights into the HF cache."),
    ] = False,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
) -> None:
    """Download what torchvision / Hugging Face can download (needs internet); print the manual steps for the rest."""
    from cl_bench.data.real.world import RealWorld
    from cl_bench.models.openclip import fetch_weights

    world = RealWorld(model=model, pretrained=pretrained, data_root=root)
    selected, protocol = (
        ([], "mtil") if (weights and not names and not setting) else _names(names, setting, order)
    )
    world.select_protocol(protocol)
    failed = False
    for name in selected:
        spec = world.spec(name)
        src = spec.source
        if not world.dataset_problems(name):
            typer.echo(f"{name}: already present")
            continue
        if src["kind"] == "split_file":  # CoOp split files live on Google Drive: by hand
            for line in world.dataset_problems(name):
                typer.echo(f"manual download needed: {line}")
            failed = True
        elif src["kind"] == "torchvision" and src["download"]:
            failed |= not _download_torchvision(spec, world.data_root)
        elif src["kind"] == "hf":
            failed |= not _download_hf(spec)
        else:
            typer.echo(
                f"{name}: manual download needed: {src.get('manual', 'put the images at ' + str(world.data_root / src.get('path', '')))}"
            )
            failed = True
    if weights:
        path = fetch_weights(world.model, world.pretrained)
        typer.echo(f"weights {world.model}/{world.pretrained}: {path}")
    if failed:
        raise SystemExit(1)  # a plain exit code: the CLI runs typer with standalone_mode=False


def _download_torchvision(spec, data_root: Path) -> bool:
    import torchvision.datasets as tvd

    src = spec.source
    root = data_root / src.get("subdir", "")
    parts = ["pool"] if spec.split["rule"] == "random" else ["train", "test", "few_shot_train"]
    try:
        for part in parts:
            for sel in spec.selector(part):
                typer.echo(f"{spec.name}: torchvision {src['class']}({sel}) -> {root}")
                getattr(tvd, src["class"])(
                    str(root), download=True, **{**src.get("args", {}), **sel}
                )
    except Exception as exc:  # network / archive errors: report and go on with the next dataset
        typer.echo(f"{spec.name}: download failed ({type(exc).__name__}: {str(exc)[:200]})")
        return False
    return True


def _download_hf(spec) -> bool:
    from datasets import load_dataset

    src = spec.source
    try:
        typer.echo(f"{spec.name}: Hugging Face {src['id']} -> HF cache")
        load_dataset(src["id"], src.get("config"), revision=src.get("revision"))
    except Exception as exc:
        typer.echo(f"{spec.name}: download failed ({type(exc).__name__}: {str(exc)[:200]})")
        return False
    return True
