"""`clbench toy ...`: re-create the toy CLIP's weights, look at the toy world.

Heavy imports (torch, open_clip, matplotlib) live inside the command bodies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cl_bench.data.toy.model import DEFAULT_TOY_MODEL

app = typer.Typer(
    help="The embedded toy world: pre-train its tiny CLIP, look at its domains.",
    no_args_is_help=True,
)


@app.command()
def pretrain(
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 900,
    batch_size: Annotated[int, typer.Option(help="Images (and captions) per step.")] = 128,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate.")] = 1.5e-3,
    seed: Annotated[int, typer.Option(help="Seed of initialisation and of the sampled data.")] = 0,
    threads: Annotated[
        int, typer.Option(help="torch CPU threads (1 is fastest on a busy machine).")
    ] = 1,
    model: Annotated[
        str,
        typer.Option(
            help="Toy CLIP size: small (shipped, the default) or base (4x the step FLOPs; its weights go to the cache)."
        ),
    ] = DEFAULT_TOY_MODEL,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Weights file (default: the model's own: the shipped cl_bench/data/toy/weights/toy_clip.safetensors for small, $CLBENCH_CACHE/toy/models/ for base)."
        ),
    ] = None,
) -> None:
    """Contrastive pre-training of the toy CLIP (deterministic by seed); writes weights + record."""
    from cl_bench.data.toy.model import toy_model
    from cl_bench.data.toy.pretrain import PretrainConfig
    from cl_bench.data.toy.pretrain import pretrain as run_pretrain
    from cl_bench.errors import UserError

    for flag, value in (("--steps", steps), ("--batch-size", batch_size), ("--threads", threads)):
        if value <= 0:
            raise UserError(f"{flag} must be a positive integer, got {value}")
    if lr <= 0:
        raise UserError(f"--lr must be positive, got {lr}")
    spec = toy_model(model)
    cfg = PretrainConfig(
        steps=steps, batch_size=batch_size, lr=lr, seed=seed, threads=threads, model=spec.key
    )
    record = run_pretrain(cfg, out, log=typer.echo)  # None: the model's own weights path
    own = record["zeroshot_accuracy"]["own"]
    union = record["zeroshot_accuracy"]["xtail_union"]
    for name, acc in own.items():
        typer.echo(
            f"{name:14s} own {acc:5.1f}" + (f"   union {union[name]:5.1f}" if name in union else "")
        )


@app.command()
def show(
    out: Annotated[Path, typer.Option(help="PNG file to write.")] = Path("toy-world.png"),
    per_domain: Annotated[int, typer.Option(help="Images per domain (classes spread out).")] = 8,
    generic: Annotated[
        bool, typer.Option(help="Add a row per domain in the generic pre-training style.")
    ] = False,
) -> None:
    """A grid of sample test images per domain, captioned with their class names."""
    from cl_bench.data.toy.show import show_grid
    from cl_bench.errors import UserError

    if per_domain <= 0:
        raise UserError(f"--per-domain must be a positive integer, got {per_domain}")
    typer.echo(f"wrote {show_grid(out, per_domain=per_domain, generic_row=generic)}")
