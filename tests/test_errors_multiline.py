"""Several problems at once: a count line, then one line per problem with its fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cl_bench.errors import UserError


def test_user_error_text_with_items() -> None:
    assert str(UserError("plain")) == "plain"
    assert str(UserError("not ready", items=["a: fix it"])) == "not ready: a: fix it"
    err = UserError("the real world is not ready", items=["a: do x", "b: do y", "c: do z"])
    assert str(err).splitlines() == [
        "the real world is not ready (3 problems):",
        "  - a: do x",
        "  - b: do y",
        "  - c: do z",
    ]
    assert err.items == ("a: do x", "b: do y", "c: do z") and err.message.endswith("ready")


@pytest.mark.integration
@pytest.mark.slow  # a fresh interpreter imports torch: ~30 s on a shared 2-core machine
def test_run_on_a_world_without_data_lists_each_missing_item(tmp_path: Path) -> None:
    """`clbench run --world real` with no data and no weights: exit 2, no traceback."""
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(tmp_path / "hub"),  # no weights cached
        "HF_HUB_OFFLINE": "1",
        "CLBENCH_CACHE": str(tmp_path / "cache"),
    }
    cmd = [sys.executable, "-m", "cl_bench.cli", "run", "--world", "real", "--setting", "mtil",
           "--learner", "finetune", "--data-root", str(tmp_path / "data"),
           "--out", str(tmp_path / "run")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    lines = proc.stderr.rstrip("\n").splitlines()
    # mtil order I: 11 stream + 2 hold-out datasets, the backbone's weights (and a missing
    # reader package, where scipy is not installed)
    items = lines[1:]
    assert lines[0] == f"error: the real world is not ready ({len(items)} problems):"
    assert len(items) >= 14 and all(line.startswith("  - ") for line in items)
    datasets = [line for line in items if "not found (looked for" in line]
    assert len(datasets) == 13 and all("fix" in line or "manual" in line for line in datasets)
    assert any(line.startswith("  - aircraft: ") for line in items)
    assert any(line.startswith("  - weights ViT-B-16/openai ") for line in items)
    assert max(len(line) for line in lines) < 1000  # was one line of ~4000 characters
    assert not (tmp_path / "run").exists()


def test_python_api_raises_the_same_text(tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub.constants

    import cl_bench

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(UserError) as err:
        cl_bench.run(
            setting="mtil", learner="zeroshot", world="real", data_root=str(tmp_path / "data"),
            out=str(tmp_path / "run"), progress=False,
        )  # fmt: skip
    text = str(err.value)
    assert text.splitlines()[0] == f"the real world is not ready ({len(err.value.items)} problems):"
    assert text.splitlines()[1:] == [f"  - {item}" for item in err.value.items]


def test_data_check_counts_then_one_line_per_problem(tmp_path: Path, monkeypatch) -> None:
    import huggingface_hub.constants
    from typer.testing import CliRunner

    from cl_bench.data.real.cli import app

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    result = CliRunner().invoke(
        app, ["check", "--setting", "mtil", "--root", str(tmp_path / "data")]
    )
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0] == "not ready: 14 of 14 items missing (fixes below)"  # 13 datasets, weights
    fixes = [line for line in lines if line.lstrip().startswith("-> ")]
    assert len(fixes) >= 14 and " | " not in result.output
