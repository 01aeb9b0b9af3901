"""Shared test fixtures, and the `integration` marker for the subprocess end-to-end tests.

Imports of torch and cl_bench happen inside the fixtures, so collecting a light test file
stays light.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import torch
    from fakeworld import FakeWorld

    from cl_bench.engine.loop import Engine

# Tests that run clbench (or a child python) in other processes, by file and function name
# (every parametrization). Listed here rather than decorated in place so the test files stay
# untouched; tests/test_packaging.py marks itself. Keep this list in step when such tests are
# added, renamed or removed.
INTEGRATION: dict[str, set[str]] = {
    "test_atomic.py": {"test_killed_writer_leaves_old_or_new_file_never_a_torn_one"},
    "test_bad_input.py": {"test_real_command_exits_2_without_traceback_and_debug_shows_it"},
    "test_distributed.py": {
        "test_two_ranks_reproduce_the_whole_batch_gradient",
        "test_torchrun_two_processes_match_one_process",
        "test_torchrun_learners_match_one_process",
        "test_torchrun_batch_that_does_not_split_is_a_clear_error",
    },
    "test_executors.py": {
        "test_slurm_sweep_through_submitit_matches_local_and_is_idempotent",
        "test_cli_sweep_through_submitit",
        "test_slurm_requeue_after_preemption_resumes_from_the_checkpoint",
        "test_ray_sweep_matches_local_and_is_idempotent",
        "test_ray_cancel_stops_the_remote_run_and_the_next_sweep_resumes_it",
    },
    "test_readme.py": {"test_readme_learner_runs_through_the_cli"},
    "test_resume.py": {
        "test_uninterrupted_reference_learns",
        "test_sigkill_anywhere_then_resume_is_exact",
        "test_sigkill_at_every_kind_of_point_then_resume_is_exact",
        "test_clbench_toy_run_killed_after_its_first_checkpoint_resumes_exactly",
    },
    "test_sweep.py": {"test_local_executor_runs_processes_and_reports_failures"},
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        name = getattr(item, "originalname", None) or item.name
        if name in INTEGRATION.get(item.path.name, ()):
            item.add_marker(pytest.mark.integration)


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture
def fake_world() -> FakeWorld:
    """The small generated data world of tests/fakeworld.py (no toy weights, no real data)."""
    from fakeworld import FakeWorld

    return FakeWorld()


@pytest.fixture
def fake_base_model() -> torch.nn.Module:
    """The fake world's untrained CLIP on CPU: what a run's weights are compared against."""
    import torch
    from fakeworld import FakeWorld

    return FakeWorld().backbone(torch.device("cpu")).model


TinyRun = Callable[..., "Engine"]


@pytest.fixture
def tiny_run(tmp_path: Path) -> TinyRun:
    """Run a learner for 2 X-TAIL tasks on the fake world; returns the finished Engine.

    tiny_run(learner, overrides=None, *, out=None, setting="xtail", iterations=6, **config)
    writes to `out` (default tmp_path / learner); extra keywords go to RunConfig.
    """

    def run(
        learner: str,
        overrides: dict[str, str] | None = None,
        *,
        out: Path | None = None,
        setting: str = "xtail",
        iterations: int = 6,
        **config: Any,
    ) -> Engine:
        from fakeworld import FakeWorld

        from cl_bench.engine.config import RunConfig
        from cl_bench.engine.loop import Engine

        options: dict[str, Any] = dict(
            setting=setting,
            learner=learner,
            world="toy",
            iterations=iterations,
            batch_size=8,
            seed=0,
            max_tasks=2,
            eval_limit=12,
            overrides=overrides or {},
            device="cpu",  # the numbers tests compare were computed on the CPU (--device auto)
        )
        cfg = RunConfig(**(options | config), out=str(out or tmp_path / learner))
        engine = Engine(cfg, world=FakeWorld())
        engine.run()
        return engine

    return run


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one torch thread (and leave the other core to other work)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
