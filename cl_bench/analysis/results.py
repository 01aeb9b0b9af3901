"""Results on disk: accuracy.parquet (long format), summary.parquet, manifest.json.

Every write is atomic (temp file in the same directory, fsync, rename), so a crash leaves
either the old or the new file, never a partial one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cl_bench.analysis.metrics import holdout_transfer, stream_metrics
from cl_bench.errors import UserError

ACCURACY_FILE = "accuracy.parquet"
SUMMARY_FILE = "summary.parquet"
MANIFEST_FILE = "manifest.json"
TRAIN_LOG_FILE = "train_log.parquet"
DOMAINS_FILE = "domains.parquet"  # task-agnostic settings: where predictions land, by domain
LOCK_FILE = ".lock"

# Identity columns every row carries, so a table can never mix unlike runs silently.
RUN_COLUMNS = ["run_id", "setting", "world", "model", "learner", "seed", "order", "shots"]
ACCURACY_COLUMNS = RUN_COLUMNS + [
    "after_task",
    "after_task_name",
    "eval_dataset",
    "split",
    "correct",
    "total",
    "accuracy",
]
DOMAIN_COLUMNS = RUN_COLUMNS + [
    "after_task",
    "after_task_name",
    "eval_dataset",
    "predicted_domain",  # the stream dataset whose block of the union classifier won
    "count",
]
SUMMARY_COLUMNS = RUN_COLUMNS + [
    "dataset",
    "split",
    "transfer",
    "average",
    "last",
    "holdout_transfer",
    "gain",
    "forgetting",
]


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call write(tmp_path) (its result is ignored), fsync it, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        tmp_path.unlink(missing_ok=True)


def remove_temp_files(run_dir: Path) -> list[Path]:
    """Delete the temp files that killed atomic writes left (`.<name>.<random>.tmp`)."""
    found = sorted(Path(run_dir).rglob(".*.tmp")) if Path(run_dir).is_dir() else []
    for path in found:
        path.unlink(missing_ok=True)
    return found


@contextlib.contextmanager
def lock_run_dir(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on `run_dir` for the duration of a run.

    Two processes writing one run dir would interleave rows and checkpoints. The OS drops
    the lock when its holder dies (even by SIGKILL), so a crashed run never blocks a resume.
    No-op where fcntl is missing (Windows).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK_FILE, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise UserError(
                f"{run_dir} is being written by another clbench process (pid {holder}); wait for it to end or choose another --out"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    atomic_write(path, lambda tmp: df.to_parquet(tmp, index=False))


def append_rows(
    path: Path, rows: list[dict[str, Any]], key: str, keep_below: int, columns=None
) -> None:
    """Rewrite a per-task table: its rows with `key` < keep_below, then `rows`.

    Rows of the task being written (or of later ones, after a resume) are replaced, never
    duplicated.
    """
    new = pd.DataFrame(rows, columns=columns)
    old = read_parquet(path) if path.exists() else pd.DataFrame()
    kept = old[old[key] < keep_below] if key in old.columns else old.iloc[0:0]
    write_parquet(pd.concat([kept, new], ignore_index=True) if not kept.empty else new, path)


def write_json(obj: Any, path: Path) -> None:
    def dump(tmp: Path) -> None:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")

    atomic_write(path, dump)


def read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; is this a run directory?") from None
    except Exception as exc:
        raise UserError(
            f"{path} is corrupt or truncated ({type(exc).__name__}); delete it and resume the run"
        ) from None


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """manifest.json, checked for the shape cl-bench writes (check_manifest)."""
    path = Path(run_dir) / MANIFEST_FILE
    try:
        return check_manifest(json.loads(path.read_text()), path)
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; is {run_dir} a run directory?") from None
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{path} is corrupt ({exc.msg}); delete the run directory and run again"
        ) from None


# The manifest keys a reader relies on, with the JSON type each must have when present.
# A manifest of another schema (or a hand-made one) fails here with one line, not later
# with an AttributeError deep in a leaderboard.
MANIFEST_TYPES: dict[str, tuple[type, ...]] = {
    "status": (str,),
    "config": (dict,),
    "setting": (dict,),
    "learner": (dict,),
    "backbone": (dict,),
    "world": (dict,),
    "tasks": (list,),
    "imported": (dict,),
}
JSON_TYPE_NAMES: dict[type, str] = {dict: "a table", list: "a list", str: "a string"}
REFERENCE_LEARNERS = frozenset({"zeroshot"})  # manifests older than learner.role


def check_manifest(manifest: Any, path: Path) -> dict[str, Any]:
    """The manifest if it has the shape cl-bench writes; UserError (one line) if not."""

    def kind(value: Any) -> str:
        return JSON_TYPE_NAMES.get(type(value), type(value).__name__)

    if not isinstance(manifest, dict):
        raise UserError(f"{path} is {kind(manifest)}, not a cl-bench run manifest (a JSON table)")
    for key, types in MANIFEST_TYPES.items():
        if key in manifest and not isinstance(manifest[key], types):
            raise UserError(
                f"{path}: '{key}' is {kind(manifest[key])}, not {JSON_TYPE_NAMES[types[0]]}; "
                "not a cl-bench run manifest (another schema or a hand-made file?)"
            )
    if not all(isinstance(t, dict) for t in manifest.get("tasks", [])):
        raise UserError(f"{path}: 'tasks' must be a list of tables; not a cl-bench run manifest")
    return manifest


def learner_role(manifest: dict[str, Any], learner: str) -> tuple[str, bool]:
    """(role, uses_training_budget) of a run's learner: "continual" rows are ranked,
    "reference" rows (zero-shot, upper bounds) are shown beside them; a learner that does not
    use the training budget gives the same numbers at any --iterations / --batch-size.
    Manifests written before these keys existed: zeroshot is a budget-free reference, every
    other learner a budget-bound continual learner."""
    entry = manifest.get("learner", {})
    old = learner in REFERENCE_LEARNERS
    role = entry.get("role", "reference" if old else "continual")
    uses_budget = entry.get("uses_training_budget", not old)
    if role not in ("continual", "reference") or not isinstance(uses_budget, bool):
        raise UserError(
            f"learner.role {role!r} / uses_training_budget {uses_budget!r} in the manifest; "
            "expected 'continual' or 'reference' and true or false"
        )
    return role, uses_budget


def accuracy_matrices(acc: pd.DataFrame) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    """One run's long rows -> (stream matrix (T+1) x T, stream names, hold-out (T+1) x H, names)."""
    stream = acc[acc["split"] == "stream"]
    holdout = acc[acc["split"] == "holdout"]
    stream_names = list(
        stream.sort_values("after_task").drop_duplicates("eval_dataset")["eval_dataset"]
    )
    # Stream datasets are numbered in task order: order them by the task that learns them.
    task_names = acc.drop_duplicates("after_task").set_index("after_task")["after_task_name"]
    order = [n for n in task_names.sort_index().tolist() if n in stream_names]
    stream_names = order + [n for n in stream_names if n not in order]
    num_tasks = len(stream_names)
    rows = np.arange(num_tasks + 1)

    def pivot(df: pd.DataFrame, cols: list[str]) -> np.ndarray:
        table = df.pivot_table(
            index="after_task", columns="eval_dataset", values="accuracy", aggfunc="first"
        )
        return table.reindex(index=rows, columns=cols).to_numpy(dtype=np.float64)

    holdout_names = sorted(
        holdout["eval_dataset"].unique().tolist(),
        key=lambda n: list(holdout["eval_dataset"]).index(n),
    )
    return pivot(stream, stream_names), stream_names, pivot(holdout, holdout_names), holdout_names


def cross_domain_shares(domains: pd.DataFrame) -> pd.DataFrame:
    """One run's domains.parquet -> % of each stream dataset's test images classified into
    another domain's classes; rows after_task 0..T, columns the stream in task order."""
    order = list(dict.fromkeys(domains["predicted_domain"]))  # written in stream order
    own = domains["count"].where(domains["eval_dataset"] == domains["predicted_domain"], 0)
    sums = domains.assign(own=own).groupby(["after_task", "eval_dataset"])[["own", "count"]].sum()
    shares = 100.0 * (1.0 - sums["own"] / sums["count"])
    return shares.unstack("eval_dataset").reindex(columns=order).sort_index()


def summarize(acc: pd.DataFrame) -> pd.DataFrame:
    """Summary rows of one run: per stream dataset, per hold-out dataset, and the means."""
    ident = {c: acc[c].iloc[0] for c in RUN_COLUMNS}
    s_mat, s_names, h_mat, h_names = accuracy_matrices(acc)
    m = stream_metrics(s_mat)
    nan = float("nan")
    rows = []
    for j, name in enumerate(s_names):
        rows.append(
            {
                **ident,
                "dataset": name,
                "split": "stream",
                "transfer": m.transfer[j],
                "average": m.average[j],
                "last": m.last[j],
                "holdout_transfer": nan,
                "gain": s_mat[j + 1, j] - s_mat[0, j],
                "forgetting": s_mat[j + 1, j] - s_mat[-1, j] if j < len(s_names) - 1 else nan,
            }
        )
    h_vals = holdout_transfer(h_mat) if h_names else np.array([])
    for name, value in zip(h_names, h_vals, strict=True):
        rows.append(
            {
                **ident,
                "dataset": name,
                "split": "holdout",
                "transfer": nan,
                "average": nan,
                "last": nan,
                "holdout_transfer": float(value),
                "gain": nan,
                "forgetting": nan,
            }
        )
    rows.append(
        {
            **ident,
            "dataset": "mean",
            "split": "mean",
            "transfer": m.transfer_mean,
            "average": m.average_mean,
            "last": m.last_mean,
            "holdout_transfer": float(np.mean(h_vals)) if h_names else nan,
            "gain": m.gain,
            "forgetting": m.forgetting,
        }
    )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def is_run_dir(path: Path) -> bool:
    return (path / MANIFEST_FILE).is_file()


def find_run_dirs(paths: Iterable[Path]) -> list[Path]:
    """Run directories at or below each path (a directory holding manifest.json)."""
    found: list[Path] = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise UserError(
                f"{p} does not exist; pass run directories or a folder that contains them"
            )
        if is_run_dir(p):
            found.append(p)
        else:
            found.extend(sorted(m.parent for m in p.rglob(MANIFEST_FILE)))
    return found


def load_runs(
    paths: Iterable[Path], table: str = ACCURACY_FILE, only_finished: bool = True
) -> tuple[pd.DataFrame, list[tuple[Path, str]]]:
    """Concatenate `table` from many run dirs; returns (frame, [(skipped dir, reason)])."""
    frames, skipped = [], []
    for run_dir in find_run_dirs(paths):
        try:
            manifest = read_manifest(run_dir)
        except UserError as exc:
            skipped.append((run_dir, str(exc)))
            continue
        status = manifest.get("status")
        if only_finished and status != "finished":
            skipped.append((run_dir, f"status is {status!r}, not finished"))
            continue
        try:
            frames.append(read_parquet(run_dir / table))
        except UserError as exc:
            skipped.append((run_dir, str(exc)))
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return frame, skipped
