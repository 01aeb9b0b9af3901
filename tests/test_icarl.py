"""icarl as ZSCL's code runs it: herding, the per-task memory split, the exemplar replay, the
zero-shot teacher and exact resume of the memory (issue 22)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cl_bench_baselines.icarl import ICaRL, herding, task_shares
from learner_steps import steps
from test_baselines import build, make_training_set

from cl_bench.api.learner import Batch, StepInfo, Task
from cl_bench.engine.checkpoint import load_checkpoint, save_checkpoint
from cl_bench.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")

# Five features on a line (the second coordinate is constant and cancels): x = 0, 1, 2, 3, 10,
# mean μ = 16 / 5 = 3.2. Pick k minimises |μ − (x + S) / (k + 1)|, S = sum of the picks so far:
#   k=0: |3.2 − x|          -> x = 3  (0.2)                     rows left 0 1 2 4
#   k=1: |3.2 − (x + 3)/2|  -> x closest to 3.4: x = 2 (1.4)     rows left 0 1 4
#   k=2: |3.2 − (x + 5)/3|  -> x closest to 4.6: x = 1 (3.6)     rows left 0 4
#   k=3: |3.2 − (x + 6)/4|  -> x closest to 6.8: x = 10 (3.2)    rows left 0
#   k=4: x = 0
LINE = torch.tensor([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0], [3.0, 1.0], [10.0, 1.0]])
PICKED = [3, 2, 1, 4, 0]
# The reference stores new_dataset[i] with i counted in the shrunken feature array: row 4
# (x = 10) is at position 1 once rows 1, 2, 3 are gone, so its slot stores image 1 again.
STORED = [3, 2, 1, 1, 0]


def test_herding_picks_the_references_order_on_a_hand_made_feature_set():
    assert herding(LINE, 5) == (PICKED, STORED)
    assert herding(LINE, 3) == (PICKED[:3], STORED[:3])
    assert herding(LINE, 99) == (PICKED, STORED)  # min(m, N) picks


def test_herding_on_normalised_2d_features_by_hand():
    # unit vectors at 0°, 60°, 90°: μ = ((1 + 0.5 + 0) / 3, (0 + 0.866 + 1) / 3) = (0.5, 0.622)
    # k=0: |μ − f|²: 0° 0.25 + 0.387 = 0.637, 60° 0 + 0.244² = 0.060, 90° 0.25 + 0.143 = 0.393
    #      -> row 1; S = (0.5, 0.866)
    # k=1: (f + S)/2: 0° (0.75, 0.433): 0.0625 + 0.0357 = 0.098; 90° (0.25, 0.933): 0.0625 +
    #      0.0967 = 0.159 -> row 0 (stored: position 0 of [row 0, row 2])
    # k=2: row 2, at position 0 of the one row left -> the reference stores image 0 again
    s = 3**0.5 / 2
    feats = torch.tensor([[1.0, 0.0], [0.5, s], [0.0, 1.0]])
    assert herding(feats, 3) == ([1, 0, 2], [1, 0, 0])


@pytest.mark.parametrize(
    ("memory_size", "tasks", "expected"),
    [(10000, 1, (0, 10000)), (10000, 2, (5000, 5000)), (10000, 3, (3333, 6667)), (10, 4, (2, 8))],
)
def test_task_shares_are_the_references_arithmetic(memory_size, tasks, expected):
    assert task_shares(memory_size, tasks) == expected


def make_task(learner: ICaRL, index: int, num: int = 12) -> Task:
    classnames = ("red thing", "green thing", "blue thing")
    prompts = tuple(f"a photo of a {c}." for c in classnames)
    tokens = learner.backbone.tokenizer(list(prompts))
    training = make_training_set(num, seed=index + 1)
    return Task(index, f"set{index}", classnames, prompts, tokens, 2, 4, 3, training)


def make_batch(task: Task, seed: int) -> Batch:
    assert task.training_set is not None
    rows = np.random.default_rng(seed).choice(len(task.training_set), 4, replace=False)
    images = torch.from_numpy(np.ascontiguousarray(task.training_set.images[np.sort(rows)]))
    labels = torch.from_numpy(task.training_set.labels[np.sort(rows)].astype(np.int64))
    return Batch(task.training_set.normalize(images), labels, task.text_tokens, task.index)


def run_task(learner: ICaRL, task: Task, iterations: int = 2) -> list[dict]:
    steps(learner).begin(task)
    logs = [
        steps(learner).step(
            make_batch(task, 100 * task.index + s), StepInfo(s, iterations, task.index, 3)
        )
        for s in range(iterations)
    ]
    steps(learner).end(task)
    return logs


def test_memory_holds_the_configured_exemplars_per_task_after_three_tasks():
    learner, _ = build(ICaRL, {"memory_size": "10", "candidates_per_task": "11"})
    tasks = [make_task(learner, t) for t in range(3)]
    run_task(learner, tasks[0])
    # task 1: the split's first min(K, N) = 10 images, in order, no herding
    assert [len(s.labels) for s in learner.memory] == [10]
    assert learner.memory[0].source_index.tolist() == list(range(10))
    run_task(learner, tasks[1])
    # t = 2: the first set keeps K // 2 = 5, the new one takes K − K // 2 = 5 by herding
    assert [len(s.labels) for s in learner.memory] == [5, 5]
    assert learner.memory[0].source_index.tolist() == list(range(5))
    assert all(i < 11 for i in learner.memory[1].source_index.tolist())  # candidates_per_task
    herded = learner.memory[1].source_index.tolist()
    run_task(learner, tasks[2])
    # t = 3: each earlier set keeps its first K // 3 = 3, the new one takes 10 − 3 = 7
    assert [len(s.labels) for s in learner.memory] == [3, 3, 7]
    assert learner.memory[1].source_index.tolist() == herded[:3]  # a prefix of the herding
    assert [s.task for s in learner.memory] == [0, 1, 2]
    for s, task in zip(learner.memory, tasks, strict=True):  # images come from the task's split
        ts = task.training_set
        assert torch.equal(s.images, torch.from_numpy(ts.images[s.source_index.numpy()]))
        assert s.labels.tolist() == ts.labels[s.source_index.numpy()].tolist()
    assert learner.ctx.derived["icarl.memory_images"] == {"per_task": [3, 3, 7], "total": 13}
    stored = learner.ctx.derived["stored_data"]
    assert stored["items"] == 13
    assert stored["mb"] == pytest.approx(13 * 16 * 16 * 3 / 2**20, abs=1e-3)


def test_only_the_first_candidates_per_task_images_are_candidates():
    learner, _ = build(ICaRL, {"memory_size": "10", "candidates_per_task": "8"})
    run_task(learner, make_task(learner, 0))  # getNewDataset's cap holds for task 1 too
    assert learner.memory[0].source_index.tolist() == list(range(8))
    seen = []
    learner.candidate_features = lambda ts, n: seen.append(n) or LINE.repeat(2, 1)[:n]
    run_task(learner, make_task(learner, 1))
    assert seen == [8] and len(learner.memory[1].labels) == 5


@pytest.mark.parametrize(("indexing", "expected"), [("reference", STORED), ("chosen", PICKED)])
def test_the_learner_stores_what_herding_chose_on_hand_made_features(
    indexing, expected, monkeypatch
):
    learner, _ = build(ICaRL, {"memory_size": "10", "herding_indexing": indexing})
    first, second = make_task(learner, 0), make_task(learner, 1, num=5)
    run_task(learner, first)
    monkeypatch.setattr(learner, "candidate_features", lambda ts, n: LINE[:n])
    run_task(learner, second)
    assert learner.memory[1].source_index.tolist() == expected
    assert torch.equal(
        learner.memory[1].images, torch.from_numpy(second.training_set.images[expected])
    )


def test_candidate_features_are_the_trained_models_normalised_image_features():
    learner, _ = build(ICaRL)
    task = make_task(learner, 0)
    feats = learner.candidate_features(task.training_set, 7)
    images = task.training_set.normalize(torch.from_numpy(task.training_set.images[:7].copy()))
    with torch.no_grad():
        expected = F.normalize(learner.model.encode_image(images), dim=-1)
    assert feats.shape == (7, expected.shape[1])
    assert torch.allclose(feats, expected, atol=1e-6)
    assert torch.allclose(feats.norm(dim=-1), torch.ones(7), atol=1e-6)


def test_first_task_is_plain_finetuning_then_exemplars_are_distilled_from_the_zero_shot_model():
    learner, _ = build(ICaRL, {"memory_size": "10"})
    first = make_task(learner, 0)
    logs = run_task(learner, first)
    assert set(logs[0]) >= {"task_loss"} and "distill_i2t" not in logs[0]
    second = make_task(learner, 1)
    steps(learner).begin(second)
    assert learner.teacher is learner.zeroshot
    # the replay: the memory in task order, unshuffled, batches of 4, the last partial, cycled
    replay = learner.normalize(torch.cat([s.images for s in learner.memory]))
    got = [learner.next_exemplars(torch.device("cpu")) for _ in range(4)]
    for chunk, (a, b) in zip(got, [(0, 4), (4, 8), (8, 10), (0, 4)], strict=True):
        assert torch.equal(chunk, replay[a:b])
    learner.cursor = 0
    scalars = steps(learner).step(make_batch(second, 7), StepInfo(0, 2, 1, 3))
    # task 1 moved the model away from zero-shot: the distillation is non-zero at once
    assert scalars["distill_i2t"] > 1e-6 and scalars["distill_t2i"] > 1e-6


def test_task_start_teacher_distills_nothing_at_the_first_step():
    learner, _ = build(ICaRL, {"memory_size": "10", "teacher": "task_start"})
    run_task(learner, make_task(learner, 0))
    second = make_task(learner, 1)
    steps(learner).begin(second)
    assert learner.zeroshot is None and learner.teacher is not learner.model
    scalars = steps(learner).step(make_batch(second, 7), StepInfo(0, 2, 1, 3))
    assert scalars["distill_i2t"] == pytest.approx(0.0, abs=1e-5)


def test_state_dict_round_trips_the_memory_and_a_resumed_learner_continues_identically(tmp_path):
    learner, _ = build(ICaRL, {"memory_size": "10"})
    tasks = [make_task(learner, t) for t in range(3)]
    for task in tasks[:2]:
        run_task(learner, task)
    save_checkpoint(tmp_path / "ckpt", learner.state_dict(), 2, "icarl")
    state, completed, _, _ = load_checkpoint(tmp_path / "ckpt")
    assert completed == 2
    resumed, _ = build(ICaRL, {"memory_size": "10"})
    resumed.load_state_dict(state)
    for a, b in zip(learner.memory, resumed.memory, strict=True):
        assert (a.task, a.dataset) == (b.task, b.dataset)
        for key in ("images", "labels", "source_index"):
            x, y = getattr(a, key), getattr(b, key)
            assert x.dtype == y.dtype and torch.equal(x, y), key
    assert resumed.memory[0].images.dtype == torch.uint8
    logs_a, logs_b = run_task(learner, tasks[2]), run_task(resumed, tasks[2])
    assert [float(e["loss"]) for e in logs_a] == [float(e["loss"]) for e in logs_b]
    assert [s.source_index.tolist() for s in learner.memory] == [
        s.source_index.tolist() for s in resumed.memory
    ]


def test_a_checkpoint_against_other_zero_shot_weights_is_refused():
    learner, _ = build(ICaRL, {"memory_size": "10"})
    state = learner.state_dict()
    state["zeroshot_fingerprint"] = "0" * 16
    with pytest.raises(UserError, match="different zero-shot weights"):
        learner.load_state_dict(state)


def test_bad_memory_size_is_a_user_error():
    with pytest.raises(UserError, match="memory_size must be >= 1"):
        build(ICaRL, {"memory_size": "0"})
