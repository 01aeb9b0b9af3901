"""The benchmark scripts run end to end at smoke size and write the JSON they promise.

No speed is asserted (a shared machine cannot promise one); the figures are in
docs/performance.md.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CELL_KEYS = {
    "train_steps_per_s", "eval_images_per_s", "peak_cuda_mb", "peak_rss_mb",
    "train_ratio", "eval_ratio",
}  # fmt: skip


@pytest.mark.slow
def test_gpu_sh_smoke_writes_every_cell(tmp_path):
    out = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu.sh"), "--smoke", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "PYTHON": sys.executable},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads((tmp_path / "gpu-smoke.json").read_text())
    assert record["smoke"] and record["device"] == "cpu" and record["model"] == "tiny"
    assert record["complete"]  # rewritten after every cell, marked complete at the end
    results = record["results"]
    assert set(results) == {"drslora", "lora", "finetune", "zscl"}
    for learner, by_prec in results.items():
        assert set(by_prec) == {"fp32", "bf16", "fp16"}, learner
        assert "fp16 needs CUDA" in by_prec["fp16"]["skipped"]
    cell = results["drslora"]["fp32"]  # measured, every field a positive finite number
    assert record["budgets"] == "real" and cell["batch_size"] == 64  # X-TAIL's real batch
    assert CELL_KEYS <= set(cell)
    for key in CELL_KEYS - {"peak_cuda_mb"}:
        assert math.isfinite(cell[key]) and cell[key] > 0, key
    assert cell["peak_cuda_mb"] is None  # CPU: no CUDA memory to report
    assert record["peak_rss_mb_is"] == "process high-water mark after the cell"
    # CPU: no host-device syncs to count (torch's sync debug mode is CUDA's)
    assert cell["train_host_syncs_per_step"] is None
    assert cell["eval_host_syncs_per_dataset"] is None
    assert "| drslora | fp32 |" in out.stdout


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the CPU refusal")
def test_gpu_check_refuses_a_machine_without_cuda_in_one_line(tmp_path):
    out = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120, env={**__import__("os").environ, "PYTHON": sys.executable},
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: no CUDA device visible to torch; run this on a GPU machine "
        "(CPU: bash benchmarks/gpu.sh --smoke --out DIR)"
    ]
    assert not list((tmp_path / "out").iterdir())  # nothing measured, nothing written


@pytest.mark.slow
def test_real_pipeline_smoke_compares_both_paths(tmp_path):
    path = tmp_path / "rp.json"
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "real_pipeline.py"), "--smoke",
         "--out", str(path), "--tmp", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(path.read_text())
    e, t = r["eval"], r["train"]
    assert e["passes"] == 3 and len(e["reference_pass_s"]) == len(e["clbench_pass_s"]) == 3
    assert e["test_images"] == 2 * 3 * 4 and r["jpeg_files"] == 2 * 3 * (4 + 4)
    assert 0 < e["clbench_cache_build_s"] <= e["clbench_first_pass_s"]
    assert e["prediction_disagreements"] <= 2
    for value in (e["ratio"], e["ratio_first_pass"], e["ratio_later_passes"], t["ratio"]):
        assert math.isfinite(value) and value > 0
    assert t["clbench_steps_per_s"] > 0 and t["reference_steps_per_s"] > 0
    assert not list(tmp_path.glob("clbench-realpipe-*")), "the JPEG folders are removed"


def test_budget_table_aggregates_seeds_per_model_learner_and_budget():
    """Mean ± std (ddof 1) over the committed 3-seed lora runs, against summary.parquet."""
    import statistics

    from cl_bench.analysis.results import read_parquet

    runs = [REPO / f"results/toy/xtail/runs/toy-xtail-lora-seed{s}" for s in (0, 1, 2)]
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "budget_table.py"), *map(str, runs), runs[0]],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| small |")]
    assert len(rows) == 1  # one (model, learner, iterations) group
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[:4] == ["small", "lora", "80", "4"]
    last = []
    for run in [*runs, runs[0]]:
        summary = read_parquet(run / "summary.parquet")
        last.append(float(summary[summary["dataset"] == "mean"].iloc[0]["last"]))
    assert cells[5] == f"{statistics.mean(last):.1f} ± {statistics.stdev(last):.1f}"
    assert cells[8] == "—"  # lora has no rank selection


def test_adapter_forms_checks_both_forms_agree_then_times_them():
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "adapter_forms.py"), "--model", "toy",
         "--batch", "4", "--prompts", "3", "--rank", "2", "--rounds", "1", "--steps", "1",
         "--threads", "1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    gap = float(out.stdout.split("max |logit difference| between the forms ")[1].split()[0])
    assert gap < 1e-4  # same blocks, same function: only rounding tells the forms apart
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ")][1:]
    assert [row.split(" | ")[0] for row in rows] == ["| parametrized", "| branch"]
    assert rows[0].split(" | ")[2] == "1.000"


def test_overlapped_eval_times_both_variants_only_after_they_agree():
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "overlapped_eval.py"), "--rounds", "1",
         "--iterations", "1", "--eval-limit", "4", "--threads", "2"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ")][1:]
    assert [row.split(" | ")[0] for row in rows] == ["| sequential", "| overlapped"]
    assert rows[0].split(" | ")[4] == "1.000"
    # one thread per side against two for both: the counts and the weights must not move
    assert "identical across all 2 runs" in out.stdout


def test_overlapped_eval_reports_no_time_when_the_variants_disagree():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "overlapped_eval", REPO / "benchmarks" / "overlapped_eval.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    run = {"counts": [["aircraft", 3, 4]], "weights": "ab", "total_s": 1.0}
    module.refuse_if_different({"sequential": [run], "overlapped": [dict(run)]})  # agree: returns
    moved = dict(run, counts=[["aircraft", 2, 4]])
    with pytest.raises(SystemExit, match="DIFFERENT across the 2 runs"):
        module.refuse_if_different({"sequential": [run], "overlapped": [moved]})
    with pytest.raises(SystemExit, match="not reported"):
        module.refuse_if_different({"sequential": [run], "overlapped": [dict(run, weights="cd")]})
