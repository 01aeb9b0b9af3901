"""A published accuracy matrix -> a run directory the leaderboard reads like any other.

`clbench import MATRIX --setting mtil --order I --learner zscl --source "..."` writes
accuracy.parquet, summary.parquet and manifest.json in the normal schema
(`cl_bench.analysis.results`), so `clbench leaderboard` shows a paper's own numbers beside
the user's real-world runs. The manifest is marked `imported: {source, file, sha256,
imported_at, layout, scale}`; the summary is computed by the same code as every run's
(`results.summarize`, PROTOCOL.md §1). Nothing is invented: without a zero-shot row the
gain is NaN (an empty cell), and costs, which nobody measured here, are empty too.

Inputs (docs/leaderboard.md, "Published rows"):

- `.npy`, layout `plain`: a 2-D array, T x T (rows after tasks 1..T) or (T+1) x T (row 0
  the zero-shot model), columns the stream in the order's task order.
- `.npy`, layout `zscl`: the files of the ZSCL repository's `mtil/results/` (written by
  `mtil/src/general_eval.py`, read by `mtil/results.ipynb`): 132 values = 11 rows x 12
  columns, no zero-shot row. Columns are ZSCL's evaluation list, order I's datasets with
  CIFAR10 as the third (an extra evaluation the notebook deletes; so does the import). Rows
  follow the same list: row i is the model after training the dataset of column i, so for
  order II both axes are permuted to the order's task order, as the notebook's
  `statistics(order=2)` does.
- `.csv`: a header of dataset names (the stream's, in any column order, and optionally the
  setting's hold-out datasets), an optional first column `after_task` (0..T or 1..T);
  without it, T rows are tasks 1..T and T+1 rows start with the zero-shot row.

Values are percentages (`--scale percent`, the default) or fractions (`--scale fraction`).
No pickle is read (`allow_pickle=False`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cl_bench.analysis.provenance import versions
from cl_bench.analysis.results import (
    ACCURACY_COLUMNS,
    ACCURACY_FILE,
    MANIFEST_FILE,
    SUMMARY_FILE,
    summarize,
    write_json,
    write_parquet,
)
from cl_bench.errors import UserError

LAYOUTS = ("plain", "zscl")
SCALES = ("percent", "fraction")
# ZSCL mtil/src/general_eval.py: the datasets every checkpoint is evaluated on, in this order
# (its names -> cl-bench's); CIFAR10 is not part of MTIL and is dropped.
ZSCL_COLUMNS = (
    "aircraft", "caltech101", "cifar10", "cifar100", "dtd", "eurosat", "flowers102",
    "food101", "mnist", "oxford_pets", "stanford_cars", "sun397",
)  # fmt: skip
ZSCL_DROPPED = "cifar10"


@dataclass(frozen=True)
class Matrix:
    """An imported matrix in task order: stream (T+1) x T and hold-out (T+1) x H, in %.
    Row 0 is NaN when the file has no zero-shot row."""

    stream: np.ndarray
    holdout: np.ndarray
    holdout_names: tuple[str, ...]

    @property
    def has_zero_shot(self) -> bool:
        return not bool(np.isnan(self.stream[0]).all())


# ------------------------------------------------------------------------------ reading
def _with_zero_row(values: np.ndarray, num_tasks: int, where: str) -> np.ndarray:
    """T rows -> a NaN row 0 on top; T+1 rows as they are; anything else is an error."""
    if values.shape[0] == num_tasks:
        return np.vstack([np.full((1, values.shape[1]), np.nan), values])
    if values.shape[0] == num_tasks + 1:
        return values
    raise UserError(
        f"{where}: {values.shape[0]} rows for a stream of {num_tasks} tasks; expected {num_tasks} "
        f"(after each task) or {num_tasks + 1} (the zero-shot row first)"
    )


def _read_npy(path: Path, stream: Sequence[str], layout: str) -> np.ndarray:
    try:
        raw = np.load(path, allow_pickle=False)
    except ValueError as exc:  # object arrays need pickle: refused
        raise UserError(f"{path}: not a numeric .npy array ({exc})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read it as .npy ({exc})") from None
    if not np.issubdtype(raw.dtype, np.number):
        raise UserError(f"{path}: dtype {raw.dtype} is not numeric")
    raw = raw.astype(np.float64)
    num_tasks = len(stream)
    if layout == "zscl":
        return _zscl(raw, path, stream)
    if raw.ndim != 2:
        raise UserError(
            f"{path}: a {raw.ndim}-D array of {raw.size} values; layout plain needs a 2-D "
            f"matrix ({num_tasks} or {num_tasks + 1} rows x {num_tasks} columns). The ZSCL "
            "repository's flat files: pass --layout zscl"
        )
    if raw.shape[1] != num_tasks:
        raise UserError(
            f"{path}: {raw.shape[1]} columns for a stream of {num_tasks} datasets "
            f"({', '.join(stream)}); the columns are the stream in task order"
        )
    return _with_zero_row(raw, num_tasks, str(path))


def _zscl(raw: np.ndarray, path: Path, stream: Sequence[str]) -> np.ndarray:
    """ZSCL's 11 x 12 record -> (T+1) x T in the order's task order (row 0 NaN)."""
    cols = len(ZSCL_COLUMNS)
    kept = [n for n in ZSCL_COLUMNS if n != ZSCL_DROPPED]
    if sorted(stream) != sorted(kept):
        raise UserError(
            f"--layout zscl is ZSCL's MTIL record ({len(kept)} datasets); the stream is "
            f"{', '.join(stream)}; use --setting mtil"
        )
    if raw.size != len(kept) * cols or raw.ndim not in (1, 2):
        raise UserError(
            f"{path}: {raw.size} values in shape {raw.shape}; ZSCL's mtil/results files hold "
            f"{len(kept)} rows x {cols} columns ({len(kept) * cols} values)"
        )
    table = raw.reshape(len(kept), cols)
    table = np.delete(table, ZSCL_COLUMNS.index(ZSCL_DROPPED), axis=1)
    index = [kept.index(name) for name in stream]  # rows and columns: dataset -> task order
    return _with_zero_row(table[index][:, index], len(stream), str(path))


def _read_csv(
    path: Path, stream: Sequence[str], holdout: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise UserError(f"{path}: cannot read it as CSV ({exc})") from None
    names = [str(c).strip() for c in frame.columns]
    frame.columns = pd.Index(names)
    valid = list(stream) + [h for h in holdout if h not in stream]
    lowered = {n.lower(): n for n in valid}
    frame = frame.rename(columns={c: lowered[c.lower()] for c in names if c.lower() in lowered})
    after = None
    if frame.columns[0] == "after_task":
        after = frame.pop("after_task")
    unknown = [c for c in frame.columns if c not in valid]
    if unknown:
        raise UserError(
            f"{path}: unknown column(s) {unknown}; the header names datasets of the stream "
            f"({', '.join(stream)}) and optionally hold-out ones ({', '.join(holdout) or 'none'}), "
            "with an optional first column after_task"
        )
    absent = [n for n in stream if n not in frame.columns]
    if absent:
        raise UserError(f"{path}: no column for stream dataset(s) {absent}; give every one")
    try:
        values = frame.to_numpy(dtype=np.float64)
    except ValueError as exc:
        raise UserError(f"{path}: a value is not a number ({exc})") from None
    num_tasks = len(stream)
    if after is not None:
        rows = list(after)
        expected = [list(range(1, num_tasks + 1)), list(range(num_tasks + 1))]
        if sorted(rows) not in expected:
            raise UserError(
                f"{path}: after_task must be 1..{num_tasks} or 0..{num_tasks}, each once; got {rows}"
            )
        values = values[np.argsort(np.asarray(rows))]
    values = _with_zero_row(values, num_tasks, str(path))
    held = tuple(h for h in valid if h in frame.columns and h not in stream)
    columns = list(frame.columns)
    s = values[:, [columns.index(n) for n in stream]]
    h = values[:, [columns.index(n) for n in held]]
    return s, h, held


def _scaled(values: np.ndarray, scale: str, where: Path) -> np.ndarray:
    present = values[~np.isnan(values)]
    if np.isinf(present).any():
        raise UserError(f"{where}: infinite values; an accuracy matrix holds finite numbers")
    top = 1.0 if scale == "fraction" else 100.0
    if present.size and (present.min() < 0 or present.max() > top):
        raise UserError(
            f"{where}: values from {present.min():g} to {present.max():g} are outside 0..{top:g} "
            f"(--scale {scale}); pass --scale {'percent' if scale == 'fraction' else 'fraction'} if that is the file's scale"
        )
    if scale == "percent" and present.size and present.max() <= 1.0:
        raise UserError(
            f"{where}: every value is <= 1; fractions? pass --scale fraction (percent is the default)"
        )
    return values * 100.0 if scale == "fraction" else values


def read_matrix(
    path: Path,
    stream: Sequence[str],
    holdout: Sequence[str] = (),
    layout: str = "plain",
    scale: str = "percent",
) -> Matrix:
    """The file as a Matrix in task order and in %; UserError (one line) for a bad file."""
    path = Path(path)
    if layout not in LAYOUTS:
        raise UserError(f"unknown --layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    if scale not in SCALES:
        raise UserError(f"unknown --scale {scale!r}; valid: {', '.join(SCALES)}")
    if not path.is_file():
        raise UserError(f"{path} does not exist; give a .npy or .csv accuracy matrix")
    suffix = path.suffix.lower()
    held: tuple[str, ...]
    held_m: np.ndarray | None
    if suffix == ".npy":
        stream_m, held_m, held = _read_npy(path, stream, layout), None, ()
    elif suffix == ".csv":
        if layout != "plain":
            raise UserError(f"--layout {layout} is for .npy files; a CSV names its columns")
        stream_m, held_m, held = _read_csv(path, stream, holdout)
    else:
        raise UserError(f"{path}: unknown file type {suffix!r}; give a .npy or .csv file")
    if held_m is None:
        held_m = np.zeros((stream_m.shape[0], 0))
    trained = np.concatenate([stream_m[1:], held_m[1:]], axis=1)
    if np.isnan(trained).any():
        row, col = (int(v) for v in np.argwhere(np.isnan(trained))[0])
        raise UserError(f"{path}: no value after task {row + 1} in column {col + 1}; fill it in")
    if not np.isnan(stream_m[0]).all() and np.isnan(stream_m[0]).any():
        raise UserError(f"{path}: the zero-shot row is incomplete; give every value or none")
    stream_m = _scaled(stream_m, scale, path)
    held_m = _scaled(held_m, scale, path) if held else held_m
    return Matrix(stream_m, held_m, held)


# ------------------------------------------------------------------------------ writing
def run_name(setting: dict[str, Any], learner: str, seed: int) -> str:
    """As `clbench run` names runs, with `imported` before the seed."""
    parts = ["real", str(setting["name"])]
    if setting["order"] != "I":
        parts.append(f"order{setting['order']}")
    if setting.get("shots"):
        parts.append(f"{setting['shots']}shot")
    return "-".join([*parts, learner, "imported", f"seed{seed}"])


def _rows(matrix: Matrix, setting: dict[str, Any], ident: dict[str, Any]) -> pd.DataFrame:
    stream = list(setting["datasets"])
    rows = []
    first = 0 if matrix.has_zero_shot else 1
    for t in range(first, len(stream) + 1):
        after = "zeroshot" if t == 0 else stream[t - 1]
        cells = [(n, "stream", matrix.stream[t, j]) for j, n in enumerate(stream)]
        if t > 0 or not np.isnan(matrix.holdout[0]).all():
            cells += [
                (n, "holdout", matrix.holdout[t, j]) for j, n in enumerate(matrix.holdout_names)
            ]
        for name, split, value in cells:
            rows.append(
                {
                    **ident,
                    "after_task": t,
                    "after_task_name": after,
                    "eval_dataset": name,
                    "split": split,
                    "correct": np.nan,  # a published matrix has percentages, not counts
                    "total": np.nan,
                    "accuracy": float(value),
                }
            )
    return pd.DataFrame(rows, columns=ACCURACY_COLUMNS)


def import_matrix(
    path: Path,
    setting: dict[str, Any],
    *,
    learner: str,
    source: str,
    model: str,
    pretrained: str,
    out: Path | None = None,
    seed: int = 0,
    role: str | None = None,
    layout: str = "plain",
    scale: str = "percent",
) -> Path:
    """Write the run directory of a published matrix; returns it. `setting` is the resolved
    real-world setting (the engine's Setting as a dict: name, datasets, holdout, order, shots)."""
    path = Path(path)
    if not source.strip():
        raise UserError(
            "--source is empty; say where the numbers were published (paper, table, file)"
        )
    if not learner or any(c in learner for c in "/\\ "):
        raise UserError(f"--learner {learner!r}: give a name without spaces or slashes")
    role = role or ("reference" if learner == "zeroshot" else "continual")
    if role not in ("continual", "reference"):
        raise UserError(f"unknown --role {role!r}; valid: continual, reference")
    matrix = read_matrix(path, setting["datasets"], setting.get("holdout", ()), layout, scale)
    run_id = run_name(setting, learner, seed)
    run_dir = Path(out) if out is not None else Path("results") / "runs" / run_id
    if run_dir.exists() and any(run_dir.iterdir()):
        raise UserError(f"{run_dir} exists and is not empty; delete it or pass another --out")
    ident = {
        "run_id": run_id,
        "setting": setting["name"],
        "world": "real",
        "model": model,
        "learner": learner,
        "seed": seed,
        "order": setting["order"],
        "shots": int(setting.get("shots") or 0),
    }
    acc = _rows(matrix, setting, ident)
    summary = summarize(acc)
    manifest = {
        "run_id": run_id,
        "status": "finished",
        "imported": {
            "source": source.strip(),
            "file": path.name,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "imported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "layout": layout,
            "scale": scale,
            "zero_shot_row": matrix.has_zero_shot,
        },
        "config": {
            "world": "real",
            "setting": setting["name"],
            "order": setting["order"],
            "shots": setting.get("shots"),
            "learner": learner,
            "seed": seed,
            "model": model,
            "pretrained": pretrained,
            "eval_limit": None,
            "overrides": {},
        },
        "setting": {k: (list(v) if isinstance(v, tuple) else v) for k, v in setting.items()},
        "learner": {"name": learner, "role": role, "uses_training_budget": role != "reference"},
        "world": {"name": "real"},
        "backbone": {"name": model, "pretrained": pretrained},
        "versions": versions(),
        "tasks": [],
    }
    write_parquet(acc, run_dir / ACCURACY_FILE)
    write_parquet(summary, run_dir / SUMMARY_FILE)
    write_json(manifest, run_dir / MANIFEST_FILE)  # last: the directory is a run once it exists
    return run_dir
