"""End-to-end runs of the engine on a tiny generated world: files, schema, identities."""

import json

import numpy as np
import pandas as pd
import pytest
from fakeworld import FakeWorld

from cl_bench.analysis.metrics import stream_metrics
from cl_bench.analysis.results import (
    ACCURACY_COLUMNS,
    DOMAIN_COLUMNS,
    SUMMARY_COLUMNS,
    accuracy_matrices,
)
from cl_bench.engine.config import RunConfig
from cl_bench.engine.loop import run
from cl_bench.errors import UserError


@pytest.fixture(scope="module")
def zeroshot_xtail(tmp_path_factory):
    out = tmp_path_factory.mktemp("zs") / "run"
    return run(RunConfig(setting="xtail", learner="zeroshot", out=str(out)), world=FakeWorld())


@pytest.fixture(scope="module")
def finetune_xtail(tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "run"
    return run(
        RunConfig(
            setting="xtail",
            learner="finetune",
            iterations=4,
            batch_size=8,
            max_tasks=3,
            out=str(out),
            overrides={"lr": "1e-3"},
        ),
        world=FakeWorld(),
    )


def test_writes_three_files_with_the_schema(finetune_xtail):
    d = finetune_xtail.run_dir
    acc = pd.read_parquet(d / "accuracy.parquet")
    summary = pd.read_parquet(d / "summary.parquet")
    manifest = json.loads((d / "manifest.json").read_text())
    assert list(acc.columns) == ACCURACY_COLUMNS and list(summary.columns) == SUMMARY_COLUMNS
    # 3 tasks + zero-shot row, each over 3 stream + 3 hold-out datasets
    assert len(acc) == 4 * 6
    assert sorted(acc["after_task"].unique()) == [0, 1, 2, 3]
    assert set(acc.loc[acc.split == "holdout", "eval_dataset"]) == {
        "cifar100",
        "places365",
        "imagenet",
    }
    assert (acc["accuracy"] == 100 * acc["correct"] / acc["total"]).all()
    assert manifest["status"] == "finished" and manifest["config"]["seed"] == 0
    assert len(manifest["tasks"]) == 3 and all(
        t["trainable_parameters"] > 0 for t in manifest["tasks"]
    )
    assert {"torch", "open_clip", "python"} <= manifest["versions"].keys()
    assert all("test" in v for v in manifest["splits"].values())
    assert manifest["splits"]["aircraft"]["train"]


def test_domains_table_places_every_prediction_in_one_domain(finetune_xtail):
    """X-TAIL: per evaluation and stream dataset, predictions per domain block of the union."""
    d = finetune_xtail.run_dir
    domains = pd.read_parquet(d / "domains.parquet")
    acc = finetune_xtail.accuracy.query("split == 'stream'")
    assert list(domains.columns) == DOMAIN_COLUMNS
    assert sorted(domains["after_task"].unique()) == [0, 1, 2, 3]
    stream = ["aircraft", "caltech101", "dtd"]
    assert set(domains["predicted_domain"]) == set(stream) == set(domains["eval_dataset"])
    assert len(domains) == 4 * 3 * 3  # evaluations x stream datasets x domains
    keys = ["after_task", "eval_dataset"]
    per_row = domains.groupby(keys)["count"].sum()
    assert (per_row == acc.set_index(keys)["total"].reindex(per_row.index)).all()
    own = domains[domains.eval_dataset == domains.predicted_domain].set_index(keys)["count"]
    assert (own >= acc.set_index(keys)["correct"].reindex(own.index)).all()  # correct ⊂ own block


def test_domains_table_only_for_task_agnostic_settings(tmp_path):
    out = run(
        RunConfig(setting="mtil", learner="zeroshot", max_tasks=2, out=str(tmp_path / "m")),
        world=FakeWorld(),
    )
    assert not (out.run_dir / "domains.parquet").exists()


def test_finetune_changes_predictions_and_summary_matches_metrics(finetune_xtail):
    acc = finetune_xtail.accuracy
    s_mat, names, _, _ = accuracy_matrices(acc)
    assert names == ["aircraft", "caltech101", "dtd"]
    assert not np.allclose(s_mat[0], s_mat[-1])
    m = stream_metrics(s_mat)
    mean = finetune_xtail.summary.query("split == 'mean'").iloc[0]
    assert mean["transfer"] == pytest.approx(m.transfer_mean)
    assert mean["last"] == pytest.approx(m.last_mean)


def test_zeroshot_rows_identical_and_metrics_equal_zero_shot(zeroshot_xtail):
    acc = zeroshot_xtail.accuracy
    s_mat, _, h_mat, _ = accuracy_matrices(acc)
    assert (s_mat == s_mat[0]).all() and (h_mat == h_mat[0]).all()
    s = zeroshot_xtail.summary.query("split == 'stream'")
    assert np.allclose(s["last"], s_mat[0]) and np.allclose(s["average"], s_mat[0])
    assert np.allclose(s["transfer"].iloc[1:], s_mat[0, 1:])


def test_union_label_space_is_harder_than_own_space(tmp_path):
    """X-TAIL scores each image against all stream domains' classes, MTIL only its own."""
    xt = run(
        RunConfig(setting="xtail", learner="zeroshot", max_tasks=4, out=str(tmp_path / "x")),
        world=FakeWorld(),
    )
    mt = run(
        RunConfig(setting="mtil", learner="zeroshot", max_tasks=4, out=str(tmp_path / "m")),
        world=FakeWorld(),
    )
    x = xt.accuracy.query("after_task == 0 and split == 'stream'")["accuracy"].mean()
    m = mt.accuracy.query("after_task == 0 and split == 'stream'")["accuracy"].mean()
    assert x < m


def test_deterministic_by_seed(tmp_path):
    cfg = dict(
        setting="xtail",
        learner="finetune",
        iterations=3,
        batch_size=8,
        max_tasks=2,
        overrides={"lr": "1e-3"},
    )
    a = run(RunConfig(**cfg, out=str(tmp_path / "a")), world=FakeWorld()).accuracy
    b = run(RunConfig(**cfg, out=str(tmp_path / "b")), world=FakeWorld()).accuracy
    pd.testing.assert_frame_equal(a.drop(columns="run_id"), b.drop(columns="run_id"))


def test_refuses_to_overwrite_a_finished_run(zeroshot_xtail):
    with pytest.raises(UserError, match="already holds a finished run"):
        run(
            RunConfig(setting="xtail", learner="zeroshot", out=str(zeroshot_xtail.run_dir)),
            world=FakeWorld(),
        )
