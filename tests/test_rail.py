"""RAIL (baselines/rail_primal.py, rail_dual.py): the recursive update is the batch ridge
solution, the routing leaves images sent to unseen domains exactly at zero-shot, the fusion is
the reference's formula, and the dual form with a linear kernel equals the primal form
without expansion."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cl_bench_baselines.rail_dual import RAILDual, kernel_matrix
from cl_bench_baselines.rail_primal import RAILPrimal, RecursiveRidge, derived_hidden_dim

from cl_bench.api.hyperparameters import build_config
from cl_bench.api.learner import LabelSpace
from cl_bench.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


def _ridge(phi: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """The batch ridge solution (ΦᵀΦ + λI)⁻¹ΦᵀY."""
    eye = torch.eye(phi.shape[1], dtype=phi.dtype)
    return torch.linalg.solve(phi.T @ phi + lam * eye, phi.T @ y)


def _batches(phi: torch.Tensor, y: torch.Tensor, size: int):
    for start in range(0, phi.shape[0], size):
        yield phi[start : start + size], y[start : start + size]


def test_recursive_update_equals_the_batch_ridge_solution_after_every_task():
    gen = torch.Generator().manual_seed(0)
    lam, hidden = 0.1, 12
    classes = [3, 2, 4]  # the label space grows by each task's classes
    sizes = [40, 25, 33]
    ridge = RecursiveRidge(lam, torch.float64)
    seen_phi, seen_labels, offset = [], [], 0
    for t, (c, n) in enumerate(zip(classes, sizes, strict=True)):
        phi = torch.relu(torch.randn(n, hidden, generator=gen, dtype=torch.float64))
        labels = torch.randint(0, c, (n,), generator=gen) + offset
        offset += c
        y = F.one_hot(labels, offset).double()
        if t == 0:
            ridge.first(_batches(phi, y, 16))
        else:
            ridge.update(_batches(phi, y, 7), c)  # batch size 7: n is not a multiple of it
        seen_phi.append(phi)
        seen_labels.append(labels)
        all_phi = torch.cat(seen_phi)
        all_y = F.one_hot(torch.cat(seen_labels), offset).double()
        assert ridge.W is not None and ridge.R is not None
        assert ridge.W.shape == (hidden, offset)
        assert torch.allclose(ridge.W, _ridge(all_phi, all_y, lam), atol=1e-10, rtol=1e-8)
        inverse = torch.linalg.inv(all_phi.T @ all_phi + lam * torch.eye(hidden).double())
        assert torch.allclose(ridge.R, inverse, atol=1e-10, rtol=1e-8)


def test_the_first_task_of_an_empty_split_is_refused():
    with pytest.raises(UserError, match="empty"):
        RecursiveRidge(0.1, torch.float64).first(iter(()))


def test_the_hidden_dim_keeps_the_references_ratio():
    assert derived_hidden_dim(512) == 15000  # ViT-B/16: the reference's own value
    assert derived_hidden_dim(128) == 3750  # the toy CLIP
    assert derived_hidden_dim(32) == 938  # the fake world's CLIP


@pytest.mark.parametrize(
    "key, value",
    [("fusion_weight", "1.5"), ("batch_size", "0"), ("regularization", "0"), ("hidden_dim", "0")],
)
def test_bad_hyperparameters_are_refused(key, value):
    with pytest.raises(UserError, match=key):
        build_config(RAILPrimal, {key: value})


def _training_features(engine: Any) -> list[tuple[str, torch.Tensor, np.ndarray]]:
    """(dataset, normalized training images, labels) of each learned task, as the run saw them."""
    s, backbone = engine.setting, engine.parts.backbone
    out = []
    for name in s.datasets:
        split = engine.world.load_split(name, "train", s.shots, s.split_seed, backbone.image_size)
        images = backbone.normalize(torch.from_numpy(np.ascontiguousarray(split.images)))
        out.append((name, images, np.asarray(split.labels)))
    return out


def test_the_learners_regression_is_the_ridge_solution_on_all_tasks_so_far(tiny_run):
    engine = tiny_run("rail_primal", {"dtype": "float64"}, max_tasks=3)
    learner = engine.learner
    assert isinstance(learner, RAILPrimal)
    assert engine.manifest["learner"]["uses_training_budget"] is False
    assert all(t["trainable_parameters"] == 0 for t in engine.manifest["tasks"])
    phis, labels, offset = [], [], 0
    for name, images, y in _training_features(engine):
        assert learner.columns[name] == (offset, len(np.unique(y)))
        phis.append(learner.expand(learner.image_features(images).double()))
        labels.append(torch.from_numpy(y) + offset)
        offset += len(np.unique(y))
    all_y = F.one_hot(torch.cat(labels), offset).double()
    expected = _ridge(torch.cat(phis), all_y, learner.cfg.regularization)
    assert learner.ridge.W is not None
    # the algebra is exact (the test above: 1e-10); here the fp32 image features of this
    # recomputation may differ from the run's in the last bit (threads), so 1e-5
    assert torch.allclose(learner.ridge.W, expected, atol=1e-5)
    assert not torch.allclose(
        learner.ridge.W[:, :3], _ridge(phis[0], all_y[: len(phis[0]), :3], 0.1), atol=1e-3
    )
    derived = engine.manifest["derived"]["rail"]
    assert derived["hidden_dim"] == 938 and derived["classes_seen"] == offset
    assert engine.manifest["derived"]["stored_data"]["mb"] == 0  # the primal keeps no data


def _union_space(engine: Any, text: torch.Tensor) -> LabelSpace:
    """The X-TAIL union of the run's stream plus one more domain the learner never saw."""
    infos = engine.parts.infos
    domains = (*engine.setting.datasets, "dtd")
    sizes = [engine.world.dataset_info(d).num_classes for d in domains]
    starts = tuple(int(s) for s in np.cumsum([0, *sizes])[:-1])
    names = tuple(c for d in domains for c in engine.world.dataset_info(d).classnames)
    assert all(d in infos for d in engine.setting.datasets)
    return LabelSpace("dtd", names, text, domains, starts, starts[-1])


@pytest.mark.parametrize("learner", ["rail_primal", "rail_dual"])
def test_images_routed_to_an_unseen_domain_get_the_zero_shot_prediction(tiny_run, learner):
    engine = tiny_run(learner)  # learned: aircraft (3 classes), caltech101 (4); dtd (4) unseen
    rail = engine.learner
    backbone = engine.parts.backbone
    test = engine.world.load_split("dtd", "test", None, 42, backbone.image_size)
    other = engine.world.load_split("aircraft", "test", None, 42, backbone.image_size)
    pixels = np.concatenate([test.images, other.images])
    images = backbone.normalize(torch.from_numpy(pixels))
    # a classifier that spreads these images over both blocks: class directions are centred
    # features of 7 aircraft images (the learned blocks) and 4 dtd images (dtd's block)
    with torch.inference_mode():
        features = rail.image_features(images)
    n = len(test.labels)
    rows = torch.cat([features[n:][[0, 6, 12, 1, 7, 13, 2]], features[:n][[0, 6, 12, 18]]])
    text = F.normalize(rows - features.mean(dim=0), dim=1)
    space = _union_space(engine, text)
    assert space.domain_starts == (0, 3, 7)
    with torch.inference_mode():
        fused = rail.eval_logits(images, space)
    zero_shot = features @ text.T
    predicted = zero_shot.argmax(dim=1)
    unseen = predicted >= 7  # dtd's block: the router keeps these at zero-shot
    assert 0 < int(unseen.sum()) < len(predicted), "the test needs both kinds of images"
    assert torch.equal(fused[unseen], zero_shot[unseen])
    assert torch.equal(fused[unseen].argmax(dim=1), predicted[unseen])
    # routed images: (1 - β) softmax(s · zero-shot) + β [regression, 0 for dtd's classes]
    routed = ~unseen
    beta, scale = rail.cfg.fusion_weight, float(rail.model.logit_scale.detach().exp())
    outputs = rail.regression(features[routed]).float()
    expected = (1 - beta) * F.softmax(scale * zero_shot[routed], dim=1)
    expected[:, :7] += beta * outputs
    assert torch.allclose(fused[routed], expected, atol=1e-6)


def test_mtil_routes_by_the_dataset_and_unseen_datasets_score_exactly_as_zeroshot(
    tiny_run, tmp_path
):
    zeroshot = tiny_run("zeroshot", setting="mtil", out=tmp_path / "zeroshot")
    rail = tiny_run("rail_primal", setting="mtil", out=tmp_path / "rail")

    def rows(engine: Any) -> dict[tuple[int, str], int]:
        return {
            (r["after_task"], r["eval_dataset"]): r["correct"] for r in engine.parts.recorder.rows
        }

    learned = {name: t for t, name in enumerate(rail.setting.datasets, start=1)}
    zs, fused = rows(zeroshot), rows(rail)
    assert zs.keys() == fused.keys()
    for (after, dataset), correct in fused.items():
        if after < learned.get(dataset, 99):  # not learned yet, or a hold-out dataset
            assert correct == zs[(after, dataset)], (after, dataset)
    # a learned dataset's own label space is fused for every image (the dataset is known)
    learner = rail.learner
    name = rail.setting.datasets[0]
    info = rail.world.dataset_info(name)
    space = LabelSpace(name, info.classnames, torch.eye(info.num_classes, 32), (), (), 0)
    assert learner.blocks(space) == [(0, info.num_classes, 0)]
    unseen = LabelSpace("dtd", ("a", "b", "c"), torch.eye(3, 32), (), (), 0)
    assert learner.blocks(unseen) == []


def test_the_dual_form_with_a_linear_kernel_equals_the_primal_without_expansion(tiny_run, tmp_path):
    lam = "0.05"
    primal = tiny_run(
        "rail_primal",
        {"feature_expansion": "false", "regularization": lam, "dtype": "float64"},
        out=tmp_path / "primal",
    ).learner
    dual = tiny_run(
        "rail_dual", {"kernel": "linear", "ridge": lam, "dtype": "float64"}, out=tmp_path / "dual"
    ).learner
    assert isinstance(primal, RAILPrimal) and isinstance(dual, RAILDual)
    assert primal.columns == dual.columns
    probe = F.normalize(torch.randn(20, 32, generator=torch.Generator().manual_seed(2)), dim=1)
    assert torch.allclose(primal.regression(probe), dual.regression(probe), atol=1e-9)


def test_the_dual_solves_the_references_kernel_ridge_system(tiny_run):
    engine = tiny_run("rail_dual", {"dtype": "float64"})
    dual = engine.learner
    assert isinstance(dual, RAILDual)
    assert dual.features is not None and dual.alpha is not None and dual.labels is not None
    x = dual.features
    assert x.shape[0] == 8 * (3 + 4)  # every training feature of both tasks is kept
    # the reference's kernel: exp(-γ Σ (X_j − x_i)²), by explicit differences
    direct = torch.exp(-dual.cfg.gamma * ((x[:, None, :] - x[None, :, :]) ** 2).sum(dim=-1))
    gram = kernel_matrix(x, x, "rbf", dual.cfg.gamma)
    assert torch.allclose(gram, direct, atol=1e-12)
    # α = (K + λI)⁻¹ Y, λ = 0.001 (dual_RAIL.py); |α| ~ 600 here, so the residual on K itself
    y = F.one_hot(dual.labels, 7).double()
    assert torch.allclose(
        (gram + dual.cfg.ridge * torch.eye(len(x), dtype=torch.float64)) @ dual.alpha, y, atol=1e-9
    )
    derived = engine.manifest["derived"]["rail"]
    assert derived["stored_features"] == len(x) and derived["form"] == "dual"
    stored = engine.manifest["derived"]["stored_data"]  # the cost table's column
    assert stored["items"] == len(x)
    assert stored["mb"] == pytest.approx(x.numel() * x.element_size() / 2**20, abs=1e-3)
