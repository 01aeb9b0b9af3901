"""`clbench run`'s start-up runs with the cyclic GC off and freezes what it built, once per
process, and leaves the collector on for the run itself (cl_bench/cli/app.py)."""

from __future__ import annotations

import gc
import importlib
import subprocess
import sys

import pytest

from cl_bench.cli.app import start_up_without_gc

app_module = importlib.import_module("cl_bench.cli.app")  # the package's `app` is the Typer


@pytest.fixture
def fresh_process_state(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """As if no start-up had happened; gc.freeze recorded instead of done (pytest's heap)."""
    calls: list[str] = []
    monkeypatch.setattr(app_module, "_START_UP_DONE", False)
    monkeypatch.setattr(app_module.gc, "freeze", lambda: calls.append("freeze"))
    return calls


def test_gc_is_off_inside_then_frozen_and_on(fresh_process_state: list[str]) -> None:
    assert gc.isenabled()
    with start_up_without_gc():
        assert not gc.isenabled()
    assert gc.isenabled()
    assert fresh_process_state == ["freeze"]


def test_only_the_first_start_up_of_a_process_changes_anything(
    fresh_process_state: list[str],
) -> None:
    with start_up_without_gc():
        pass
    with start_up_without_gc():
        assert gc.isenabled()
    assert fresh_process_state == ["freeze"]


def test_an_error_in_start_up_leaves_the_collector_on(fresh_process_state: list[str]) -> None:
    with pytest.raises(ValueError), start_up_without_gc():
        raise ValueError("bad config")
    assert gc.isenabled()
    assert fresh_process_state == ["freeze"]


def test_a_caller_that_turned_gc_off_keeps_it_off(fresh_process_state: list[str]) -> None:
    gc.disable()
    try:
        with start_up_without_gc():
            pass
        assert not gc.isenabled()
        assert fresh_process_state == []
    finally:
        gc.enable()


def test_clbench_run_builds_its_engine_without_gc_and_runs_with_it() -> None:
    code = (
        "import gc\n"
        "import cl_bench.engine.loop as loop\n"
        "seen = {}\n"
        "class Dist:\n"
        "    is_main = False\n"
        "class FakeEngine:\n"
        "    def __init__(self, cfg, reporter):\n"
        "        seen['init'] = gc.isenabled()\n"
        "        self.dist = Dist()\n"
        "    def run(self):\n"
        "        seen['run'] = gc.isenabled()\n"
        "loop.Engine = FakeEngine\n"
        "from cl_bench.cli import main\n"
        "main(['run', '--max-tasks', '1'])\n"
        "print(seen['init'], seen['run'], gc.get_freeze_count() > 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "True", "True"]
