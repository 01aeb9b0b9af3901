"""moe_adapters: inference runs only the top-k experts, DDAS routes by reconstruction error
(unseen distributions get exactly the zero-shot CLIP's scores), the cost counts, the frozen
experts, and the state surviving the checkpoint format."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cl_bench_baselines.moe_adapters import MoEAdapters
from fakeworld import FakeWorld

from cl_bench.api.hyperparameters import build_config
from cl_bench.api.learner import LabelSpace
from cl_bench.engine.checkpoint import load_checkpoint, save_checkpoint
from cl_bench.engine.config import RunConfig
from cl_bench.engine.loop import Engine
from cl_bench.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")

EXPERT = 32 * 3 + 3 + 3 * 32 + 32  # fake world: width 32, bottleneck round(64 * 32 / 768) = 3
ROUTER = 32 * 22  # one [d, E] matrix


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    cfg = RunConfig(
        setting="xtail", learner="moe_adapters", world="toy", iterations=6, batch_size=8,
        seed=0, max_tasks=2, eval_limit=12, overrides={"reference_images": "16"},
        device="cpu", out=str(tmp_path_factory.mktemp("moe") / "run"),
    )  # fmt: skip
    torch.set_num_threads(1)
    run = Engine(cfg, world=FakeWorld())
    run.run()
    return run


def _fresh(engine: Engine, **overrides: str) -> MoEAdapters:
    backbone = engine.world.backbone(engine.device)
    cfg = build_config(engine.learner_cls, {**engine.cfg.overrides, **overrides})
    learner = engine.learner_cls(backbone, cfg, engine.make_context(backbone))
    assert isinstance(learner, MoEAdapters)
    return learner


def _images(engine: Engine, name: str = "aircraft") -> torch.Tensor:
    backbone = engine.parts.backbone
    split = engine.world.load_split(name, "test", None, 42, backbone.image_size)
    return backbone.normalize(torch.from_numpy(np.ascontiguousarray(split.images[:6])))


def _space(engine: Engine, learner: MoEAdapters) -> LabelSpace:
    """The run's two-domain X-TAIL union, with the zero-shot classifier of its prompts."""
    infos = [engine.world.dataset_info(d) for d in engine.setting.datasets]
    prompts = tuple((p,) for info in infos for p in info.union_prompts("codyra"))
    tokens = learner.ctx.tokenize([p for (p,) in prompts])
    with torch.inference_mode():
        text = F.normalize(learner.eval_model().encode_text(tokens).float(), dim=-1)
    names = tuple(c for info in infos for c in info.classnames)
    return LabelSpace("aircraft", names, text, tuple(engine.setting.datasets), (0, 3), 0, prompts)


def test_inference_runs_only_the_top_k_experts_of_each_block(engine):
    learner = engine.learner
    images = _images(engine)
    calls: dict[str, list[int]] = {}
    hooks = []
    for name, layer in learner.stack.layers.items():
        for e, expert in enumerate(layer.experts):

            def hook(m: Any, args: Any, out: Any, key: str = f"{name}/{e}") -> None:
                calls.setdefault(key, []).append(args[0].shape[0])

            hooks.append(expert.register_forward_hook(hook))
    learner.model.eval()
    try:
        with torch.inference_mode(), learner.stack.routed(1):
            before = learner.model.encode_image(images)
            vision = {k: sum(v) for k, v in calls.items() if k.startswith("vision")}
            # each image went through exactly top_k = 2 experts of the vision block
            assert sum(vision.values()) == 2 * len(images)
            assert 1 <= len(vision) <= 2 * len(images)
            # experts that ran for none of these images may change: the output does not
            called = {k for k in calls if k.startswith("vision")}
            for name, layer in learner.stack.layers.items():
                for e, expert in enumerate(layer.experts):
                    if name.startswith("vision") and f"{name}/{e}" not in called:
                        for p in expert.parameters():
                            p.add_(torch.randn_like(p))
            after = learner.model.encode_image(images)
    finally:
        for hook in hooks:
            hook.remove()
    assert torch.equal(before, after)


def test_ddas_routes_near_features_to_their_task_and_far_ones_to_zero_shot(engine):
    learner = _fresh(engine)
    torch.manual_seed(0)
    centres = torch.randn(3, 32) * 3  # the zero-shot distribution, task 0, task 1
    clouds = [c + 0.3 * torch.randn(64, 32) for c in centres]
    for index, cloud in enumerate(clouds):  # autoencoder 0: zero-shot; t + 1: task t
        learner._fit_autoencoder(learner.autoencoders[index], torch.sigmoid(cloud), 1500, 64, index)
    learner.reference_trained, learner.trained = True, [0, 1]
    with torch.no_grad():
        learner.threshold = float(
            max(learner.autoencoders[i].errors(torch.sigmoid(clouds[i])).max() for i in (1, 2))
        )
        near = [c + 0.3 * torch.randn(16, 32) for c in centres]
        assert (learner.routes(near[1]) == 0).float().mean() > 0.9
        assert (learner.routes(near[2]) == 1).float().mean() > 0.9
        assert (learner.routes(near[0]) == -1).float().mean() > 0.9  # the reference set's
        far = -centres[1:2] * 4 + 0.3 * torch.randn(16, 32)  # none of the three
        assert bool((learner.routes(far) == -1).all())
        # per image, not per batch: a mixed batch keeps both answers
        mixed = learner.routes(torch.cat([near[1][:4], far[:4]]))
        assert mixed[:4].tolist() == [0] * 4 and mixed[4:].tolist() == [-1] * 4
        learner.cfg.ddas_routing = "batch"  # the code's form: one answer for the whole batch
        assert len(set(learner.routes(torch.cat([near[1][:4], far[:4]])).tolist())) == 1


def test_unrouted_images_get_exactly_the_zero_shot_scores_and_routed_ones_their_task(
    engine, fake_base_model
):
    learner = engine.learner
    images = _images(engine)
    space = _space(engine, learner)
    learner.model.eval()  # as the evaluator runs it
    fake_base_model.eval()
    with torch.inference_mode():
        zero_shot = (
            F.normalize(fake_base_model.encode_image(images).float(), dim=-1)
            @ space.text_features.T
        )
        saved = learner.threshold
        try:
            learner.threshold = -1.0  # every image is "too far": all go to the frozen CLIP
            assert torch.equal(learner.eval_logits(images, space), zero_shot)
            learner.threshold = float("inf")  # every image goes to its least-error task
            learner.reference_trained = False
            routes = learner.routes(fake_base_model.encode_image(images))
            scores = learner.eval_logits(images, space)
        finally:
            learner.threshold, learner.reference_trained = saved, True
        assert bool((routes >= 0).all())
        for t in set(routes.tolist()):
            rows = routes == t
            with learner.stack.routed(t):
                feats = F.normalize(learner.model.encode_image(images[rows]).float(), dim=-1)
            assert torch.allclose(scores[rows], feats @ learner.text_classifier(t, space).T)
            assert not torch.allclose(scores[rows], zero_shot[rows])  # the experts trained


def test_trainable_is_every_unfrozen_expert_and_the_tasks_router_pair(engine):
    learner = engine.learner
    layers = len(learner.stack.layers)  # one block per encoder in the fake world
    assert layers == 2
    first, second = (t["trainable_parameters"] for t in engine.manifest["tasks"])
    assert first == layers * (22 * EXPERT + 2 * ROUTER)  # task 1: all experts
    assert second == first - 2 * layers * EXPERT  # task 1's two most-used experts per block froze
    assert len(learner.frozen) <= 4 * layers
    derived = engine.manifest["derived"]["moe_adapters"]
    assert derived["bottleneck"] == 3 and derived["code_dim"] == 6
    assert derived["active_parameters_per_image"] == layers * (2 * EXPERT + ROUTER)
    assert derived["lr_table"] == "few_shot"  # X-TAIL: the 500-iteration paper budget


def test_the_reference_lr_table_and_warm_up(engine):
    learner = engine.learner
    settings = learner.optimizer_config(_task("dtd"))
    assert settings.lr == 5e-3 and settings.warmup_fraction == pytest.approx(100 / 500)
    assert learner.optimizer_config(_task("places365")).lr == 1e-3  # args.py's default
    learner.cfg.lr_table = "full_shot"
    try:
        assert learner.optimizer_config(_task("dtd")).lr == 1e-3
    finally:
        learner.cfg.lr_table = "auto"


def _task(name: str) -> Any:
    from cl_bench.api.learner import Task

    return Task(0, name, ("a",), ("a photo of a.",), torch.zeros(1, 16, dtype=torch.long), 6, 8, 2)


def test_state_survives_the_checkpoint_and_scores_the_same(engine, tmp_path):
    learner = engine.learner
    state = learner.state_dict()
    save_checkpoint(tmp_path / "ckpt", state, 2, "moe")
    loaded, *_ = load_checkpoint(tmp_path / "ckpt")
    fresh = _fresh(engine)
    fresh.load_state_dict(loaded)
    fresh.model.eval(), learner.model.eval()  # as the evaluator runs them
    images, space = _images(engine), _space(engine, learner)
    with torch.inference_mode():
        assert torch.equal(fresh.eval_logits(images, space), learner.eval_logits(images, space))
    assert fresh.frozen == learner.frozen and fresh.threshold == learner.threshold


@pytest.mark.parametrize(
    ("key", "value"), [("top_k", "23"), ("warmup_fraction", "0.1"), ("threshold_quantile", "0")]
)
def test_bad_hyperparameters_are_refused(key, value):
    with pytest.raises(UserError, match=key):
        build_config(MoEAdapters, {key: value})
