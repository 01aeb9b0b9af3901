"""--augment rrc: the references' RandomResizedCrop (cl_bench.data.augment) and its plumbing.

The box sampler is torchvision's `RandomResizedCrop.get_params` draw for draw; the crop and
resize equal torchvision's on the PIL original where the view holds it unscaled; crops are
seeded by (seed, task, step) so a resumed task sees the same batches; without augmentation
the trainer draws exactly the batches it always drew; the real world builds its views.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from cl_bench.api.learner import Batch, Learner, StepInfo, Task
from cl_bench.api.optim import OptimizerConfig
from cl_bench.data.augment import (
    Augmentation,
    RandomResizedCrops,
    resized_crops,
    sample_box,
    sample_boxes,
    view_size,
    whole_image_view,
)
from cl_bench.data.world import ImageSet
from cl_bench.engine.trainer import BatchStream, Trainer
from cl_bench.errors import UserError

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")

# sizes that take the first try, need retries, and fall back to the centre crop (10 misses)
SIZES = [(500, 375), (32, 32), (28, 28), (300, 500), (1000, 100), (7, 90), (3, 3), (1, 1)]


@pytest.mark.parametrize("width,height", SIZES)
def test_box_sampler_is_torchvisions_get_params_draw_for_draw(width, height):
    from PIL import Image
    from torchvision.transforms import RandomResizedCrop

    img = Image.new("RGB", (width, height))
    for seed in range(40):
        torch.manual_seed(seed)  # torchvision draws from the global generator
        expected = [RandomResizedCrop.get_params(img, [0.9, 1.0], [3 / 4, 4 / 3]) for _ in range(4)]
        g = torch.Generator().manual_seed(seed)
        assert [sample_box(g, width, height) for _ in range(4)] == expected


def test_boxes_keep_the_area_and_aspect_limits():
    g = torch.Generator().manual_seed(0)
    boxes = sample_boxes(g, np.array([[500, 375]] * 400))
    top, left, h, w = boxes.T
    area = h * w / (500 * 375)
    assert area.min() >= 0.9 - 0.01 and area.max() <= 1.0
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 375).all()
    assert (left + w <= 500).all()
    assert len({tuple(b) for b in boxes.tolist()}) > 100  # boxes vary


def _photo(width: int, height: int, seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8)
    smooth = Image.fromarray(base).resize((width, height), Image.Resampling.BICUBIC)
    noise = rng.integers(-20, 20, size=(height, width, 3))
    return Image.fromarray(np.clip(np.asarray(smooth) + noise, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("width,height,size", [(40, 30, 32), (28, 28, 64), (90, 60, 32)])
def test_crop_equals_torchvision_resized_crop_on_the_pil_original(width, height, size):
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    img = _photo(width, height)
    original = np.array([[width, height]] * 6)
    boxes = sample_boxes(torch.Generator().manual_seed(3), original)
    side = max(width, height)
    view = np.zeros((6, side, side, 3), dtype=np.uint8)
    view[:, :height, :width] = np.asarray(img)
    got = resized_crops(torch.from_numpy(view), boxes, original, original, size).numpy()
    expected = np.stack(
        [
            np.asarray(F.resized_crop(img, *b, [size, size], InterpolationMode.BICUBIC))
            for b in boxes.tolist()
        ]
    )
    diff = np.abs(got.astype(int) - expected)
    assert diff.max() <= 1  # PIL's fixed-point weights vs float: rounding only
    assert diff.mean() < 0.01


def test_a_downscaled_view_stays_close_to_the_reference():
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    from cl_bench.data.real.cache import train_view_pixels

    img = _photo(200, 150)
    stored, row = train_view_pixels(img, 80)  # 200x150 -> 80x80
    assert stored.shape == (80, 80, 3) and row == (200, 150, 80, 80)
    boxes = sample_boxes(torch.Generator().manual_seed(1), np.array([[200, 150]] * 4))
    sizes = np.array([row] * 4)
    got = resized_crops(
        torch.from_numpy(np.stack([stored] * 4)), boxes, sizes[:, :2], sizes[:, 2:], 64
    )
    expected = np.stack(
        [np.asarray(F.resized_crop(img, *b, [64, 64], InterpolationMode.BICUBIC)) for b in boxes]
    )
    assert np.abs(got.numpy().astype(int) - expected).mean() < 4  # a 1-px box shift gives more


# -- the trainer -------------------------------------------------------------------------------
class Records(Learner):
    """Keeps every batch it is given; trains one scalar so the trainer builds an optimizer."""

    def __init__(self) -> None:
        super().__init__(SimpleNamespace(model=nn.Linear(1, 1)), OptimizerConfig(lr=1e-3), None)  # type: ignore[arg-type]
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []

    def trainable(self, task: Task) -> Any:
        return list(self.model.parameters())

    def loss(self, batch: Batch, step: StepInfo) -> tuple[torch.Tensor, dict[str, Any]]:
        self.batches.append((batch.images.clone(), batch.labels.clone()))
        return self.model(torch.ones(1, 1)).sum() * batch.images.float().mean(), {}


def _train(
    train: ImageSet, view: Any, *, seed: int = 0, task_index: int = 0, steps: int = 5
) -> Records:
    learner = Records()
    task = Task(task_index, "t", ("a", "b"), ("a", "b"), torch.zeros(2, 2), steps, 4, 2)
    run = Trainer(CPU).begin(learner, task)
    assert run is not None
    Trainer(CPU).train(learner, run, train, lambda t: t, seed, [], view=view)
    return learner


def _split(n: int = 10, side: int = 12) -> ImageSet:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, side, side, 3), dtype=np.uint8)
    return ImageSet(images, np.arange(n) % 2, "split-hash")


def test_without_augmentation_the_batches_are_todays():
    train = _split()
    learner = _train(train, None, seed=4)
    stream = BatchStream(train, 4, 4, 0)
    for images, labels in learner.batches:
        idx = stream.next_indices()
        assert torch.equal(images, torch.from_numpy(train.images[idx]))
        assert torch.equal(labels, torch.from_numpy(train.labels[idx]))


def test_crops_keep_the_batch_order_and_are_seeded():
    train = _split()
    view = whole_image_view(train.images, train.ids_hash)
    plain, crops = _train(train, None), _train(train, view)
    again, other = _train(train, view), _train(train, view, seed=1)
    for (pi, pl), (ci, cl), (ai, _) in zip(
        plain.batches, crops.batches, again.batches, strict=True
    ):
        assert torch.equal(pl, cl)  # the same images in the same order ...
        assert ci.shape == pi.shape and ci.dtype == torch.uint8
        assert torch.equal(ci, ai)  # ... cropped the same way for the same seed
    assert any(
        not torch.equal(c[0], p[0]) for c, p in zip(crops.batches, plain.batches, strict=True)
    )
    assert any(
        not torch.equal(c[0], o[0]) for c, o in zip(crops.batches, other.batches, strict=True)
    )


def test_the_crops_of_a_step_do_not_depend_on_earlier_steps_or_tasks():
    train = _split()
    view = whole_image_view(train.images, train.ids_hash)
    idx = np.array([3, 1, 4, 1])
    continuous = RandomResizedCrops(view, 7, 2, 12)
    for step in range(6):
        boxes = continuous.boxes(idx, step)
    torch.manual_seed(123)  # global RNG state plays no part
    resumed = RandomResizedCrops(view, 7, 2, 12)
    assert np.array_equal(resumed.boxes(idx, 5), boxes)
    assert not np.array_equal(RandomResizedCrops(view, 7, 3, 12).boxes(idx, 5), boxes)
    # a resumed task (fresh trainer, other global RNG state) sees the same batches
    first = _train(train, view, task_index=1)
    torch.manual_seed(999)
    np.random.seed(999)
    second = _train(train, view, task_index=1)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first.batches, second.batches, strict=True))


def test_a_view_of_another_split_is_refused():
    train = _split()
    with pytest.raises(RuntimeError, match="not its split"):
        _train(train, whole_image_view(train.images, "other-hash"))


# -- the option --------------------------------------------------------------------------------
def test_auto_is_the_worlds_default_and_bad_values_are_one_line_errors(fake_world):
    from cl_bench.data.real.world import RealWorld
    from cl_bench.data.toy.world import ToyWorld

    assert Augmentation.resolve("auto", ToyWorld()).mode == ToyWorld.default_augment
    assert Augmentation.resolve("auto", RealWorld()).mode == "rrc"
    assert Augmentation.resolve("rrc", ToyWorld()).mode == "rrc"
    assert Augmentation.resolve("auto", fake_world).mode == "none"  # declares nothing
    with pytest.raises(UserError, match="the fake world stores no training views"):
        Augmentation.resolve("rrc", fake_world)
    with pytest.raises(UserError, match="--augment 'crop': valid values are auto, none, rrc"):
        Augmentation.resolve("crop", fake_world)


def test_the_toy_world_crops_its_stored_images():
    from cl_bench.data.toy.world import ToyWorld

    world = ToyWorld()
    view = world.train_view("eurosat", 16, 42, 32)
    split = world.load_split("eurosat", "train", 16, 42, 32)
    assert view.ids_hash == split.ids_hash and np.array_equal(view.images, split.images)
    assert (view.original == 32).all() and (view.extent == 32).all()


def test_a_run_records_the_resolved_mode(tiny_run):
    engine = tiny_run("finetune", iterations=2)
    assert engine.manifest["config"]["augment"] == "auto"
    assert engine.manifest["world"]["augment"] == "none"


# -- the real world's training views ------------------------------------------------------------
# (width, height) per training image: smaller and larger than the view side for 32 px (40)
TRAIN_SIZES = {"tench": [(20, 16), (64, 48), (30, 30)], "goldfish": [(90, 30), (12, 36), (40, 40)]}


@pytest.fixture
def real_root(tmp_path, monkeypatch) -> dict[str, Any]:
    root, tasks = tmp_path / "data", tmp_path / "tasks"
    for part, sizes in (("train", TRAIN_SIZES), ("val", {c: [(24, 24)] * 2 for c in TRAIN_SIZES})):
        for c, (wnid, shapes) in enumerate(
            zip(["n01440764", "n01443537"], sizes.values(), strict=True)
        ):
            folder = root / "imgs" / part / wnid
            folder.mkdir(parents=True)
            for k, (w, h) in enumerate(shapes):
                _photo(w, h, seed=10 * c + k).save(folder / f"{k}.png")
    (tasks / "datasets").mkdir(parents=True)
    (tasks / "settings").mkdir()
    (tasks / "datasets" / "imagenet.toml").write_text(
        "\n".join(
            [
                "version = 1",
                'name = "imagenet"',
                'title = "fake imagenet"',
                'provenance = "generated by tests"',
                "num_classes = 2",
                f"classnames = {json.dumps(list(TRAIN_SIZES))}",
                'templates = ["a photo of a {}."]',
                "[source]",
                'kind = "folder"\npath = "imgs"\nmarker = "imgs/val"',
                "[split]",
                'rule = "given"\ntrain = { dir = "train" }\ntest = { dir = "val" }',
            ]
        )
        + "\n"
    )
    (tasks / "settings" / "mini.toml").write_text(
        'name = "mini"\nversion = 1\ndescription = "one task"\ntask_agnostic = false\n'
        "holdout = []\nshots = 0\niterations = 2\nbatch_size = 4\nsplit_seed = 42\n"
        'datasets = ["imagenet"]\n\n[real]\nfull_finetune_lr = 1e-3\n'
    )
    model = tmp_path / "tiny-clip.json"
    model.write_text(
        json.dumps(
            {
                "embed_dim": 16,
                "vision_cfg": {
                    "image_size": 32,
                    "layers": 1,
                    "width": 16,
                    "patch_size": 8,
                    "head_width": 8,
                },
                "text_cfg": {
                    "context_length": 16,
                    "vocab_size": 49408,
                    "width": 16,
                    "heads": 2,
                    "layers": 1,
                },
            }
        )
    )
    monkeypatch.setenv("CLBENCH_TASKS_DIR", str(tasks))
    return {"root": root, "model": model, "cache": tmp_path / "cache"}


def _real_world(real_root: dict[str, Any]) -> Any:
    from cl_bench.data.real.world import RealWorld

    return RealWorld(
        model=str(real_root["model"]), pretrained="none", data_root=real_root["root"],
        cache_dir=real_root["cache"], workers=2,
    )  # fmt: skip


def test_the_real_world_builds_training_views_of_the_originals(real_root, monkeypatch):
    from PIL import Image

    from cl_bench.data.real import cache

    world = _real_world(real_root)
    view = world.train_view("imagenet", None, 42, 32)
    split = world.load_split("imagenet", "train", None, 42, 32)
    assert view_size(32) == 40 and view_size(224) == 256
    assert len(view) == len(split) == 6 and view.ids_hash == split.ids_hash
    files = sorted((real_root["root"] / "imgs" / "train").rglob("*.png"))
    by_size = {Image.open(f).size: np.asarray(Image.open(f).convert("RGB")) for f in files}
    assert sorted(map(tuple, view.original.tolist())) == sorted(by_size)
    assert view.images.shape == (6, 40, 40, 3)  # the largest stored side: min(90, 40)
    for i, ((w, h), (ew, eh)) in enumerate(
        zip(view.original.tolist(), view.extent.tolist(), strict=True)
    ):
        assert (ew, eh) == (min(w, 40), min(h, 40))
        if (ew, eh) == (w, h):  # fits: stored exactly as decoded
            assert np.array_equal(view.images[i, :h, :w], by_size[(w, h)])
        assert not view.images[i, eh:].any() and not view.images[i, :, ew:].any()
    monkeypatch.setattr(cache, "_build", lambda *a, **k: pytest.fail("rebuilt a finished view"))
    again = _real_world(real_root).train_view("imagenet", None, 42, 32)
    assert np.array_equal(again.images, view.images)


def test_a_real_run_crops_by_default(real_root, tmp_path):
    from cl_bench.engine.config import RunConfig
    from cl_bench.engine.loop import run

    out = run(
        RunConfig(setting="mini", world="real", learner="finetune", out=str(tmp_path / "run")),
        world=_real_world(real_root),
    )
    assert out.manifest["world"]["augment"] == "rrc" and out.manifest["status"] == "finished"
