"""The Python API for notebooks: `run`, `Run`, `load_runs`, `leaderboard`.

Top layer, beside `cli/`: what `clbench run` and `clbench leaderboard` do, as functions that
return DataFrames. The run options are RunConfig's fields (cl_bench.engine.config), the same
table the CLI's flags are generated from; errors are the `UserError`s the CLI prints.
`import cl_bench` reaches these names lazily (`cl_bench.__getattr__`), so it imports no torch.
"""

from __future__ import annotations

import difflib
import glob
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from cl_bench.analysis.results import (
    ACCURACY_FILE,
    MANIFEST_FILE,
    SUMMARY_FILE,
    find_run_dirs,
    read_manifest,
    read_parquet,
)
from cl_bench.analysis.results import load_runs as _load_tables
from cl_bench.engine.config import RunConfig, run_options
from cl_bench.errors import UserError

if TYPE_CHECKING:
    from cl_bench.analysis.tables import Board, Table
    from cl_bench.api.learner import Learner
    from cl_bench.data.world import DataWorld
    from cl_bench.engine.loop import RunOutcome

__all__ = ["Leaderboard", "Run", "leaderboard", "load_runs", "run"]

PathLike = str | Path
Paths = PathLike | Iterable[PathLike]

# run()'s own parameters; every other RunConfig field is a keyword option (`overrides` is `set`)
POSITIONAL = ("setting", "learner", "world", "seed")
DEFAULTS: dict[str, Any] = {o.name: o.default for o in run_options()}  # RunConfig's defaults
DEFAULT_WORLD: str = DEFAULTS["world"]


# ------------------------------------------------------------------------------ one run
def accuracy_matrix(rows: pd.DataFrame) -> pd.DataFrame:
    """Long accuracy rows of one run -> rows after_task 0..T, one column per eval dataset in
    evaluation order, values accuracy."""
    order = list(dict.fromkeys(rows["eval_dataset"]))
    wide = rows.pivot_table(
        index="after_task", columns="eval_dataset", values="accuracy", aggfunc="first"
    )
    wide = wide.reindex(columns=order).sort_index()
    wide.columns.name = "eval_dataset"
    return wide


@dataclass
class Run:
    """One run directory's results: the accuracy matrix, its long rows, summary, manifest."""

    run_dir: Path
    accuracy: pd.DataFrame  # rows after_task 0..T, columns eval datasets (evaluation order)
    rows: pd.DataFrame  # accuracy.parquet (long)
    summary: pd.DataFrame  # summary.parquet
    manifest: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: PathLike) -> Run:
        """The run in an existing run directory (a folder with manifest.json)."""
        run_dir = Path(path)
        manifest = read_manifest(run_dir)
        rows = read_parquet(run_dir / ACCURACY_FILE)
        summary_path = run_dir / SUMMARY_FILE
        summary = read_parquet(summary_path) if summary_path.exists() else pd.DataFrame()
        return cls(run_dir, accuracy_matrix(rows), rows, summary, manifest)

    @classmethod
    def from_outcome(cls, outcome: RunOutcome) -> Run:
        rows = outcome.accuracy
        return cls(
            Path(outcome.run_dir), accuracy_matrix(rows), rows, outcome.summary, outcome.manifest
        )


class TqdmReporter:
    """Engine progress as tqdm bars (tqdm.auto: a widget in Jupyter, text elsewhere)."""

    def __init__(self, tqdm: Any) -> None:
        self.tqdm = tqdm
        self.bar: Any = None

    def phase(self, label: str, total: int) -> None:
        self.close()
        self.bar = self.tqdm(total=total, desc=label, leave=True)

    def advance(self, n: int = 1, scalars: dict[str, float] | None = None) -> None:
        if self.bar is None:
            return
        shown = {k: f"{v:.4g}" for k, v in (scalars or {}).items() if k not in ("task", "step")}
        if shown:
            self.bar.set_postfix(shown, refresh=False)
        self.bar.update(n)

    def message(self, text: str) -> None:
        self.tqdm.write(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def progress_reporter(progress: bool) -> TqdmReporter | None:
    """A tqdm reporter when asked for and tqdm is installed, else None (no progress)."""
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return TqdmReporter(tqdm)


def _allowed_types(hint: Any) -> tuple[type, ...]:
    return tuple(a for a in typing.get_args(hint) if a is not type(None)) or (hint,)


def _option_value(name: str, value: Any, hint: Any) -> Any:
    """A keyword value checked against the RunConfig field's type (paths become strings; a
    repeatable option takes one value or a list; holdout also takes a list, [] for none)."""
    if typing.get_origin(hint) is list:  # log="wandb" or log=["tensorboard", "wandb"]
        items = [value] if isinstance(value, str) else value
        if isinstance(items, list | tuple) and all(isinstance(v, str) for v in items):
            return list(items)
        raise UserError(
            f"{name} must be a str or a list of str, got {type(value).__name__} {value!r}"
        )
    if name == "holdout" and isinstance(value, list | tuple):
        if not all(isinstance(v, str) for v in value):
            raise UserError(f"holdout must be 'none' or dataset names, got {value!r}")
        return ",".join(value) if value else "none"
    allowed = _allowed_types(hint)
    if isinstance(value, Path) and str in allowed:
        return str(value)
    if value is None and type(None) in typing.get_args(hint):
        return value
    if isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed):
        return value
    expected = " or ".join(a.__name__ for a in allowed)
    raise UserError(f"{name} must be {expected}, got {type(value).__name__} {value!r}")


def run_config(
    setting: str = DEFAULTS["setting"],
    learner: str | type[Learner] = DEFAULTS["learner"],
    world: str = DEFAULTS["world"],
    seed: int = DEFAULTS["seed"],
    *,
    set: Mapping[str, Any] | None = None,  # the CLI's --set
    **options: Any,
) -> RunConfig:
    """The RunConfig `run` would use: the CLI's options and defaults, validated."""
    hints = {o.name: o.type for o in run_options()}
    valid = [n for n in hints if n not in POSITIONAL and n != "overrides"]
    unknown = sorted(k for k in options if k not in valid)
    if unknown:
        close = sorted({c for k in unknown for c in difflib.get_close_matches(k, valid, n=3)})
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        extra = " Learner hyperparameters go in set={...}." if "overrides" in unknown else ""
        raise UserError(
            f"unknown run option{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))}."
            f"{hint}{extra} Valid: {', '.join(POSITIONAL + tuple(valid))}, set"
        )
    if isinstance(learner, type):
        from cl_bench.api.registry import learner_target

        learner = learner_target(learner)
    values = {"setting": setting, "learner": learner, "world": world, "seed": seed, **options}
    checked = {k: _option_value(k, v, hints[k]) for k, v in values.items()}
    overrides = {str(k): str(v) for k, v in (set or {}).items()}  # as --set KEY=VALUE gives them
    cfg = RunConfig(**checked, overrides=overrides)
    cfg.validate()
    return cfg


def run(
    setting: str = DEFAULTS["setting"],
    learner: str | type[Learner] = DEFAULTS["learner"],
    world: str | DataWorld = DEFAULTS["world"],
    seed: int = DEFAULTS["seed"],
    *,
    set: Mapping[str, Any] | None = None,  # the CLI's --set
    progress: bool = True,
    **options: Any,
) -> Run:
    """Run one stream, as `clbench run` does; returns its results.

    learner: a registered name, a module:Class / file.py:Class target, or a Learner subclass.
    world: a world name, or a DataWorld instance (its data replaces the named world's; the
        config keeps the default world name, as `engine.loop.run(cfg, world=...)` does).
    set: learner hyperparameters (`--set KEY=VALUE`; values converted with str()).
    progress: tqdm bars when tqdm is installed.
    options: every other `clbench run` option by its field name (iterations, max_tasks,
        eval_limit, out, resume, force, device, holdout, log, ...); holdout takes a list of
        dataset names too ([] or "none": no hold-out set), log one tracker or a list.
    """
    world_obj = None if isinstance(world, str) else world
    world_name = world if isinstance(world, str) else DEFAULT_WORLD
    cfg = run_config(setting, learner, world_name, seed, set=set, **options)

    from cl_bench.engine.loop import Engine

    reporter = progress_reporter(progress)
    try:
        outcome = Engine(cfg, reporter, world_obj).run()
    finally:
        if reporter is not None:
            reporter.close()
    return Run.from_outcome(outcome)


# ------------------------------------------------------------------------------ many runs
def _patterns(paths_or_globs: Paths) -> list[str]:
    if isinstance(paths_or_globs, str | Path):
        return [str(paths_or_globs)]
    return [str(p) for p in paths_or_globs]


def run_dirs(paths_or_globs: Paths) -> list[Path]:
    """Run directories (folders with manifest.json) at or below each path or glob match."""
    patterns = _patterns(paths_or_globs)
    found: dict[Path, None] = {}
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = [Path(m) for m in sorted(glob.glob(pattern, recursive=True))]
            matches = [m for m in matches if m.is_dir()]
        else:
            matches = [Path(pattern)]  # a missing path is find_run_dirs' error
        for d in find_run_dirs(matches):
            found.setdefault(d.resolve(), None)
    if not found:
        raise UserError(
            f"no run directories (folders with {MANIFEST_FILE}) match "
            f"{', '.join(patterns) or 'nothing'}; pass run directories, folders or globs"
        )
    return sorted(found)


def load_runs(paths_or_globs: Paths, only_finished: bool = True) -> pd.DataFrame:
    """Every run's accuracy rows in long form (one row per run x eval dataset x after_task),
    with the identity columns accuracy.parquet carries and the run's directory (`run_dir`)."""
    dirs = run_dirs(paths_or_globs)
    frames = []
    skipped: list[tuple[Path, str]] = []
    for d in dirs:
        frame, skip = _load_tables([d], ACCURACY_FILE, only_finished)
        skipped += skip
        if not frame.empty:
            frames.append(frame.assign(run_dir=str(d)))
    if not frames:
        reason = f" (e.g. {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise UserError(
            f"no {'finished ' if only_finished else ''}run with accuracy rows in "
            f"{', '.join(_patterns(paths_or_globs))}{reason}"
        )
    return pd.concat(frames, ignore_index=True)


def table_frame(table: Table) -> pd.DataFrame:
    """One leaderboard table: a row per learner label; seeds, then mean and std per column."""
    data: dict[str, list[Any]] = {"seeds": [r.seeds for r in table.rows]}
    data["reference"] = [r.reference for r in table.rows]
    for j, column in enumerate(table.columns):
        data[column.name] = [r.cells[j].mean for r in table.rows]
        data[f"{column.name} std"] = [r.cells[j].std for r in table.rows]
    index = pd.Index([r.label for r in table.rows], name="learner")
    return pd.DataFrame(data, index=index)


@dataclass
class Leaderboard:
    """`clbench leaderboard` as data: one DataFrame per table, and the rendered text."""

    tables: dict[str, pd.DataFrame]  # table key (summary | transfer | ... | holdout | cost)
    titles: dict[str, str]  # table key -> its title
    text: str  # exactly what `clbench leaderboard` prints for the same runs
    board: Board
    skipped: list[tuple[Path, str]]  # run dirs left out, with why

    def _repr_markdown_(self) -> str:  # Jupyter
        return self.text

    def __str__(self) -> str:
        return self.text


def leaderboard(
    runs: Paths | Iterable[Run],
    *,
    setting: str | None = None,
    metric: str = "all",
    per_dataset: bool = False,
    fmt: str = "markdown",
    world: str | None = None,
    order: str | None = None,
    shots: int | None = None,
) -> Leaderboard:
    """Paper-style tables from many runs, as `clbench leaderboard` builds them.

    runs: run directories, folders holding them, globs, or `Run` objects."""
    from cl_bench.analysis.leaderboard import make_leaderboard

    items = [runs] if isinstance(runs, str | Path | Run) else list(runs)
    paths = [str(r.run_dir) if isinstance(r, Run) else r for r in items]
    board, text, skipped = make_leaderboard(
        run_dirs(paths), setting, metric, per_dataset, fmt, world, order, shots
    )
    return Leaderboard(
        {t.key: table_frame(t) for t in board.tables},
        {t.key: t.title for t in board.tables},
        text,
        board,
        skipped,
    )
