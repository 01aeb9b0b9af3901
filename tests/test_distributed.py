"""torchrun / multi-process runs: exact gradients, sharded evaluation, rank 0 alone writes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from cl_bench.api.toolkit import contrastive_loss
from cl_bench.data.world import ImageSet
from cl_bench.engine.distributed import Distributed, gather_batch
from cl_bench.errors import UserError

TESTS = Path(__file__).resolve().parent
BATCH, FEATURES, CLASSES = 8, 5, 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Linear(FEATURES, 4)
    images = torch.randn(BATCH, FEATURES)
    labels = torch.tensor([0, 1, 2, 0, 1, 1, 2, 0])  # repeated classes: t2i targets spread
    text = torch.randn(CLASSES, 4)
    return model, images, labels, text


def _loss(model: nn.Module, images, labels, text) -> torch.Tensor:
    """A batch-coupled term (contrastive) plus a per-image mean (squared feature norm)."""
    feats = model(images)
    logits = 3.0 * feats @ text.T
    return contrastive_loss(logits, labels) + 0.1 * feats.pow(2).sum(dim=1).mean()


def _rank_gradients(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, images, labels, text = _problem()
        if rank == 1:  # a diverged start: attach() must copy rank 0's weights
            with torch.no_grad():
                model.weight.add_(1.0)
        helper = Distributed(rank, world)
        helper.attach(model)
        idx = helper.shard_indices(np.arange(BATCH))
        _loss(model, images[idx], labels[idx], text).backward()
        gathered = gather_batch(labels[idx])[0]
        # ragged rows: (correct, total, per-domain predictions) next to (correct, total)
        counts = helper.sum_counts([(rank, 1, 2 * rank, 3), (1, rank)])
        torch.save(
            {"grads": [p.grad for p in model.parameters()], "labels": gathered, "counts": counts},
            f"{out}/rank{rank}.pt",
        )
        helper.detach()
    finally:
        dist.destroy_process_group()


def test_two_ranks_reproduce_the_whole_batch_gradient(tmp_path):
    model, images, labels, text = _problem()
    _loss(model, images, labels, text).backward()
    expected = [p.grad for p in model.parameters()]
    mp.spawn(_rank_gradients, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert torch.equal(got["labels"], labels)  # gathered in global batch order
        assert got["counts"] == [(1, 2, 2, 6), (2, 1)]
        for g, e in zip(got["grads"], expected, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_without_torchrun_everything_is_the_identity():
    helper = Distributed()
    assert not helper.enabled and helper.is_main
    idx = np.arange(8)
    assert helper.shard_indices(idx) is idx
    t = torch.randn(3, requires_grad=True)
    assert gather_batch(t)[0] is t
    assert helper.sum_counts([(1, 2)]) == [(1, 2)]
    assert helper.mean_scalars([{"loss": 1.5}]) == [{"loss": 1.5}]


def test_shards_partition_a_test_set_and_the_batch():
    images = ImageSet(np.arange(7 * 2).reshape(7, 2, 1, 1).astype(np.uint8), np.arange(7), "h")
    shards = [Distributed(r, 3).shard_images(images) for r in range(3)]
    assert sorted(np.concatenate([s.labels for s in shards]).tolist()) == list(range(7))
    assert len({s.ids_hash for s in shards}) == 3
    batch = np.array([5, 3, 9, 1])
    assert Distributed(1, 2).shard_indices(batch).tolist() == [9, 1]
    with pytest.raises(UserError, match="multiple of 3"):
        Distributed(0, 3).check_batch_size(32)


def _clbench(args: list[str], out: Path, nproc: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "CLBENCH_AUDIT_DIR": str(out), "OMP_NUM_THREADS": "1"}
    if nproc == 1:
        cmd = [sys.executable, str(TESTS / "ddp_audit.py")]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += ["--nproc-per-node", str(nproc), str(TESTS / "ddp_audit.py")]
    cmd += ["run", *args, "--out", str(out), "--threads", "1"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _compare_one_and_two_processes(tmp_path: Path, args: list[str]) -> None:
    single = _clbench(args, tmp_path / "one", 1)
    assert single.returncode == 0, single.stderr[-2000:]
    double = _clbench(args, tmp_path / "two", 2)
    assert double.returncode == 0, double.stderr[-2000:]
    # rank 0 writes (so the audit hook works), rank 1 writes nothing
    assert "audit rank 0: 0 writes" not in double.stderr
    assert "audit rank 0:" in double.stderr
    assert "audit rank 1: 0 writes" in double.stderr, double.stderr[-2000:]
    a = pd.read_parquet(tmp_path / "one" / "accuracy.parquet")
    b = pd.read_parquet(tmp_path / "two" / "accuracy.parquet")
    assert len(a) == len(b) and (a["total"].values == b["total"].values).all()
    assert np.abs(a["accuracy"].values - b["accuracy"].values).max() <= 0.5
    la = pd.read_parquet(tmp_path / "one" / "train_log.parquet")
    lb = pd.read_parquet(tmp_path / "two" / "train_log.parquet")
    np.testing.assert_allclose(la["loss"].values, lb["loss"].values, rtol=1e-4)
    # where predictions land, by domain: the zero-shot row (same weights) is exactly equal,
    # and every row counts each test image once
    da = pd.read_parquet(tmp_path / "one" / "domains.parquet")
    db = pd.read_parquet(tmp_path / "two" / "domains.parquet")
    assert (
        da.query("after_task == 0")["count"].tolist()
        == db.query("after_task == 0")["count"].tolist()
    )
    per_row = db.groupby(["after_task", "eval_dataset"])["count"].sum()
    totals = b.query("split == 'stream'").set_index(["after_task", "eval_dataset"])["total"]
    assert per_row.sort_index().tolist() == totals.sort_index().tolist()
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir())


SMALL = ["--setting", "xtail", "--max-tasks", "2", "--iterations", "6", "--eval-limit", "96"]


def test_torchrun_two_processes_match_one_process(tmp_path):
    _compare_one_and_two_processes(tmp_path, [*SMALL, "--learner", "finetune"])


@pytest.mark.slow
@pytest.mark.parametrize("learner", ["lwf", "zscl", "drslora", "gated_lora", "clip_ast"])
def test_torchrun_learners_match_one_process(tmp_path, learner):
    _compare_one_and_two_processes(tmp_path, [*SMALL, "--learner", learner])


def test_torchrun_batch_that_does_not_split_is_a_clear_error(tmp_path):
    result = _clbench([*SMALL, "--learner", "finetune", "--batch-size", "7"], tmp_path / "r", 2)
    assert result.returncode != 0
    # each rank prints the one-line error and exits 2; the launcher then prints its own report
    assert "error: batch size 7 does not split evenly over 2 processes" in result.stderr
    assert "exitcode  : 2" in result.stderr
    assert "cl_bench" not in result.stderr.split("Traceback")[1].split("ChildFailedError")[0]
