"""The upper bounds (baselines/joint.py, individual.py): joint trains on seeded batches of the
union of every task so far, each image against its own dataset's prompts, and equals finetune
on the first task; individual starts every task from the zero-shot weights. Both are
reference rows of a leaderboard."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from cl_bench_baselines.individual import Individual
from cl_bench_baselines.joint import Joint

from cl_bench.analysis.results import learner_role
from cl_bench.api.learner import Batch, Task
from cl_bench.api.toolkit import weights_fingerprint

HERE = __name__  # tests/ is on sys.path: targets name this module
ITERATIONS = 6
BATCH = 8

pytestmark = pytest.mark.usefixtures("one_thread")


class RecordingJoint(Joint):
    """joint, remembering every batch it draws: (task, [(stored set, labels, prompts)])."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.drawn: list[tuple[int, np.ndarray, list[Batch]]] = []
        self.indices: list[np.ndarray] = []

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        assert self.stream is not None
        draw = self.stream.next_indices

        def recorded() -> np.ndarray:
            self.indices.append(draw().copy())
            return self.indices[-1]

        self.stream.next_indices = recorded  # type: ignore[method-assign]

    def union_batch(self, device: torch.device) -> list[Batch]:
        parts = super().union_batch(device)
        self.drawn.append((len(self.stored) - 1, self.indices[-1], parts))
        return parts


class RecordingIndividual(Individual):
    """individual, remembering the weights right after each begin_task."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.at_begin: list[str] = []
        self.at_end: list[str] = []

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)
        self.at_begin.append(weights_fingerprint(self.model))

    def end_task(self, task: Task) -> None:
        super().end_task(task)
        self.at_end.append(weights_fingerprint(self.model))


def test_joint_draws_seeded_batches_from_the_union_of_the_tasks_so_far(tiny_run):
    engine = tiny_run(f"{HERE}:RecordingJoint", max_tasks=3, iterations=ITERATIONS)
    joint = engine.learner
    assert isinstance(joint, RecordingJoint)
    s, backbone = engine.setting, engine.parts.backbone
    splits = [
        engine.world.load_split(n, "train", s.shots, s.split_seed, backbone.image_size)
        for n in s.datasets
    ]
    sizes = [len(split.labels) for split in splits]
    assert [len(st.labels) for st in joint.stored] == sizes
    starts = np.cumsum([0, *sizes])
    for t in range(3):
        drawn = [(idx, parts) for task, idx, parts in joint.drawn if task == t]
        assert len(drawn) == ITERATIONS
        # the engine's batch formula over the union of tasks 0..t: seeded (seed 0, task t)
        # permutations of the union, concatenated, sliced into batches
        union = int(starts[t + 1])
        generator = torch.Generator().manual_seed(0 * 1_000_003 + t)
        epochs = -(-ITERATIONS * BATCH // union)
        order = torch.cat([torch.randperm(union, generator=generator) for _ in range(epochs)])
        got = np.concatenate([idx for idx, _ in drawn])
        assert np.array_equal(got, order[: ITERATIONS * BATCH].numpy())
        mixed = set()
        for idx, parts in drawn:
            which = np.searchsorted(starts, idx, side="right") - 1
            assert sum(len(p.labels) for p in parts) == BATCH
            assert [p.task_index for p in parts] == sorted(set(which.tolist()))
            for part in parts:
                k = part.task_index
                assert k <= t  # only tasks learned so far
                local = idx[which == k] - starts[k]
                pixels = torch.from_numpy(np.ascontiguousarray(splits[k].images[local]))
                assert torch.equal(part.images, backbone.normalize(pixels))
                assert part.labels.tolist() == splits[k].labels[local].tolist()
                # each image is scored against its own dataset's prompts
                assert torch.equal(part.text_tokens, joint.stored[k].text_tokens)
                mixed.add(k)
        if t == 2:  # the batches really mix tasks
            assert len(mixed) > 1
    stored = engine.manifest["derived"]["stored_data"]
    assert stored["items"] == sum(sizes)
    pixels = sum(s.images.nbytes for s in joint.stored)
    assert stored["mb"] == pytest.approx(pixels / 2**20, abs=1e-3) and pixels > 0


def test_joint_on_its_first_task_is_finetune(tiny_run, tmp_path):
    joint = tiny_run("joint", max_tasks=1, out=tmp_path / "joint")
    finetune = tiny_run("finetune", max_tasks=1, out=tmp_path / "finetune")
    assert weights_fingerprint(joint.learner.model) == weights_fingerprint(finetune.learner.model)
    rows = [(r["eval_dataset"], r["correct"]) for r in joint.parts.recorder.rows]
    assert rows == [(r["eval_dataset"], r["correct"]) for r in finetune.parts.recorder.rows]


def test_individual_starts_every_task_from_the_zero_shot_weights(tiny_run, fake_base_model):
    engine = tiny_run(f"{HERE}:RecordingIndividual", max_tasks=3)
    learner = engine.learner
    assert isinstance(learner, RecordingIndividual)
    zero_shot = weights_fingerprint(fake_base_model)
    assert learner.at_begin == [zero_shot] * 3
    # not vacuous: every task did move the weights away from zero-shot, differently
    assert zero_shot not in learner.at_end and len(set(learner.at_end)) == 3
    for name, p in learner.zero_shot.named_parameters():
        assert torch.equal(p, dict(fake_base_model.named_parameters())[name]), name


@pytest.mark.parametrize("name", ["joint", "individual"])
def test_upper_bounds_are_reference_rows_with_a_training_budget(tiny_run, name):
    manifest = tiny_run(name, max_tasks=1).manifest
    assert manifest["learner"]["role"] == "reference"
    assert manifest["learner"]["uses_training_budget"] is True
    assert learner_role(manifest, name) == ("reference", True)
