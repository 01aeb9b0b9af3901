"""The X-TAIL protocol's datasets (tasks/datasets/xtail/, RAIL / CoDyRA scenario_datasets) on
generated fake roots with generated CoOp split files: class names as the reference modules
produce them, split files checked against them, CoOp / FewShotDataset 16-shot sampling, and the
one-prompt-per-class union classifier (CoDyRA templates[0], RAIL 'a photo of a {}.').
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from cl_bench.data.real.spec import load_spec
from cl_bench.data.real.splits import coop_few_shot, numpy_choice_few_shot
from cl_bench.data.real.world import RealWorld
from cl_bench.errors import UserError

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
URL = "https://example.org/split"


# --- the shipped definitions ----------------------------------------------------------------
def test_shipped_xtail_definitions_carry_the_reference_modules_names_and_templates():
    cal = load_spec("caltech101", "xtail")
    assert cal.num_classes == 100 and load_spec("caltech101").num_classes == 101  # MTIL unchanged
    assert cal.classnames[:5] == ("face", "leopard", "motorbike", "accordion", "airplane")
    assert "BACKGROUND_Google" not in cal.classnames and "Faces_easy" not in cal.classnames
    assert cal.templates == ("a photo of a {}.",) and cal.few_shot_sampler == "coop"
    euro = load_spec("eurosat", "xtail")
    assert euro.classnames[0] == "Annual Crop Land satellite location"
    assert euro.classnames[9] == "Sea or Lake satellite location"
    assert all(c.endswith(" satellite location") for c in euro.classnames)
    assert euro.templates[0] == "a centered satellite photo of {}."
    mnist = load_spec("mnist", "xtail")
    assert mnist.classnames[0] == 'number: "0 - zero"' and mnist.few_shot_sampler == "numpy_choice"
    assert mnist.templates == ('a photo of the number: "{}".',)
    assert load_spec("dtd", "xtail").templates == ("{} texture.",)
    assert load_spec("stanford_cars", "xtail").classnames[0] == "2000 AM General Hummer SUV"
    assert load_spec("sun397", "xtail").classnames[:2] == ("abbey", "airplane_cabin")
    counts = {n: load_spec(n, "xtail").num_classes for n in ("oxford_pets", "food101", "sun397")}
    assert counts == {"oxford_pets": 37, "food101": 101, "sun397": 397}


def test_list_datasets_shows_the_xtail_classes_and_union_template(monkeypatch):
    from typer.testing import CliRunner

    from cl_bench.cli.app import app

    monkeypatch.delenv("CLBENCH_TASKS_DIR", raising=False)
    args = ["list", "datasets", "--world", "real", "--setting", "xtail", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    cal = rows["caltech101"]
    assert cal["num_classes"] == 100 and len(cal["classnames"]) == 100
    assert cal["union_template"] == "a photo of a {}." and cal["templates_averaged"] == 1
    assert rows["dtd"]["union_template"] == "{} texture." and rows["cifar100"]["role"] == "holdout"


def test_union_classifier_option_is_checked_against_the_setting():
    from cl_bench.data.taskfiles import resolve_setting

    assert resolve_setting("xtail", "toy").union_classifier == "codyra"  # toy: same convention
    assert resolve_setting("xtail", "real", union_classifier="rail").union_classifier == "rail"
    assert resolve_setting("mtil", "real").union_classifier is None  # MTIL keeps averaging
    with pytest.raises(UserError, match="task-agnostic settings only"):
        resolve_setting("mtil", "real", union_classifier="rail")
    with pytest.raises(UserError, match="valid: codyra, rail"):
        resolve_setting("xtail", "real", union_classifier="clip")


# --- fake roots with generated split files --------------------------------------------------
def _png(path: Path, cls: int, k: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cls * 100 + k)
    base = np.array([(200, 30, 30), (30, 200, 40), (40, 60, 220)][cls % 3], dtype=np.int16)
    arr = np.clip(base + rng.integers(-40, 40, size=(20, 24, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path)


def _coop_dataset(root: Path, folder: str, names: list[str], per: tuple[int, int, int]) -> dict:
    """images under root/folder/images/<class>/ and a CoOp split {train, val, test} of them."""
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for y, name in enumerate(names):
        for k in range(sum(per)):
            rel = f"{name.replace(' ', '_')}/img_{k:03d}.png"
            _png(root / folder / "images" / rel, y, k)
            part = "train" if k < per[0] else "val" if k < per[0] + per[1] else "test"
            split[part].append([rel, y, name])
    return split


def _spec_toml(name: str, classnames: list[str], folder: str, suffix: str = "") -> str:
    suffix_line = f'classname_suffix = "{suffix}"\n' if suffix else ""
    return (
        f'version = 1\nname = "{name}"\ntitle = "fake {name}"\nprovenance = "tests"\n'
        f"num_classes = {len(classnames)}\nclassnames = {json.dumps(classnames)}\n"
        f'templates = ["a photo of a {{}}, a fake {name}.", "another {{}}."]\n\n'
        f'[source]\nkind = "split_file"\nsplit_file = "{folder}/split_zhou_{name}.json"\n'
        f'split_url = "{URL}"\nimage_dir = "{folder}/images"\nmanual = "make {folder}"\n'
        f'{suffix_line}\n[split]\nrule = "split_file"\ntrain = "train"\ntest = "test"\n'
        'few_shot_sampler = "coop"\n'
    )


CAL_NAMES = ["face", "leopard", "dollar_bill"]
EURO_RAW = ["Annual Crop Land", "Forest", "River"]


@pytest.fixture(scope="module")
def fake(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("xtailfake")
    root, tasks = base / "data", base / "tasks"
    (tasks / "datasets" / "xtail").mkdir(parents=True)
    (tasks / "settings").mkdir()
    splits = {
        "cal": _coop_dataset(root, "cal", CAL_NAMES, (5, 2, 3)),
        "euro": _coop_dataset(root, "euro", EURO_RAW, (6, 1, 2)),
    }
    for name, split in splits.items():
        (root / name / f"split_zhou_{name}.json").write_text(json.dumps(split))
    (tasks / "datasets" / "xtail" / "cal.toml").write_text(_spec_toml("cal", CAL_NAMES, "cal"))
    euro_names = [n + " satellite location" for n in EURO_RAW]
    suffix = " satellite location"
    (tasks / "datasets" / "xtail" / "euro.toml").write_text(
        _spec_toml("euro", euro_names, "euro", suffix)
    )
    (tasks / "settings" / "mini_xtail.toml").write_text(
        'name = "mini_xtail"\nversion = 1\ndescription = "two CoOp-split domains"\n'
        "task_agnostic = true\nholdout = []\nshots = 2\niterations = 2\nbatch_size = 4\n"
        'split_seed = 42\ndatasets = ["cal", "euro"]\ndataset_protocol = "xtail"\n'
        'union_classifier = "codyra"\n\n[real]\nfull_finetune_lr = 1e-3\n'
    )
    (base / "tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    return {"root": root, "tasks": tasks, "model": base / "tiny-clip.json", "base": base}


@pytest.fixture
def world(fake, tmp_path, monkeypatch) -> RealWorld:
    monkeypatch.setenv("CLBENCH_TASKS_DIR", str(fake["tasks"]))
    w = RealWorld(
        model=str(fake["model"]),
        pretrained="none",
        data_root=fake["root"],
        cache_dir=tmp_path / "cache",
        workers=1,
    )
    w.select_protocol("xtail")
    return w


def _reference_generate_fewshot(train: list[list], shots: int, seed: int) -> list[list]:
    """CoOp / dassl DatasetBase.generate_fewshot_dataset, written out from its definition."""
    random.seed(seed)
    tracker: dict[int, list] = defaultdict(list)
    for item in train:
        tracker[item[1]].append(item)
    out: list[list] = []
    for items in tracker.values():
        out += (
            random.sample(items, shots) if len(items) >= shots else random.choices(items, k=shots)
        )
    return out


def test_split_file_dataset_reads_its_lists_and_the_suffixed_names(world, fake):
    assert world.dataset_info("euro").classnames[0] == "Annual Crop Land satellite location"
    test = world.load_split("euro", "test", None, 42, 32)
    assert len(test) == 3 * 2 and test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert world.describe()["split_files"]["cal"] == str(fake["root"] / "cal/split_zhou_cal.json")


def test_few_shot_is_coop_generate_fewshot_dataset_on_the_train_list(world, fake):
    split = json.loads((fake["root"] / "cal" / "split_zhou_cal.json").read_text())
    for seed in (42, 8):
        pool = world._pool(world.spec("cal"), "train", 2, seed)
        expected = [
            f"cal/images/{p}" for p, _, _ in _reference_generate_fewshot(split["train"], 2, seed)
        ]
        assert pool.ids == expected
        assert np.bincount(pool.labels).tolist() == [2, 2, 2]
    train_ids = {f"cal/images/{p}" for p, _, _ in split["train"]}
    assert set(world._pool(world.spec("cal"), "train", 4, 42).ids) <= train_ids  # never val/test
    a = world.load_split("cal", "train", 2, 42, 32)
    b = world.load_split("cal", "train", 2, 42, 32)
    assert a.ids_hash == b.ids_hash and np.array_equal(a.images, b.images)
    short = coop_few_shot(world._pool(world.spec("cal"), "train", None, 42), 7, 42)
    assert np.bincount(short.labels).tolist() == [7, 7, 7]  # 5 per class: drawn with repeats


def test_numpy_choice_sampler_is_fewshotdataset(world):
    pool = world._pool(world.spec("euro"), "train", None, 42)
    np.random.seed(8)
    expected = []
    for cls in np.unique(pool.labels):
        expected += np.random.choice(np.where(pool.labels == cls)[0], 3, replace=False).tolist()
    assert numpy_choice_few_shot(pool, 3, 8).ids == [pool.ids[i] for i in expected]


def test_data_check_names_each_missing_split_file_and_folder(fake, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cl_bench.data.real.cli import app

    monkeypatch.setenv("CLBENCH_TASKS_DIR", str(fake["tasks"]))
    empty = tmp_path / "empty"
    args = ["check", "--setting", "mini_xtail", "--world", "real", "--root", str(empty)]
    result = CliRunner().invoke(app, [*args, "--pretrained", "none", "--json"])
    items = {r["dataset"]: r for r in json.loads(result.output)["items"]}
    fixes = items["cal"]["fixes"]
    assert result.exit_code == 1 and len(fixes) == 2
    assert (
        f"split file missing: {empty / 'cal/split_zhou_cal.json'}" in fixes[0] and URL in fixes[0]
    )
    assert "images not found" in fixes[1] and "make cal" in fixes[1]
    partial = tmp_path / "partial"
    (partial / "cal" / "images").mkdir(parents=True)
    w = RealWorld(data_root=partial, pretrained="none")
    w.select_protocol("xtail")
    assert [line.split(":")[1].strip() for line in w.dataset_problems("cal")] == [
        "split file missing"
    ]


def test_split_file_with_other_class_names_is_a_one_line_error(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("CLBENCH_TASKS_DIR", str(fake["tasks"]))
    bad = json.loads((fake["root"] / "cal" / "split_zhou_cal.json").read_text())
    for part in bad.values():
        for entry in part:
            entry[2] = entry[2].replace("dollar_bill", "dollar bill")
    split_dir = tmp_path / "splits"
    split_dir.mkdir()
    (split_dir / "split_zhou_cal.json").write_text(json.dumps(bad))
    w = RealWorld(data_root=fake["root"], cache_dir=tmp_path / "c", split_dir=split_dir)
    w.select_protocol("xtail")
    with pytest.raises(UserError) as err:
        w.load_split("cal", "test", None, 42, 32)
    message = str(err.value)
    assert "\n" not in message and "1 of 3 class names differ" in message
    assert "'dollar bill', expected 'dollar_bill'" in message and URL in message


def _hand_union(world: RealWorld, prompts_of) -> tuple[torch.Tensor, object]:
    from cl_bench.engine.loop import seed_everything

    seed_everything(0)
    bb = world.backbone(torch.device("cpu"))
    bb.model.eval()
    prompts = [p for n in ("cal", "euro") for p in prompts_of(world.dataset_info(n))]
    with torch.inference_mode():
        feats = bb.model.encode_text(bb.tokenizer(prompts)).float()
    return torch.nn.functional.normalize(feats, dim=-1), bb


def _by_hand(convention: str):
    if convention == "codyra":  # CoDyRA: each dataset's templates[0], class names verbatim
        return lambda info: [info.templates[0].format(c) for c in info.classnames]
    return lambda info: [f"a photo of a {c.replace('_', ' ')}." for c in info.classnames]  # RAIL


@pytest.mark.parametrize("convention", ["codyra", "rail"])
def test_union_classifier_is_one_prompt_per_class(world, convention, one_thread):
    from cl_bench.data.taskfiles import resolve_setting
    from cl_bench.engine.evaluator import Evaluator

    given = None if convention == "codyra" else convention  # codyra: the setting's default
    setting = resolve_setting("mini_xtail", "real", union_classifier=given)
    union, bb = _hand_union(world, _by_hand(convention))
    infos = {n: world.dataset_info(n) for n in setting.eval_datasets}
    tests = {n: world.load_split(n, "test", None, 42, bb.image_size) for n in infos}
    spaces = []

    class Probe:  # a learner that scores nothing and keeps the label space it is given
        custom_eval_logits = True

        def eval_model(self):
            return bb.model

        def eval_logits(self, images, space):
            spaces.append(space)
            return torch.zeros(images.shape[0], space.num_classes)

    Evaluator(setting, bb, infos, tests, 8, torch.device("cpu")).evaluate(Probe(), "probe")
    assert spaces[0].text_features.shape == (6, 32)
    assert torch.allclose(spaces[0].text_features, union, atol=1e-5)


def test_xtail_run_scores_the_union_of_templates0(world, tmp_path, one_thread):
    from cl_bench.engine.config import RunConfig
    from cl_bench.engine.loop import run

    cfg = RunConfig(setting="mini_xtail", world="real", learner="zeroshot", out=str(tmp_path / "r"))
    out = run(cfg, world=world)
    assert out.manifest["setting"]["union_classifier"] == "codyra"
    assert out.manifest["world"]["dataset_protocol"] == "xtail"
    union, bb = _hand_union(world, _by_hand("codyra"))
    test = world.load_split("euro", "test", None, 42, bb.image_size)
    with torch.inference_mode():
        pixels = bb.normalize(torch.from_numpy(np.asarray(test.images)))
        feats = torch.nn.functional.normalize(bb.model.encode_image(pixels).float(), dim=-1)
    expected = int((feats @ union.T).argmax(1).eq(torch.from_numpy(test.labels) + 3).sum())
    acc = out.accuracy
    row = acc[(acc.after_task == 0) & (acc.eval_dataset == "euro")].iloc[0]
    assert (int(row["correct"]), int(row["total"])) == (expected, 6)
