"""Which runs end a task below that task's zero-shot accuracy, and whose doing it is.

For every learner that trains and every dataset j of the stream (mean over the learner's
seeds): zero-shot acc[0, j], the accuracy just before training on j (acc[j-1, j]: what the
earlier tasks left) and right after it (acc[j, j]). A cell is listed when acc[j, j] is below
zero-shot; "own training" = acc[j, j] − acc[j-1, j] says whether the task's own training made
it worse (≤ 0) or raised it from what the earlier tasks eroded (> 0). Issue 25's criterion;
docs/toy-world.md ("Toy MNIST and the LoRA family") reads the committed runs with it.

    python benchmarks/own_task_check.py results/toy/xtail/runs results/toy/mtil/runs
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from cl_bench.analysis.results import ACCURACY_FILE, read_parquet


def own_task_cells(folder: Path) -> pd.DataFrame:
    rows = []
    for run in sorted(p for p in folder.iterdir() if (p / ACCURACY_FILE).is_file()):
        acc = read_parquet(run / ACCURACY_FILE)
        acc = acc[acc["split"] == "stream"]
        stream = list(dict.fromkeys(acc["after_task_name"]))[1:]
        for t, name in enumerate(stream, start=1):
            cell = acc[acc["eval_dataset"] == name].groupby("after_task")["accuracy"].mean()
            rows.append(
                {
                    "learner": acc["learner"].iloc[0],
                    "dataset": name,
                    "zero_shot": cell[0],
                    "before": cell[t - 1],
                    "after": cell[t],
                }
            )
    frame = pd.DataFrame(rows)
    return frame.groupby(["learner", "dataset"], sort=False).mean().reset_index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="folders of run directories")
    args = parser.parse_args()
    print(
        "| runs | learner | dataset | zero-shot | before its task | after its task | own training |"
    )
    print("|---|---|---|---|---|---|---|")
    for folder in args.folders:
        cells = own_task_cells(folder)
        below = cells[(cells["learner"] != "zeroshot") & (cells["after"] < cells["zero_shot"])]
        for r in below.itertuples():
            print(
                f"| {folder} | {r.learner} | {r.dataset} | {r.zero_shot:.1f} | {r.before:.1f} "
                f"| {r.after:.1f} | {r.after - r.before:+.1f} |"
            )


if __name__ == "__main__":
    main()
