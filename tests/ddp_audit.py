"""`clbench` under torchrun, auditing which rank writes under a directory.

Each rank records, with a Python audit hook, every file it opens for writing, renames,
creates or removes under $CLBENCH_AUDIT_DIR, and prints `audit rank R: N writes` to stderr on
exit. tests/test_distributed.py asserts that rank 0 writes (the hook works) and no other
rank does. Not a test module itself (no test_ prefix).
"""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path

AUDITED = Path(os.environ["CLBENCH_AUDIT_DIR"]).resolve()
RANK = int(os.environ.get("RANK", "0"))
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
MUTATING = {"os.rename", "os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree", "os.truncate"}
writes: list[str] = []


def _under_audit(path: object) -> bool:
    if not isinstance(path, (str, bytes, os.PathLike)):
        return False
    resolved = Path(os.fsdecode(path)).resolve()
    return resolved == AUDITED or AUDITED in resolved.parents


def hook(event: str, args: tuple) -> None:
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool(
            isinstance(flags, int) and flags & WRITE_FLAGS
        )
    elif event in MUTATING:
        path, writing = args[0], True
    else:
        return
    if writing and _under_audit(path):
        writes.append(f"{event} {os.fsdecode(path)}")


def report() -> None:
    print(f"audit rank {RANK}: {len(writes)} writes", file=sys.stderr)
    for line in writes[:5]:
        print(f"audit rank {RANK}: {line}", file=sys.stderr)


if __name__ == "__main__":
    sys.addaudithook(hook)
    atexit.register(report)
    from cl_bench.cli import main

    main(sys.argv[1:])
