"""The Learner API's run-facing parts: `requires`, `Task.training_set`, `eval_logits`.

Learners here are passed to the engine by target (``test_learner_api:Class``), so nothing is
added to the learner registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from fakeworld import FakeWorld

from cl_bench.api.learner import Batch, LabelSpace, Learner, StepInfo, Task
from cl_bench.api.optim import OptimizerConfig
from cl_bench.api.toolkit import clip_logits, contrastive_loss
from cl_bench.data.world import DataWorld
from cl_bench.engine.config import RunConfig
from cl_bench.engine.loop import Engine
from cl_bench.errors import UserError

HERE = __name__  # how this module is imported (tests/ is on sys.path): targets name it


pytestmark = pytest.mark.usefixtures("one_thread")


def config(learner: str, out: Path, **options: Any) -> RunConfig:
    base: dict[str, Any] = dict(
        setting="xtail", learner=learner, iterations=2, batch_size=8, seed=0, max_tasks=2,
        eval_limit=12, out=str(out),
    )  # fmt: skip
    return RunConfig(**(base | options))


# -- requires ---------------------------------------------------------------------------


class NeedsReference(Learner):
    description = "needs reference data"
    requires = frozenset({"reference_data"})


class NeedsTheMoon(Learner):
    requires = frozenset({"reference_data", "the_moon"})


class NoReferenceWorld(FakeWorld):
    """The fake world without reference data; loading anything is a test failure."""

    name = "noref"
    reference_data = DataWorld.reference_data  # the default: "not provided"

    def load_split(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a split was loaded before the requirements were checked")

    def backbone(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the backbone was built before the requirements were checked")


@pytest.mark.parametrize("learner", [f"{HERE}:NeedsReference", "zscl"])
def test_required_reference_data_missing_fails_in_the_constructor(learner, tmp_path):
    world = NoReferenceWorld()
    assert not world.provides_reference_data() and FakeWorld().provides_reference_data()
    out = tmp_path / "run"
    with pytest.raises(UserError) as err:
        Engine(config(learner, out), world=world)
    message = str(err.value)
    assert "\n" not in message
    assert "needs reference data" in message and "noref world does not provide" in message
    assert not out.exists()  # refused before the run directory was made


def test_required_reference_data_present_passes_the_constructor(tmp_path):
    engine = Engine(config(f"{HERE}:NeedsReference", tmp_path / "run"), world=FakeWorld())
    assert engine.learner_cls is NeedsReference


def test_unknown_requirement_lists_the_valid_ones(tmp_path):
    with pytest.raises(UserError, match=r"requires \['the_moon'\].*valid: reference_data$"):
        Engine(config(f"{HERE}:NeedsTheMoon", tmp_path / "run"), world=NoReferenceWorld())


def test_zscl_on_the_real_world_without_reference_flags_names_both(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    cfg = config("zscl", tmp_path / "run", world="real", data_root=str(tmp_path / "data"))
    with pytest.raises(UserError) as err:
        Engine(cfg)
    message = str(err.value)
    assert message.startswith("the real world is not ready (") and len(err.value.items) > 2
    missing = list(err.value.items)  # one line each below the count line
    assert message.splitlines()[1:] == [f"  - {m}" for m in missing]
    assert "reference images for distillation: set --reference-images DIR" in " ".join(missing)
    assert any(m.startswith("reference images") and "--reference-images" in m for m in missing)
    assert any(m.startswith("reference captions") and "--reference-captions" in m for m in missing)

    # given, the flags' lines go away (the datasets are still missing here)
    (tmp_path / "ref").mkdir()
    (tmp_path / "captions.txt").write_text("a photo.\n")
    cfg = config(
        "zscl", tmp_path / "run", world="real", data_root=str(tmp_path / "data"),
        reference_images=str(tmp_path / "ref"), reference_captions=str(tmp_path / "captions.txt"),
    )  # fmt: skip
    with pytest.raises(UserError) as err:
        Engine(cfg)
    assert "--reference-images" not in str(err.value)
    assert "--reference-captions" not in str(err.value)


# -- Task.training_set ------------------------------------------------------------------


class SeesTrainingSet(Learner):
    """Trains the logit scale (so the engine's step loop runs) and records what it is given."""

    @dataclass
    class Config(OptimizerConfig):
        lr: float = 1e-3

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.seen: list[dict[str, Any]] = []

    def begin_task(self, task: Task) -> None:
        assert task.training_set is not None
        batches = list(task.training_set.batches(7))
        self.seen.append(
            {"len": len(task.training_set), "batches": batches, "steps": [],
             "raw": task.training_set.images}
        )  # fmt: skip

    def trainable(self, task: Task) -> list[torch.nn.Parameter]:
        return [self.model.logit_scale]

    def loss(self, batch: Batch, step: StepInfo) -> tuple[torch.Tensor, dict[str, Any]]:
        self.seen[-1]["steps"].append((batch.images.clone(), batch.labels.clone()))
        logits = clip_logits(self.model, batch.images, batch.text_tokens)
        return contrastive_loss(logits, batch.labels), {}


def test_training_set_is_the_whole_split_in_order_normalized_like_the_batches(tmp_path):
    engine = Engine(config(f"{HERE}:SeesTrainingSet", tmp_path / "run"), world=FakeWorld())
    engine.run()
    learner, s = engine.learner, engine.setting
    backbone = engine.parts.backbone
    assert len(learner.seen) == 2
    for name, seen in zip(s.datasets, learner.seen, strict=True):
        train = FakeWorld().load_split(name, "train", s.shots, s.split_seed, backbone.image_size)
        expected = backbone.normalize(torch.from_numpy(train.images))
        assert seen["len"] == len(train) > 7
        assert np.array_equal(seen["raw"], train.images)
        sizes = [len(images) for images, _ in seen["batches"]]
        assert sizes == [7] * (len(train) // 7) + ([len(train) % 7] if len(train) % 7 else [])
        images = torch.cat([images for images, _ in seen["batches"]])
        labels = torch.cat([labels for _, labels in seen["batches"]])
        assert images.dtype == expected.dtype and torch.equal(images, expected)
        assert labels.dtype == torch.int64 and labels.tolist() == train.labels.tolist()
        # the engine's step batches are rows of that same normalized set, labels alike
        assert len(seen["steps"]) == s.iterations
        for step_images, step_labels in seen["steps"]:
            assert len(step_images) == s.batch_size
            for row, label in zip(step_images, step_labels, strict=True):
                hits = [j for j in range(len(expected)) if torch.equal(expected[j], row)]
                assert hits and all(train.labels[j] == label for j in hits)


# -- eval_logits --------------------------------------------------------------------------


class ClipEvalLogits(Learner):
    """The CLIP classifier, computed by the learner: must reproduce zeroshot exactly."""

    custom_eval_logits = True

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.spaces: list[LabelSpace] = []

    def eval_logits(self, images: torch.Tensor, space: LabelSpace) -> torch.Tensor:
        self.spaces.append(space)
        features = F.normalize(self.eval_model().encode_image(images).float(), dim=-1)
        return features @ space.text_features.T


class AlwaysClassZero(Learner):
    custom_eval_logits = True

    def eval_logits(self, images: torch.Tensor, space: LabelSpace) -> torch.Tensor:
        logits = torch.zeros(len(images), space.num_classes, device=images.device)
        logits[:, 0] = 1.0
        return logits


class WrongShape(Learner):
    custom_eval_logits = True

    def eval_logits(self, images: torch.Tensor, space: LabelSpace) -> torch.Tensor:
        return torch.zeros(len(images), space.num_classes + 1)


def _rows(engine: Engine) -> list[tuple]:
    return [
        (r["after_task"], r["eval_dataset"], r["split"], r["correct"], r["total"])
        for r in engine.parts.recorder.rows
    ]


def _domains(run_dir: Path) -> list[tuple]:
    frame = pd.read_parquet(run_dir / "domains.parquet")
    cols = ["after_task", "eval_dataset", "predicted_domain", "count"]
    return sorted(map(tuple, frame[cols].itertuples(index=False)))


def test_eval_logits_with_the_clip_classifier_equal_zeroshot_exactly(tiny_run, tmp_path):
    zeroshot = tiny_run("zeroshot", out=tmp_path / "zeroshot")
    custom = tiny_run(f"{HERE}:ClipEvalLogits", out=tmp_path / "custom")
    assert custom.manifest["learner"]["custom_eval_logits"] is True
    assert _rows(custom) == _rows(zeroshot)
    assert _domains(tmp_path / "custom") == _domains(tmp_path / "zeroshot")

    # the label spaces of one evaluation: X-TAIL's union for the stream, own classes else
    s, infos = custom.setting, custom.parts.infos
    stream, holdout = s.datasets, tuple(n for n in s.eval_datasets if n not in s.datasets)
    assert len(stream) == 2 and holdout
    union = tuple(c for n in stream for c in infos[n].classnames)
    starts = (0, infos[stream[0]].num_classes)
    spaces = {}
    for space in custom.learner.spaces:  # one batch per dataset: eval_limit < batch size
        spaces.setdefault(space.dataset, space)
    assert set(spaces) == set(stream) | set(holdout)
    width = custom.parts.backbone.width
    for name, offset in zip(stream, starts, strict=True):
        space = spaces[name]
        assert space.classnames == union and space.num_classes == len(union)
        assert space.domains == stream and space.domain_starts == starts
        assert space.label_offset == offset
        assert space.text_features.shape == (len(union), width)
    for name in holdout:
        space = spaces[name]
        assert space.classnames == infos[name].classnames
        assert (space.domains, space.domain_starts, space.label_offset) == ((), (), 0)
        assert space.text_features.shape == (infos[name].num_classes, width)


def test_eval_logits_always_class_zero_scores_by_the_x_tail_offsets(tiny_run, tmp_path):
    engine = tiny_run(f"{HERE}:AlwaysClassZero", out=tmp_path / "zero")
    s, tests = engine.setting, engine.parts.test_sets
    first, second = s.datasets
    expected = {}
    for name in s.eval_datasets:
        labels = np.asarray(tests[name].labels)
        # class 0 of the union is class 0 of the first stream domain; the second stream
        # domain's labels start after it; hold-out sets are scored in their own classes
        share = 100.0 * float(np.mean(labels == 0))
        expected[name] = 0.0 if name == second else share
    assert 0 < expected[first] < 100
    accuracy = {
        (r["after_task"], r["eval_dataset"]): r["accuracy"] for r in engine.parts.recorder.rows
    }
    assert len(accuracy) == 3 * len(s.eval_datasets)  # row 0 + 2 tasks
    for (_, name), value in accuracy.items():
        assert value == pytest.approx(expected[name]), name
    # every prediction lands in the first stream domain's block
    for after, name, domain, count in _domains(tmp_path / "zero"):
        assert count == (len(tests[name]) if domain == first else 0), (after, name, domain)


def test_eval_logits_of_the_wrong_shape_is_a_user_error_naming_it(tmp_path):
    cfg = config(f"{HERE}:WrongShape", tmp_path / "run", eval_batch_size=5)
    engine = Engine(cfg, world=FakeWorld())
    first = engine.setting.datasets[0]
    classes = sum(engine.world.dataset_info(n).num_classes for n in engine.setting.datasets)
    with pytest.raises(UserError) as err:
        engine.run()
    message = str(err.value)
    assert f"eval_logits returned shape (5, {classes + 1}) for {first}" in message
    assert f"expected [5, {classes}]" in message
