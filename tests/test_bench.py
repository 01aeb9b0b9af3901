"""`clbench bench` on the tiny generated world: it runs both paths, they agree, it reports.

Nothing here asserts a speed (a shared CI machine cannot promise one); the ratios' bounds
are checked by hand and recorded in docs/performance.md.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from fakeworld import FakeWorld
from typer.testing import CliRunner

from cl_bench.cli import app
from cl_bench.engine.bench import count_host_syncs, format_result, run_bench
from cl_bench.errors import UserError

JSON_KEYS = {"train_ratio", "eval_ratio", "train_steps_per_s", "eval_images_per_s", "peak_rss_mb"}


def test_bench_measures_both_paths_for_a_training_learner():
    r = run_bench(
        learner="finetune", steps=3, repeats=2, world_obj=FakeWorld(), overrides={"lr": "1e-3"}
    )
    assert len(r.train_ratios) == 2 and len(r.eval_ratios) == 2
    for value in (
        r.train_ratio,
        r.eval_ratio,
        r.train_steps_per_s,
        r.eval_images_per_s,
        r.peak_rss_mb,
    ):
        assert math.isfinite(value) and value > 0
    assert r.eval_images == 13 * 6 * 3 + 6 * 6  # 13 fake datasets, 3-4 classes x 6 images
    # finetune changes both towers every repeat: every evaluation re-encodes every prompt
    # (the text side is encoded on the first of the 4 slices of each evaluation, then reused)
    assert r.text_cache["text_misses"] == 2 * 13 and r.text_cache["text_hits"] == 2 * 3 * 13
    assert r.text_cache["image_hits"] == 0 and r.text_cache["image_misses"] == 2 * 4 * 13
    assert "ratio" in format_result(r)
    # host syncs are counted on CUDA only (torch's sync debug mode)
    assert r.train_host_syncs_per_step is None and r.eval_host_syncs_per_dataset is None
    assert "host syncs" not in format_result(r)


def test_bench_of_a_non_training_learner_reports_eval_only_and_hits_the_cache():
    r = run_bench(learner="zeroshot", steps=2, repeats=2, world_obj=FakeWorld())
    assert math.isnan(r.train_ratio) and r.train_ratios == []
    # repeat 0 encodes every prompt once and every slice's images once; repeat 1 nothing
    expected = {
        "text_hits": 3 * 13 + 4 * 13,
        "text_misses": 13,
        "image_hits": 52,
        "image_misses": 52,
    }
    assert r.text_cache == expected


def test_bench_rejects_bad_counts():
    with pytest.raises(UserError, match="--steps and --repeats"):
        run_bench(steps=0, world_obj=FakeWorld())


def test_cli_json_has_the_documented_keys(monkeypatch):
    monkeypatch.setattr("cl_bench.engine.loop.get_world", lambda cfg: FakeWorld())
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "--learner",
            "finetune",
            "--steps",
            "2",
            "--repeats",
            "1",
            "--json",
            "--set",
            "lr=1e-3",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output.strip().splitlines()[-1])
    assert JSON_KEYS <= data.keys()
    assert data["learner"] == "finetune" and data["steps"] == 2


def test_host_syncs_are_not_counted_off_cuda_and_fn_is_not_run():
    ran = []
    assert count_host_syncs(lambda: ran.append(1), torch.device("cpu")) is None
    assert ran == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (a lent GPU machine)")
def test_host_syncs_counts_each_blocking_call_and_none_for_queued_work():
    device = torch.device("cuda")
    x = torch.ones(64, 64, device=device)
    assert count_host_syncs(lambda: (x @ x).sum(), device) == 0
    assert count_host_syncs(lambda: [float(x.sum()) for _ in range(3)], device) == 3
    assert count_host_syncs(lambda: torch.tensor([1.0, 2.0], device=device), device) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (a lent GPU machine)")
def test_to_device_uploads_without_a_host_sync_where_a_plain_to_syncs():
    from cl_bench.api.sampling import to_device

    device = torch.device("cuda")
    batch = np.zeros((32, 64, 64, 3), dtype=np.uint8)
    assert count_host_syncs(lambda: to_device(batch, device), device) == 0
    assert count_host_syncs(lambda: torch.from_numpy(batch).to(device), device) == 1
