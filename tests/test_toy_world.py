"""The embedded toy world: deterministic data, the protocol's structure, the shipped tiny CLIP."""

from __future__ import annotations

import numpy as np
import pytest

from cl_bench.data.toy.model import RECORD_PATH, WEIGHTS_PATH
from cl_bench.data.toy.world import ToyWorld, few_shot_index
from cl_bench.errors import UserError

EXPECTED = [
    "aircraft",
    "caltech101",
    "cifar100",
    "dtd",
    "eurosat",
    "flowers102",
    "food101",
    "mnist",
    "oxford_pets",
    "stanford_cars",
    "sun397",
    "places365",
    "imagenet",
]


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLBENCH_CACHE", str(tmp_path))
    return tmp_path


def test_serves_the_thirteen_datasets_with_disjoint_vocabularies():
    world = ToyWorld()
    assert world.name == "toy"
    assert world.dataset_names() == EXPECTED
    names = [c for n in EXPECTED for c in world.dataset_info(n).classnames]
    assert len(names) == len(set(names)), "a class name occurs in two domains"
    counts = {n: world.dataset_info(n).num_classes for n in EXPECTED}
    # real ratios kept where practical: cars > aircraft > pets; sun > cars; imagenet largest
    assert (
        counts["imagenet"]
        > counts["sun397"]
        > counts["stanford_cars"]
        > counts["aircraft"]
        > counts["oxford_pets"]
    )
    assert counts["mnist"] == counts["eurosat"] == 10


def test_templates_name_their_domain_and_fit_the_context():
    world = ToyWorld()
    from cl_bench.data.toy.model import toy_tokenizer

    tokenizer = toy_tokenizer()
    owners: dict[str, str] = {}
    for name in EXPECTED:
        info = world.dataset_info(name)
        assert len(info.templates) >= 3
        for template in info.templates:
            assert template.count("{}") == 1
            assert owners.setdefault(template, name) == name, (
                f"{template!r} is shared by {owners[template]} and {name}"
            )
        prompts = [t.format(c) for t in info.templates for c in info.classnames]
        tokens = tokenizer(prompts)
        assert (tokens[:, -1] == 0).all(), f"a {name} prompt is truncated by the context length"
    assert "aircraft" in world.dataset_info("aircraft").templates[0]
    assert "satellite" in world.dataset_info("eurosat").templates[0]
    assert "flower" in world.dataset_info("flowers102").templates[0]


def test_generation_is_deterministic_and_cached(fresh_cache):
    world = ToyWorld()
    a = world.load_split("oxford_pets", "test", None, 42, 32)
    files = sorted(p.name for p in fresh_cache.rglob("*.npy"))
    assert files == ["oxford_pets-test-32px-images.npy", "oxford_pets-test-32px-labels.npy"]
    b_images, b_labels = world.generate("oxford_pets", "test", 32)
    np.testing.assert_array_equal(np.asarray(a.images), b_images)
    np.testing.assert_array_equal(a.labels, b_labels)
    for p in fresh_cache.rglob("*.npy"):
        p.unlink()
    c = ToyWorld().load_split("oxford_pets", "test", None, 42, 32)
    np.testing.assert_array_equal(np.asarray(c.images), b_images)
    assert a.ids_hash == c.ids_hash
    assert a.images.dtype == np.uint8 and a.images.shape[1:] == (32, 32, 3)
    # different domains and splits differ
    train = world.load_split("oxford_pets", "train", None, 42, 32)
    assert train.ids_hash != a.ids_hash
    assert not np.array_equal(np.asarray(train.images[:10]), np.asarray(a.images[:10]))


def test_split_sizes_and_balance():
    world = ToyWorld()
    for name in EXPECTED:
        c = world.dataset_info(name).num_classes
        assert world.split_size(name, "test") >= 625
        assert world.split_size(name, "train") >= 20 * c
        assert world.split_size(name, "test") % c == 0


def test_few_shot_subsets_are_exact_and_seeded(fresh_cache):
    world = ToyWorld()
    full = world.load_split("mnist", "train", None, 42, 32)
    five = world.load_split("mnist", "train", 5, 42, 32)
    assert np.bincount(five.labels).tolist() == [5] * 10
    again = world.load_split("mnist", "train", 5, 42, 32)
    assert five.ids_hash == again.ids_hash
    other = world.load_split("mnist", "train", 5, 8, 32)
    assert other.ids_hash != five.ids_hash
    idx = few_shot_index(full.labels, 5, 42, "mnist")
    np.testing.assert_array_equal(np.asarray(full.images)[idx], five.images)
    # the first K of each class after the shuffle: 16-shot contains the 5-shot subset
    assert set(idx) <= set(few_shot_index(full.labels, 16, 42, "mnist"))
    with pytest.raises(UserError, match="--shots"):
        world.load_split("mnist", "train", 10_000, 42, 32)
    with pytest.raises(UserError, match="train split only"):
        world.load_split("mnist", "test", 5, 42, 32)


def test_unknown_names_are_user_errors():
    world = ToyWorld()
    with pytest.raises(UserError, match="valid names"):
        world.dataset_info("cifar10")
    with pytest.raises(UserError, match="valid splits"):
        world.load_split("mnist", "val", None, 42, 32)


def test_other_image_sizes_render_natively(fresh_cache):
    s = ToyWorld().load_split("dtd", "test", None, 42, 16)
    assert s.images.shape == (640, 16, 16, 3)


def test_missing_weights_name_the_pretrain_command(tmp_path):
    world = ToyWorld(weights_path=tmp_path / "none.safetensors")
    with pytest.raises(UserError, match="clbench toy pretrain"):
        world.backbone(__import__("torch").device("cpu"))
    assert any("clbench toy pretrain" in p for p in world.check(["mnist"]))


def test_reference_data_is_seeded_and_from_the_pretraining_mix():
    world = ToyWorld()
    images, captions = world.reference_data(64, 32, seed=3, image_size=32)
    again, captions_again = world.reference_data(64, 32, seed=3, image_size=32)
    assert images.shape == (64, 32, 32, 3) and images.dtype == np.uint8
    assert len(captions) == 32 and captions == captions_again
    np.testing.assert_array_equal(images, again)
    other, _ = world.reference_data(64, 32, seed=4, image_size=32)
    assert not np.array_equal(images, other)


@pytest.mark.skipif(not WEIGHTS_PATH.is_file(), reason="toy weights not shipped yet")
def test_shipped_weights_load_as_an_open_clip_model_and_reproduce_the_record():
    import json

    import torch
    from torch import nn

    from cl_bench.data.toy.pretrain import SUBSET_TEST_IMAGES, zero_shot_accuracies

    world = ToyWorld()
    bb = world.backbone(torch.device("cpu"))
    assert type(bb.model).__name__ == "CLIP"
    assert isinstance(bb.model.visual.transformer.resblocks[0].attn, nn.MultiheadAttention)
    assert bb.model.token_embedding.num_embeddings == 49408
    assert WEIGHTS_PATH.stat().st_size <= 20e6
    record = json.loads(RECORD_PATH.read_text())
    assert record["weights_sha256"] == world.describe()["weights_sha256"]
    assert bb.pretrained == f"toy-{record['weights_sha256'][:12]}"
    recorded = record["zeroshot_accuracy_subset"]
    assert recorded["test_images_per_domain"] == SUBSET_TEST_IMAGES
    measured = zero_shot_accuracies(bb.model, SUBSET_TEST_IMAGES)
    for space in ("own", "xtail_union"):
        for name, acc in recorded[space].items():
            assert measured[space][name] == pytest.approx(acc, abs=1.5), (space, name)
    # graded zero-shot (the calibration targets, on the full test sets as recorded)
    full = record["zeroshot_accuracy"]
    for name, acc in full["own"].items():
        assert acc > 2 * 100 / world.dataset_info(name).num_classes, name
    union = list(full["xtail_union"].values())
    assert 25 <= float(np.mean(union)) <= 75
    assert max(full["own"].values()) - min(full["own"].values()) >= 20


def test_cli_show_writes_a_png(tmp_path):
    from typer.testing import CliRunner

    from cl_bench.data.toy.cli import app

    out = tmp_path / "grid.png"
    result = CliRunner().invoke(app, ["show", "--out", str(out), "--per-domain", "3"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
