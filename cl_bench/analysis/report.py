"""PNG plots of runs: `clbench report RUN_DIR` (one run) and `clbench compare DIRS` (learners).

One run: the accuracy matrix (after-task x dataset), each dataset's accuracy across the
stream, training curves from train_log.parquet, and the learner's own records when present —
drslora's rank allocation (ranks.parquet, as CoDyRA Fig. 5/6), gated_lora's active blocks
(gates.parquet) and clip_ast's selected tensors (selected.parquet). matplotlib is imported
lazily with the Agg backend (no display needed). report_html puts these plots on one
self-contained page (`clbench report RUN_DIR --html`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cl_bench.analysis.plots import compare_figure
from cl_bench.analysis.plots import pyplot as _pyplot
from cl_bench.analysis.plots import save_png as _save
from cl_bench.analysis.results import ACCURACY_FILE, DOMAINS_FILE, read_manifest, read_parquet
from cl_bench.analysis.tables import Board
from cl_bench.errors import UserError


def _text_color(im, value: float) -> str:
    """Black on light cells, white on dark ones (by the colormap's luminance)."""
    r, g, b, _ = im.cmap(im.norm(value))
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def _run_title(manifest: dict[str, Any], acc: pd.DataFrame) -> str:
    first = acc.iloc[0]
    return (
        f"{first['learner']} · {first['world']} {first['setting']} · seed {first['seed']}"
        f" · {first['model']}"
    )


def _matrix(acc: pd.DataFrame) -> tuple[np.ndarray, list[str], list[str], int]:
    """(rows x columns) accuracies, row labels, column names, number of stream columns."""
    tasks = acc.drop_duplicates("after_task").sort_values("after_task")
    row_labels = [
        f"{t} {'zero-shot' if t == 0 else n}"
        for t, n in zip(tasks["after_task"], tasks["after_task_name"], strict=True)
    ]
    order = [n for n in tasks["after_task_name"] if n != "zeroshot"]
    stream = list(dict.fromkeys(acc[acc["split"] == "stream"]["eval_dataset"]))
    stream = [n for n in order if n in stream] + [n for n in stream if n not in order]
    holdout = list(dict.fromkeys(acc[acc["split"] == "holdout"]["eval_dataset"]))
    table = acc.pivot_table(
        index="after_task", columns="eval_dataset", values="accuracy", aggfunc="first"
    )
    mat = table.reindex(index=tasks["after_task"], columns=stream + holdout).to_numpy(float)
    return mat, row_labels, stream + holdout, len(stream)


def plot_accuracy_matrix(acc: pd.DataFrame, title: str, path: Path) -> Path:
    plt = _pyplot()
    mat, rows, cols, n_stream = _matrix(acc)
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(cols), 1.2 + 0.45 * len(rows)))
    im = ax.imshow(mat, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    fmt = "{:.0f}" if len(cols) > 8 else "{:.1f}"
    for i in range(mat.shape[0]):
        for j in range(mat.shape[1]):
            if not np.isnan(mat[i, j]):
                color = _text_color(im, mat[i, j])
                ax.text(
                    j, i, fmt.format(mat[i, j]), ha="center", va="center", color=color, fontsize=8
                )
    for t in range(1, min(len(rows), n_stream + 1)):  # the task just learned: acc[t, t]
        ax.add_patch(plt.Rectangle((t - 1.5, t - 0.5), 1, 1, fill=False, ec="red", lw=1.5))
    if n_stream < len(cols):
        ax.axvline(n_stream - 0.5, color="white", lw=3)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("evaluated dataset (stream | hold-out)")
    ax.set_ylabel("after task")
    ax.set_title(f"Accuracy matrix (%), red = task just learned\n{title}", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02, label="top-1 accuracy (%)")
    return _save(fig, path)


def domain_shares(domains: pd.DataFrame, after_task: int) -> tuple[np.ndarray, list[str]]:
    """[eval dataset x predicted domain] % of each dataset's test images, stream order."""
    rows = domains[domains["after_task"] == after_task]
    order = list(dict.fromkeys(rows["predicted_domain"]))
    counts = rows.pivot_table(
        index="eval_dataset", columns="predicted_domain", values="count", aggfunc="sum"
    ).reindex(index=order, columns=order)
    mat = counts.to_numpy(dtype=float)
    return 100.0 * mat / mat.sum(axis=1, keepdims=True), order


def plot_domain_confusion(domains: pd.DataFrame, title: str, path: Path) -> Path:
    """Task-agnostic runs: where each domain's test images are classified, zero-shot vs last.

    Off-diagonal mass is cross-domain confusion (an image given another domain's class);
    the diagonal is the share kept in its own domain, an upper bound on its accuracy.
    """
    plt = _pyplot()
    evaluations = sorted(domains["after_task"].unique())
    shown = [evaluations[0], evaluations[-1]] if len(evaluations) > 1 else evaluations
    n = len(domains["predicted_domain"].unique())
    fig, axes = plt.subplots(
        1, len(shown), figsize=(0.6 + 0.55 * n * len(shown), 1.4 + 0.5 * n), squeeze=False
    )
    for ax, after_task in zip(axes[0], shown, strict=True):
        mat, names = domain_shares(domains, after_task)
        im = ax.imshow(mat, cmap="viridis", vmin=0, vmax=100)
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{mat[i, j]:.0f}", ha="center", va="center", fontsize=7,
                        color=_text_color(im, mat[i, j]))  # fmt: skip
        ax.set_xticks(range(n), names, rotation=45, ha="right")
        ax.set_yticks(range(n), names)
        ax.set_xlabel("predicted domain")
        ax.set_ylabel("test images of")
        label = "zero-shot" if after_task == 0 else f"after task {after_task}"
        ax.set_title(f"{label}: cross-domain {100 - np.trace(mat) / n:.1f} %", fontsize=9)
    fig.suptitle(
        f"Where each domain's test images are classified (% of images)\n{title}", fontsize=10
    )
    fig.tight_layout()
    return _save(fig, path)


def plot_stream_accuracy(acc: pd.DataFrame, title: str, path: Path) -> Path:
    plt = _pyplot()
    mat, rows, cols, n_stream = _matrix(acc)
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(rows) + 3), 4.5))
    cmap = plt.get_cmap("tab20")
    for j, name in enumerate(cols):
        style = "-" if j < n_stream else "--"
        ax.plot(x, mat[:, j], style, color=cmap(j % 20), lw=1.5, label=name)
        if j < n_stream and j + 1 < len(rows):
            ax.plot(j + 1, mat[j + 1, j], "*", color=cmap(j % 20), ms=11, mec="black")
    ax.set_xticks(x, [r.split(" ", 1)[1] for r in rows], rotation=45, ha="right")
    ax.set_xlabel("after task (star = the dataset's own task; dashed = hold-out)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(f"Accuracy across the stream\n{title}", fontsize=10)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    return _save(fig, path)


def plot_train_log(log: pd.DataFrame, iterations: int, title: str, path: Path) -> Path:
    plt = _pyplot()
    scalars = [c for c in log.columns if c not in ("task", "step")]
    if not scalars:
        raise UserError(f"{path.parent}: train_log.parquet has no scalar columns")
    x = (log["task"] - 1) * iterations + log["step"]
    fig, axes = plt.subplots(len(scalars), 1, figsize=(9, 2.2 * len(scalars)), sharex=True)
    axes = np.atleast_1d(axes)
    for ax, name in zip(axes, scalars, strict=True):
        ax.plot(x, log[name], lw=1)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        for t in range(1, int(log["task"].max())):
            ax.axvline(t * iterations, color="grey", ls=":", lw=0.8)
    axes[-1].set_xlabel("training step over the stream (dotted = task boundary)")
    axes[0].set_title(f"Training curves\n{title}", fontsize=10)
    return _save(fig, path)


def plot_site_grid(
    df: pd.DataFrame,
    value: str,
    vmax: float,
    cmap: Any,
    annotate: tuple[str, str],
    label: str,
    title: str,
    path: Path,
    tick_labels: list[str] | None = None,
) -> Path:
    """One panel per (encoder, task): layer x matrix kind, coloured by `value`, annotated with
    annotate = (column, format); tick_labels name the bins of a discrete colormap."""
    plt = _pyplot()
    annot_col, annot_fmt = annotate
    encoders = sorted(df["encoder"].unique())
    tasks = df.drop_duplicates("after_task").sort_values("after_task")
    kinds = list(dict.fromkeys(df["kind"]))
    fig, axes = plt.subplots(
        len(encoders),
        len(tasks),
        figsize=(
            0.3 * len(kinds) * len(tasks) + 2,
            1.6 + 0.35 * df["layer"].nunique() * len(encoders),
        ),
        squeeze=False,
        layout="constrained",
    )
    im = None
    for r, enc in enumerate(encoders):
        sub = df[df["encoder"] == enc]
        layers = sorted(sub["layer"].unique())
        for c, (t, name) in enumerate(zip(tasks["after_task"], tasks["task"], strict=True)):
            ax = axes[r][c]
            here = sub[sub["after_task"] == t]

            def grid_of(col: str, here=here, layers=layers) -> np.ndarray:
                table = here.pivot_table(index="layer", columns="kind", values=col, aggfunc="first")
                return table.reindex(index=layers, columns=kinds).to_numpy(float)

            grid, notes = grid_of(value), grid_of(annot_col)
            im = ax.imshow(grid, cmap=cmap, vmin=0, vmax=vmax, aspect="auto")
            for i in range(grid.shape[0]):
                for j in range(grid.shape[1]):
                    if not np.isnan(grid[i, j]):
                        color = _text_color(im, grid[i, j])
                        ax.text(
                            j,
                            i,
                            annot_fmt.format(notes[i, j]),
                            ha="center",
                            va="center",
                            fontsize=6,
                            color=color,
                        )
            ax.set_xticks(
                range(len(kinds)), kinds if r == len(encoders) - 1 else [], rotation=90, fontsize=7
            )
            ax.set_yticks(range(len(layers)), layers if c == 0 else [], fontsize=7)
            if r == 0:
                ax.set_title(f"{t} {name}", fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{enc}\nlayer", fontsize=8)
    fig.suptitle(title, fontsize=10)
    bar = fig.colorbar(
        im, ax=axes.ravel().tolist(), fraction=0.02, pad=0.01, label=label, aspect=30
    )
    if tick_labels:
        n = len(tick_labels)
        bar.set_ticks([vmax * (k + 0.5) / n for k in range(n)], labels=tick_labels)
    return _save(fig, path)


def plot_fraction_per_task(
    df: pd.DataFrame, numer: str, denom: str | None, ylabel: str, title: str, path: Path
) -> Path:
    """Per task: the fraction numer/denom summed per matrix kind and per encoder, and overall."""
    plt = _pyplot()
    tasks = df.drop_duplicates("after_task").sort_values("after_task")
    x = np.arange(len(tasks))

    def frac(sub: pd.DataFrame) -> np.ndarray:
        g = sub.groupby("after_task")
        d = g[denom].sum() if denom else g[numer].count()
        return (g[numer].sum() / d).reindex(tasks["after_task"]).to_numpy(float)

    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(tasks) + 3), 4))
    for kind in dict.fromkeys(df["kind"]):
        ax.plot(x, frac(df[df["kind"] == kind]), "-o", ms=3, lw=1, label=f"kind {kind}")
    for enc, style in zip(sorted(df["encoder"].unique()), ("--", ":", "-."), strict=False):
        ax.plot(
            x, frac(df[df["encoder"] == enc]), style, color="dimgray", lw=2, label=f"{enc} encoder"
        )
    ax.plot(x, frac(df), "-", color="black", lw=2.5, label="all matrices")
    ax.set_xticks(
        x,
        [f"{t} {n}" for t, n in zip(tasks["after_task"], tasks["task"], strict=True)],
        rotation=45,
        ha="right",
    )
    ax.set_ylim(-0.03, 1.05)
    ax.set_xlabel("task")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    return _save(fig, path)


def plot_on_off_sites(
    df: pd.DataFrame,
    flag: str,
    names: tuple[str, str],
    on_color: str,
    annotate: tuple[str, str],
    grid_label: str,
    grid_title: str,
    fraction_label: str,
    fraction_title: str,
    grid_path: Path,
    fraction_path: Path,
) -> list[Path]:
    """A boolean per (layer, matrix) site (gates, selections): the grid, sites that are on in
    `on_color`, and the fraction of sites on per task."""
    _pyplot()
    from matplotlib.colors import ListedColormap

    df = df.assign(**{flag: df[flag].astype(float)})
    cmap = ListedColormap(["#d9d9d9", on_color])
    return [
        plot_site_grid(
            df, flag, 1.0, cmap, annotate, grid_label, grid_title, grid_path, list(names)
        ),
        plot_fraction_per_task(df, flag, None, fraction_label, fraction_title, fraction_path),
    ]


def read_evaluated_run(run_dir: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """(manifest, accuracy rows) of a run that has been evaluated at least once: what the
    PNG and HTML reports both start from."""
    manifest = read_manifest(run_dir)
    acc = read_parquet(run_dir / ACCURACY_FILE)
    if acc.empty:
        raise UserError(
            f"{run_dir / ACCURACY_FILE} has no rows yet; wait for the zero-shot evaluation"
        )
    return manifest, acc


def report_run(run_dir: Path, out: Path | None = None) -> list[Path]:
    """Write every plot that the run's files support; return the PNG paths."""
    run_dir = Path(run_dir)
    manifest, acc = read_evaluated_run(run_dir)
    out = Path(out) if out else run_dir / "plots"
    title = _run_title(manifest, acc)
    if manifest.get("status") != "finished":
        title += f" · {manifest.get('status')} (partial)"
    paths = [
        plot_accuracy_matrix(acc, title, out / "accuracy_matrix.png"),
        plot_stream_accuracy(acc, title, out / "accuracy_stream.png"),
    ]
    log_path = run_dir / "train_log.parquet"
    if log_path.exists():
        iterations = int(manifest.get("setting", {}).get("iterations") or 0)
        log = read_parquet(log_path)
        if iterations and not log.empty:
            paths.append(plot_train_log(log, iterations, title, out / "train_curves.png"))
    ranks_path = run_dir / "ranks.parquet"
    if ranks_path.exists():
        ranks = read_parquet(ranks_path)
        paths.append(plot_site_grid(ranks, "surviving", float(ranks["rank"].max()), "magma", ("surviving", "{:.0f}"), "surviving ranks", f"Rank allocation: surviving ranks per layer and matrix after each task\n{title}", out / "ranks_allocation.png"))  # fmt: skip
        paths.append(plot_fraction_per_task(ranks, "surviving", "rank", "surviving ranks / rank", f"Surviving ranks per task\n{title}", out / "ranks_surviving.png"))  # fmt: skip
    domains_path = run_dir / DOMAINS_FILE
    if domains_path.exists():  # task-agnostic settings: cross-domain confusion
        paths.append(plot_domain_confusion(read_parquet(domains_path), title, out / "domains.png"))
    gates_path = run_dir / "gates.parquet"
    if gates_path.exists():  # gated_lora: which LoRA blocks are active, with their scores
        paths += plot_on_off_sites(read_parquet(gates_path), "active", ("inactive", "active"), "#1a9850", ("score", "{:.2f}"), "block (numbers: gate score s)", f"Active LoRA blocks (green) and gate scores per layer and matrix after each task\n{title}", "active blocks / blocks", f"Active LoRA blocks per task\n{title}", out / "gates_active_blocks.png", out / "gates_active_fraction.png")  # fmt: skip
    selected_path = run_dir / "selected.parquet"
    if selected_path.exists():  # clip_ast: which tensors of each block trained, by importance
        paths += plot_on_off_sites(read_parquet(selected_path), "selected", ("frozen", "selected"), "#2166ac", ("importance_rank", "{:.0f}"), "tensor (numbers: importance rank in its block)", f"Tensors selected for training (blue) per layer after each task\n{title}", "selected tensors / tensors", f"Selected tensors per task\n{title}", out / "selected_tensors.png", out / "selected_fraction.png")  # fmt: skip
    return paths


def compare_runs(
    dirs: list[Path], out: Path, filters: dict[str, Any] | None = None
) -> tuple[Path, list[tuple[Path, str]]]:
    """Bars of mean Transfer / Average / Last (and hold-out) per learner, std over seeds."""
    from cl_bench.analysis.leaderboard import collect_runs, holdout_table, metric_tables

    runs, skipped = collect_runs(dirs, filters)
    tables = metric_tables(runs, ["transfer", "average", "last"], per_dataset=False)
    holdout = holdout_table(runs)
    board = Board(runs[0].group, len(runs), tables + ([holdout] if holdout else []))
    return _save(compare_figure(board), Path(out)), skipped
