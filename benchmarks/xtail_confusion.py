"""Where X-TAIL errors go: cross-domain confusion from the runs' domains.parquet files.

Used for docs/learners.md ("drslora on toy X-TAIL: where the toy differs from the paper").
For each learner (mean over its seeds) it prints two tables:

1. Transfer decomposition. For every evaluation t >= 1 and every dataset j not yet learned
   (j > t, the cells Transfer averages), the share of j's test images classified into
   (a) the domains already learned (1..t), (b) other unseen domains, (c) j's own domain but
   the wrong class, and the accuracy; each against the zero-shot model on the same cells.
2. Per domain after the last task: accuracy, zero-shot accuracy, and the share of the
   domain's test images classified into another domain (zero-shot and last).

    python benchmarks/xtail_confusion.py results/toy/xtail/runs --learners zeroshot,lora,drslora
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from cl_bench.analysis.results import ACCURACY_FILE, DOMAINS_FILE, cross_domain_shares, load_runs


def _stream_order(domains: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(domains["predicted_domain"]))


def transfer_decomposition(domains: pd.DataFrame, acc: pd.DataFrame) -> dict[str, float]:
    """% of unseen datasets' test images by destination, mean over the Transfer cells."""
    position = {name: i + 1 for i, name in enumerate(_stream_order(domains))}  # learning task
    d = domains.assign(
        task_of_eval=domains["eval_dataset"].map(position),
        task_of_pred=domains["predicted_domain"].map(position),
    )
    unseen = d[(d["after_task"] >= 1) & (d["task_of_eval"] > d["after_task"])]
    cells = ["after_task", "eval_dataset"]
    totals = unseen.groupby(cells)["count"].sum()

    def share(mask: pd.Series) -> float:
        part = unseen[mask].groupby(cells)["count"].sum()
        return float((100.0 * part.reindex(totals.index, fill_value=0) / totals).mean())

    own = unseen["predicted_domain"] == unseen["eval_dataset"]
    learned = unseen["task_of_pred"] <= unseen["after_task"]
    stream = acc[acc["split"] == "stream"].set_index(cells)["accuracy"]
    accuracy = float(stream.reindex(totals.index).mean())
    return {
        "to learned domains": share(learned),
        "to other unseen domains": share(~learned & ~own),
        "own domain, wrong class": share(own) - accuracy,
        "accuracy": accuracy,
    }


def zero_shot_on_same_cells(domains: pd.DataFrame, acc: pd.DataFrame) -> dict[str, float]:
    """The zero-shot model's row 0, scored on the same (t, j > t) cells and destinations."""
    row0 = domains[domains["after_task"] == 0]
    acc0 = acc[(acc["after_task"] == 0) & (acc["split"] == "stream")]
    tasks = range(1, len(_stream_order(domains)))
    return transfer_decomposition(
        pd.concat([row0.assign(after_task=t) for t in tasks], ignore_index=True),
        pd.concat([acc0.assign(after_task=t) for t in tasks], ignore_index=True),
    )


def per_domain_last(domains: pd.DataFrame, acc: pd.DataFrame) -> pd.DataFrame:
    """Accuracy and cross-domain share (results.cross_domain_shares) per domain, zero-shot
    and after the last task."""
    shares = cross_domain_shares(domains)
    stream = acc[acc["split"] == "stream"].pivot_table(
        index="after_task", columns="eval_dataset", values="accuracy", aggfunc="first"
    )
    first, last = shares.index[0], shares.index[-1]
    return pd.DataFrame(
        {
            "acc zero-shot": stream.loc[first, shares.columns],
            "cross-domain zero-shot": shares.loc[first],
            "acc last": stream.loc[last, shares.columns],
            "cross-domain last": shares.loc[last],
        }
    ).rename_axis("domain")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path)
    parser.add_argument("--learners", default="zeroshot,lora,drslora")
    args = parser.parse_args()
    domains, _ = load_runs([args.runs], DOMAINS_FILE)
    acc, _ = load_runs([args.runs], ACCURACY_FILE)
    if domains.empty:
        raise SystemExit(f"no {DOMAINS_FILE} under {args.runs}; re-run the X-TAIL runs")
    pd.set_option("display.width", 160)
    for learner in args.learners.split(","):
        dl, al = domains[domains["learner"] == learner], acc[acc["learner"] == learner]
        seeds = sorted(dl["seed"].unique())
        decomp = [transfer_decomposition(dl[dl.seed == s], al[al.seed == s]) for s in seeds]
        zs = zero_shot_on_same_cells(dl[dl.seed == seeds[0]], al[al.seed == seeds[0]])
        table = pd.DataFrame(
            {
                "zero-shot": zs,
                "learner": pd.DataFrame(decomp).mean(),
                "std": pd.DataFrame(decomp).std(ddof=1),
            }
        )
        print(
            f"\n## {learner} ({len(seeds)} seeds): unseen datasets' test images, % (Transfer cells)"
        )
        print(table.round(2).to_string())
        per = sum(per_domain_last(dl[dl.seed == s], al[al.seed == s]) for s in seeds) / len(seeds)
        print(f"\n{learner}: per domain after the last task (mean over seeds), %")
        print(per.round(1).to_string())
        print(f"mean: {per.mean().round(2).to_dict()}")


if __name__ == "__main__":
    np.seterr(all="raise")
    main()
