"""No results file is ever partially written: kill a writer at random moments, read it back.

A child process (this file run as a script) rewrites one large parquet file (or manifest
JSON) in a loop with `cl_bench.analysis.results.write_parquet` / `write_json`, each version tagged
with its number. The parent SIGKILLs it at random moments; the file must then always read
back as exactly one complete version.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cl_bench.analysis.results import atomic_write, read_manifest, read_parquet, remove_temp_files
from cl_bench.errors import UserError

ROWS = 200_000  # ~3 MB of parquet: a write takes long enough to be hit mid-way


def version_frame(version: int) -> pd.DataFrame:
    rng = np.random.default_rng(version)
    return pd.DataFrame(
        {
            "version": np.full(ROWS, version, dtype=np.int64),
            "value": rng.standard_normal(ROWS),
            "label": rng.integers(0, 1000, ROWS).astype(str),
        }
    )


def writer_main(path: Path, kind: str) -> None:
    from cl_bench.analysis.results import write_json, write_parquet

    version = _check_complete(path, kind) if path.exists() else 0  # go on from the last one
    while True:
        version += 1
        if kind == "parquet":
            write_parquet(version_frame(version), path)
        else:
            write_json({"version": version, "rows": list(range(50_000))}, path)
        print(version, flush=True)


def _check_complete(path: Path, kind: str) -> int:
    """The version the file holds; fails unless it is one complete, valid version."""
    if kind == "parquet":
        frame = read_parquet(path)
        version = int(frame["version"].iloc[0])
        pd.testing.assert_frame_equal(frame, version_frame(version))
        return version
    data = read_manifest(path.parent)
    assert data["rows"] == list(range(50_000))
    return int(data["version"])


@pytest.mark.parametrize("kind", ["parquet", "json"])
def test_killed_writer_leaves_old_or_new_file_never_a_torn_one(tmp_path: Path, kind: str) -> None:
    path = tmp_path / ("accuracy.parquet" if kind == "parquet" else "manifest.json")
    rng = random.Random(1234)
    seen: list[int] = []
    torn_moments = 0
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, __file__, str(path), kind],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # Wait for a first completed write (imports take a while), then kill at random.
        first = proc.stdout.readline()
        assert first.strip().isdigit(), proc.stderr.read()
        temps_before = set(tmp_path.glob(".*.tmp"))
        time.sleep(rng.uniform(0.0, 1.0))
        os.kill(proc.pid, signal.SIGKILL)
        rest, _ = proc.communicate()
        last_done = int((first + rest).split()[-1])
        assert proc.returncode == -signal.SIGKILL
        version = _check_complete(path, kind)
        # The file is the last completed write or the one in flight when the kill came.
        assert version in (last_done, last_done + 1), (version, last_done)
        torn_moments += bool(set(tmp_path.glob(".*.tmp")) - temps_before)  # killed mid-write
        seen.append(version)
    # Killed writes may leave their temp files; a resume sweeps them, never the results.
    removed = remove_temp_files(tmp_path)
    assert all(p.name.startswith(f".{path.name}.") and p.suffix == ".tmp" for p in removed)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    # every writer completed at least one new version before it was killed
    assert seen == sorted(set(seen)) and len(seen) == 4
    print(f"{kind}: versions {seen}, {torn_moments} of 4 kills hit a write in flight")


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "summary.parquet"
    version_frame(1).head(10).to_parquet(path, index=False)

    def broken(tmp: Path) -> None:
        tmp.write_bytes(b"PAR1 half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    assert int(read_parquet(path)["version"].iloc[0]) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["summary.parquet"]


def test_truncated_parquet_is_a_clear_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "accuracy.parquet"
    version_frame(3).head(100).to_parquet(path, index=False)
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(UserError, match=r"accuracy.parquet is corrupt or truncated"):
        read_parquet(path)


if __name__ == "__main__":
    writer_main(Path(sys.argv[1]), sys.argv[2])
