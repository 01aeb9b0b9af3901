"""moe_adapters — MoE-Adapters4CL: mixture-of-experts adapters with per-task top-k routers
on a frozen CLIP, and the Distribution Discriminative Auto-Selector (DDAS) that sends test
images of unseen distributions to the frozen zero-shot CLIP.

Reference: "Boosting Continual Learning of Vision-Language Models via Mixture-of-Experts
Adapters" (Yu et al., CVPR 2024), official code github.com/JiazuoYu/MoE-Adapters4CL, mtil/:
``clip/model.py`` (`ResidualAttentionBlock`: the MoE forward, `noisy_top_k_gating`,
`SparseDispatcher`), ``clip/adapter.py`` (`Adapter`), ``src/models/finetune.py`` (training,
the frozen-expert list), ``src/models/AutoEncoder.py`` / ``few_shot_AutoEncoder.py`` (DDAS),
``src/models/evaluation.py`` (`zeroshot_classifier`, `zeroshot_eval`: the routing), the
``scripts/train/*.sh`` runners (lrs, iterations, thresholds), ``src/args.py`` (defaults).

What the code does, and cl-bench with it:

- Where: every residual block of **both** encoders (``--ffn_adapt_where
  AdapterDoubleEncoder``), in parallel with the MLP: x ← x + MLP(LN₂(x)) + Σ_k g_k E_k(x),
  x the post-attention residual. The experts see the whole token sequence of an input; the
  gate is computed from its first token (the class token of the image, the start token of a
  prompt).
- Experts: 22 (``--experts_num 22``) per block; each `Adapter` is down Linear(d, 64) → ReLU →
  dropout 0.1 → up Linear(64, d), × 0.1 (``adapter_scalar=0.1``), down Kaiming-uniform
  (a = √5), up weight and both biases 0 (``init_option='lora'``), no layer norm.
- Routers: one (w_gate, w_noise) pair of [d, 22] zero matrices per task per block; training
  uses the current task's. Noisy top-k gating (Shazeer et al.): logits = c·w_gate + ε ·
  (softplus(c·w_noise) + 0.01) while training, c·w_gate at test; softmax over the top-2
  (``--topk 2``) logits; only the selected experts run.
- Load balancing: the code computes 1e-2·(cv²(importance) + cv²(load)) and discards it (a
  local variable of `forward`); ``balance_loss_weight=0`` (default) follows the code, 1e-2
  adds it as the paper's MoE formulation would.
- Frozen experts: after every task, the 2 experts each block chose most often during that
  task's training (``choose_map``, over image and prompt passes) join a frozen list that all
  later tasks exclude from the optimizer (``--frozen``). `trainable()` = the experts not yet
  frozen + the task's router pair, so the first task trains all experts.
- Task loss: CE(logit_scale.exp() · img @ txt.T, labels, label smoothing 0.2) over the task's
  prompts (``--ls 0.2``), image→text only, logit scale frozen; AdamW wd 0, betas (0.9,
  0.999), 100 warm-up steps then cosine (``utils.cosine_lr``), batch 64; lr per dataset from
  the runner scripts: full-shot (1000 iterations) and few-shot (500) tables below.
- DDAS: one autoencoder per task, Linear(in, 100) → ReLU → Linear(100, in) → sigmoid, on
  sigmoid(features), MSE; Adam, weight decay 1e-4, lr 0.01 (full-shot; few-shot 0.003),
  ×0.1 every 10 epochs; 300 iterations per task, batch 64; plus one more trained first for
  1000 iterations on TinyImageNet, which stands for the zero-shot distribution. At test time
  the autoencoder with the least reconstruction error picks the router (and the text
  classifier encoded through that router, `zeroshot_classifier` per task); the TinyImageNet
  one, or a least error above the threshold, sends the input to the frozen CLIP.

cl-bench choices and deviations (docs/learners.md, fidelity rows):

- DDAS features: the frozen CLIP's own image embedding (its encoders with every adapter off),
  not an ImageNet AlexNet's conv5 map (256·13·13): cl-bench loads no second network.
  Code size None = round(100 · D / 512) (the reference's 100, at ViT-B/16's D = 512; toy
  D = 128: 25), PROTOCOL.md §5's rule that values depending on the model are derived from it.
- Threshold: the reference's constants (0.0655 full-shot, 0.0585 few-shot) are reconstruction
  errors of AlexNet features and mean nothing on CLIP features; ``threshold=None`` (default)
  takes the ``threshold_quantile`` (0.95) quantile of every learned autoencoder's errors on its
  own training images, recomputed after each task (derived.moe_adapters.threshold).
- The zero-shot autoencoder is trained on the run's reference images (`ctx.reference_data`:
  the toy world's pre-training mixture, the real world's --reference-images) instead of
  TinyImageNet, hence ``requires = {"reference_data"}``; ``reference_autoencoder=false``
  drops it (the threshold alone then decides).
- Routing per image (``ddas_routing=image``, default): the reference scores the mean error of
  a whole test batch of 128 (``encoder_criterion`` is a batch mean), so every batch, which
  holds one dataset, goes to one router — it uses the test set's identity, which a
  task-agnostic protocol withholds, and depends on the batch size and torchrun's shards.
  ``ddas_routing=batch`` is the code's form. Only trained autoencoders are scored (the
  reference also scores the randomly initialised ones of later tasks).
- Toy scaling (PROTOCOL.md §5): the expert bottleneck is a rank, 64 · d / 768 (toy d = 128:
  11); steps given in paper steps become fractions of the task's iterations: warm-up
  100 / paper iterations, autoencoder iterations 300 (1000 for the zero-shot one) ·
  iterations / paper iterations. lrs keep the reference's values (the PEFT rule).
  ``lr_table=auto`` picks the few-shot table when the setting's paper budget is 500
  iterations (X-TAIL, 5-shot MTIL) and the full-shot one at 1000; a dataset missing from
  the table gets args.py's 1e-3. lr=<value> overrides the table.
- X-TAIL (the reference has none): a routed image is scored against the union classifier
  encoded through its task's router; unrouted images get exactly zeroshot's scores (the
  engine's classifier). Scores are cosine similarities (the argmax is what counts).
- Cost: trainable = the experts not frozen + one router pair per block (task 1: all 22
  experts); extra inference parameters = what one image runs through, as the paper counts
  it: top-2 experts and one w_gate per block, plus every trained autoencoder
  (`InferenceModel.parameters`). Everything stored (all experts, every task's routers) is in
  the manifest, derived.moe_adapters.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from cl_bench.api.learner import Batch, LabelSpace, Learner, StepInfo, Task
from cl_bench.api.optim import OptimizerConfig
from cl_bench.api.registry import register_learner
from cl_bench.api.sampling import to_device
from cl_bench.api.toolkit import clip_logits
from cl_bench.errors import UserError
from cl_bench.models.backbone import as_clip

# scripts/train/train_{full,few}_shot_router11_experts22_1000iters.sh: lr per dataset of order I
FULL_SHOT_LR = {"aircraft": 5e-3, "caltech101": 1e-3, "cifar100": 5e-3, "dtd": 1e-3,
                "eurosat": 1e-4, "flowers102": 1e-3, "food101": 1e-3, "mnist": 1e-4,
                "oxford_pets": 1e-3, "stanford_cars": 1e-3, "sun397": 1e-3}  # fmt: skip
FEW_SHOT_LR = {"aircraft": 8e-3, "caltech101": 5e-4, "cifar100": 2e-4, "dtd": 5e-3,
               "eurosat": 1e-3, "flowers102": 1e-3, "food101": 1e-2, "mnist": 1e-4,
               "oxford_pets": 1e-2, "stanford_cars": 1e-2, "sun397": 1e-2}  # fmt: skip
DEFAULT_LR = 1e-3  # src/args.py --lr
REFERENCE_WIDTH, REFERENCE_BOTTLENECK = 768, 64  # ViT-B/16 width, Adapter's 64
REFERENCE_FEATURE_DIM, REFERENCE_CODE_DIM = 512, 100
TEXT_CHUNK = 256


class Expert(nn.Module):
    """`Adapter` with ``init_option='lora'``, no layer norm: up(dropout(relu(down(x)))) · scale."""

    def __init__(self, width: int, bottleneck: int, dropout: float, scale: float) -> None:
        super().__init__()
        self.down, self.up = nn.Linear(width, bottleneck), nn.Linear(bottleneck, width)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        for t in (self.down.bias, self.up.weight, self.up.bias):
            nn.init.zeros_(t)
        self.dropout, self.scale = dropout, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.dropout(F.relu(self.down(x)), p=self.dropout, training=self.training)
        return self.up(h) * self.scale


def _cv_squared(x: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation (`cv_squared`; 0 for a single expert)."""
    if x.numel() == 1:
        return x.new_zeros((), dtype=torch.float32)
    return x.float().var() / (x.float().mean() ** 2 + 1e-10)


def _normal_cdf(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))


class MoELayer(nn.Module):
    """The experts of one block and every task's (w_gate, w_noise); `forward` adds Σ g_k E_k(x)."""

    def __init__(self, width: int, cfg: Any, bottleneck: int, num_tasks: int) -> None:
        super().__init__()
        e = cfg.num_experts
        self.experts = nn.ModuleList(
            Expert(width, bottleneck, cfg.adapter_dropout, cfg.adapter_scale) for _ in range(e)
        )
        self.routers = nn.ParameterList(
            nn.Parameter(torch.zeros(width, e)) for _ in range(num_tasks)
        )
        self.noise = nn.ParameterList(nn.Parameter(torch.zeros(width, e)) for _ in range(num_tasks))
        self.top_k, self.noise_epsilon = cfg.top_k, cfg.noise_epsilon
        self.counts = torch.zeros(e)  # choose_map: selections while training (not state)
        self.balance: torch.Tensor | None = None

    def gates(self, c: torch.Tensor, task: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(gates [N, E] with top_k non-zeros per row, load [E]) — `noisy_top_k_gating`."""
        clean = c @ self.routers[task].to(c.dtype)
        logits, std = clean, None
        if self.training:
            std = F.softplus(c @ self.noise[task].to(c.dtype)) + self.noise_epsilon
            logits = clean + torch.randn_like(clean) * std
        k, e = self.top_k, clean.shape[1]
        top, idx = logits.topk(min(k + 1, e), dim=1)
        gates = torch.zeros_like(logits).scatter(1, idx[:, :k], F.softmax(top[:, :k], dim=1))
        if std is None or k >= e:
            return gates, (gates > 0).sum(0).to(gates.dtype)
        # _prob_in_top_k: the chance each expert stays in the top k under fresh noise
        p_in = _normal_cdf((clean - top[:, k : k + 1]) / std)
        p_out = _normal_cdf((clean - top[:, k - 1 : k]) / std)
        return gates, torch.where(logits > top[:, k : k + 1], p_in, p_out).sum(0)

    def forward(self, x: torch.Tensor, task: int) -> torch.Tensor:
        """x [N, L, D] → the experts' weighted sum; only experts with a non-zero gate run."""
        gates, load = self.gates(x[:, 0], task)
        if self.training:
            self.counts += (gates > 0).sum(0).float().cpu()
            self.balance = _cv_squared(gates.sum(0)) + _cv_squared(load)
        y = torch.zeros_like(x)
        for e in torch.nonzero((gates > 0).any(dim=0)).flatten().tolist():
            rows = torch.nonzero(gates[:, e] > 0).flatten()
            out = self.experts[e](x[rows])
            y = y.index_add(0, rows, out * gates[rows, e].to(out.dtype)[:, None, None])
        return y


class MoEStack(nn.Module):
    """Every block's `MoELayer`, registered on the CLIP as ``moe_adapters``; `route` is the task
    whose router the forward uses (None: no adapter runs, the CLIP is exactly zero-shot)."""

    def __init__(self, model: nn.Module, cfg: Any, bottleneck: int, num_tasks: int) -> None:
        super().__init__()
        self.route: int | None = None
        self.layers = nn.ModuleDict()
        clip: Any = model
        towers = [("vision", clip.visual.transformer)]
        if cfg.encoders == "both":
            towers.append(("text", clip.transformer))
        for encoder, tower in towers:
            batch_first = bool(getattr(tower, "batch_first", True))
            for i, block in enumerate(tower.resblocks):
                layer = MoELayer(tower.width, cfg, bottleneck, num_tasks)
                self.layers[f"{encoder}_{i}"] = layer
                self._attach(block, layer, batch_first)

    def _attach(self, block: Any, layer: MoELayer, batch_first: bool) -> None:
        """Parallel to the MLP: the input of ln_2 (x) is kept, its adapter sum added after ls_2."""
        seen: dict[str, torch.Tensor] = {}

        def keep(_: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            seen["x"] = args[0]

        def add(_: nn.Module, __: Any, out: torch.Tensor) -> torch.Tensor:
            x = seen.pop("x")
            if self.route is None:
                return out
            if batch_first:
                return out + layer(x, self.route)
            return out + layer(x.transpose(0, 1), self.route).transpose(0, 1)

        block.ln_2.register_forward_pre_hook(keep)
        block.ls_2.register_forward_hook(add)

    @contextmanager
    def routed(self, task: int | None) -> Iterator[None]:
        before, self.route = self.route, task
        try:
            yield
        finally:
            self.route = before


class AutoEncoder(nn.Module):
    """DDAS's `Autoencoder`: sigmoid(dec(relu(enc(x)))) with a `code_dim` bottleneck."""

    def __init__(self, dim: int, code_dim: int) -> None:
        super().__init__()
        self.encoder, self.decoder = nn.Linear(dim, code_dim), nn.Linear(code_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(F.relu(self.encoder(x))))

    def errors(self, x: torch.Tensor) -> torch.Tensor:
        """Per-row reconstruction MSE ([N])."""
        return ((self(x) - x) ** 2).mean(dim=1)


class InferenceModel(nn.Module):
    """What evaluation holds: the CLIP (encoding as the zero-shot model: the engine's classifier
    is zeroshot's) and the autoencoders. What one image runs through is
    `MoEAdapters.inference_parameters` (the top-k experts), not all this module holds."""

    def __init__(self, learner: MoEAdapters) -> None:
        super().__init__()
        self.clip, self.autoencoders = learner.model, learner.autoencoders
        self._routed = learner.stack.routed

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        with self._routed(None):
            return as_clip(self.clip).encode_image(images)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        with self._routed(None):
            return as_clip(self.clip).encode_text(tokens)

    @property
    def logit_scale(self) -> torch.Tensor:
        return as_clip(self.clip).logit_scale


@register_learner("moe_adapters")
class MoEAdapters(Learner):
    description = (
        "MoE-Adapters4CL: top-2 of 22 adapter experts per block with per-task routers on a "
        "frozen CLIP; autoencoders route unseen distributions to zero-shot CLIP (DDAS)"
    )
    requires = frozenset({"reference_data"})
    custom_eval_logits = True

    @dataclass
    class Config(OptimizerConfig):
        lr: float | None = None  # None: the reference scripts' lr for the task's dataset
        lr_table: Literal["auto", "full_shot", "few_shot"] = "auto"
        warmup_steps: int = 100  # utils.cosine_lr warmup_length, in paper steps
        label_smoothing: float = 0.2  # scripts: --ls 0.2
        num_experts: int = 22  # --experts_num 22
        top_k: int = 2  # args.py --topk
        bottleneck: int | None = None  # None: 64 · width / 768
        adapter_scale: float = 0.1  # adapter_scalar=0.1
        adapter_dropout: float = 0.1
        noise_epsilon: float = 1e-2
        frozen_experts_per_task: int = 2  # finetune.py: topk(choose_map, 2)
        balance_loss_weight: float = 0.0  # code: computed (×1e-2) and discarded
        encoders: Literal["both", "vision"] = "both"  # AdapterDoubleEncoder / ImageEncoder
        ddas: bool = True  # --autorouter; false: every image uses the last task's router
        ddas_routing: Literal["image", "batch"] = "image"  # batch = the code's batch mean
        threshold: float | None = None  # None: threshold_quantile of the own-task errors
        threshold_quantile: float = 0.95
        code_dim: int | None = None  # None: 100 · D / 512
        autoencoder_iterations: int = 300  # paper steps
        reference_autoencoder: bool = True  # the TinyImageNet autoencoder's counterpart
        reference_autoencoder_iterations: int = 1000  # paper steps
        reference_images: int = 2048
        autoencoder_lr: float | None = None  # None: 0.01 full-shot, 0.003 few-shot
        autoencoder_weight_decay: float = 1e-4
        autoencoder_lr_decay_epochs: int = 10

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.warmup_fraction != 0.0:
                raise UserError("moe_adapters: set warmup_steps (paper steps), not warmup_fraction")
            if not 1 <= self.top_k <= self.num_experts:
                raise UserError(f"--set top_k={self.top_k}: must lie in [1, num_experts]")
            if not 0.0 < self.threshold_quantile <= 1.0:
                raise UserError(f"--set threshold_quantile={self.threshold_quantile}: in (0, 1]")
            for key in ("bottleneck", "code_dim"):
                if (getattr(self, key) or 1) < 1:
                    raise UserError(f"--set {key}={getattr(self, key)}: must be >= 1 (or none)")

    def __init__(self, backbone: Any, cfg: Any, ctx: Any) -> None:
        super().__init__(backbone, cfg, ctx)
        self.bottleneck = cfg.bottleneck or max(
            2, round(REFERENCE_BOTTLENECK * ctx.model_width / REFERENCE_WIDTH)
        )
        visual: Any = self.model.visual  # open_clip's VisionTransformer
        dim = int(visual.output_dim)
        self.code_dim = cfg.code_dim or max(
            2, round(REFERENCE_CODE_DIM * dim / REFERENCE_FEATURE_DIM)
        )
        self.few_shot = ctx.paper_iterations < 1000
        device = next(self.model.parameters()).device
        with torch.random.fork_rng(devices=[]):  # the run's RNG stream is left untouched
            torch.manual_seed(ctx.seed)
            stack = MoEStack(self.model, cfg, self.bottleneck, ctx.num_tasks)
            self.autoencoders = nn.ModuleList(
                AutoEncoder(dim, self.code_dim) for _ in range(ctx.num_tasks + 1)
            )  # [0]: the zero-shot (reference-data) one, [t + 1]: task t's
        self.model.add_module("moe_adapters", stack.to(device))
        self.autoencoders.to(device).requires_grad_(False)
        self.stack = stack
        self.frozen: set[tuple[str, int]] = set()
        self.trained: list[int] = []  # tasks whose autoencoder is trained, in order
        self.reference_trained = False
        self.own_errors: dict[str, torch.Tensor] = {}
        self.threshold: float | None = cfg.threshold
        self._text_cache: dict[tuple, torch.Tensor] = {}
        ctx.note("moe_adapters", self.cost())

    # -- training -------------------------------------------------------------------------
    def begin_task(self, task: Task) -> None:
        self.stack.route = task.index
        self._text_cache.clear()
        for layer in self._layers():
            layer.counts.zero_()
        self.ctx.note("lr", self.optimizer_config(task).lr)
        if self.cfg.ddas and self.cfg.reference_autoencoder and not self.reference_trained:
            images, _ = self.ctx.reference_data(self.cfg.reference_images, 0)
            feats = self._ddas_features(images.split(256))
            steps = self._scaled(self.cfg.reference_autoencoder_iterations, task)
            self._fit_autoencoder(self.autoencoders[0], feats, steps, task.batch_size, 0)
            self.reference_trained = True

    def trainable(self, task: Task) -> list[nn.Parameter]:
        params: list[nn.Parameter] = []
        for name, module in self.stack.layers.items():
            layer: Any = module
            for e, expert in enumerate(layer.experts):
                if (name, e) not in self.frozen:
                    params += list(expert.parameters())
            params += [layer.routers[task.index], layer.noise[task.index]]
        return params

    def lr_table(self) -> str:
        """Which runner script's lrs apply: the few-shot one at a 500-iteration paper budget."""
        if self.cfg.lr_table != "auto":
            return str(self.cfg.lr_table)
        return "few_shot" if self.few_shot else "full_shot"

    def optimizer_config(self, task: Task) -> OptimizerConfig:
        """The Config's settings, lr from the reference table, 100 paper warm-up steps as a fraction."""
        lrs = FEW_SHOT_LR if self.lr_table() == "few_shot" else FULL_SHOT_LR
        fields = {n: getattr(self.cfg, n) for n in OptimizerConfig.__dataclass_fields__}
        fields["lr"] = self.cfg.lr if self.cfg.lr is not None else lrs.get(task.name, DEFAULT_LR)
        fields["warmup_fraction"] = min(1.0, self.cfg.warmup_steps / self.ctx.paper_iterations)
        return OptimizerConfig(**fields)

    def loss(self, batch: Batch, step: StepInfo) -> tuple[torch.Tensor, dict[str, Any]]:
        for layer in self._layers():
            layer.balance = None
        logits = clip_logits(self.model, batch.images, batch.text_tokens)
        loss = F.cross_entropy(logits, batch.labels, label_smoothing=self.cfg.label_smoothing)
        terms = [la.balance for la in self._layers() if la.balance is not None]
        balance = torch.stack(terms).sum() if terms else logits.new_zeros(())
        if self.cfg.balance_loss_weight > 0:  # the code's would-be loss: 1e-2 per block
            loss = loss + self.cfg.balance_loss_weight * balance
        return loss, {"balance": balance.detach()}

    def end_task(self, task: Task) -> None:
        for name, layer in self.stack.layers.items():  # finetune.py: the frozen list
            top = torch.topk(layer.counts, self.cfg.frozen_experts_per_task).indices  # type: ignore[arg-type]
            self.frozen |= {(name, int(e)) for e in top}
        if self.cfg.ddas:
            if task.training_set is None:
                raise UserError(
                    "moe_adapters needs the task's whole training set (task.training_set)"
                )
            feats = self._ddas_features(im for im, _ in task.training_set.batches(256))
            ae = self.autoencoders[task.index + 1]
            steps = self._scaled(self.cfg.autoencoder_iterations, task)
            self._fit_autoencoder(ae, feats, steps, task.batch_size, task.index + 1)
            with torch.no_grad():
                self.own_errors[str(task.index)] = ae.errors(feats).cpu()  # type: ignore[operator]
            self.trained.append(task.index)
            if self.cfg.threshold is None:
                pooled = torch.cat(list(self.own_errors.values())).double()
                self.threshold = float(torch.quantile(pooled, self.cfg.threshold_quantile))
        self.stack.route = task.index
        self._text_cache.clear()
        self.ctx.note("moe_adapters", self.cost())

    def _scaled(self, paper_steps: int, task: Task) -> int:
        """Steps given in paper steps, at the run's fraction of the paper budget (PROTOCOL §5)."""
        return max(1, round(paper_steps * task.iterations / self.ctx.paper_iterations))

    @torch.no_grad()
    def _ddas_features(self, batches: Any) -> torch.Tensor:
        """sigmoid(frozen CLIP image embedding), fp32, [N, D] — the autoencoders' input."""
        was = self.model.training
        self.model.eval()
        try:
            with self.stack.routed(None):
                clip = as_clip(self.model)
                return torch.cat([torch.sigmoid(clip.encode_image(b).float()) for b in batches])
        finally:
            self.model.train(was)

    def _fit_autoencoder(
        self, ae: nn.Module, x: torch.Tensor, steps: int, batch: int, key: int
    ) -> None:
        """Adam + MSE, lr ×0.1 every `autoencoder_lr_decay_epochs` epochs (exp_lr_scheduler)."""
        lr = self.cfg.autoencoder_lr or (0.003 if self.few_shot else 0.01)
        ae.requires_grad_(True)
        opt = torch.optim.Adam(
            ae.parameters(), lr=lr, weight_decay=self.cfg.autoencoder_weight_decay
        )
        gen = torch.Generator().manual_seed(self.ctx.seed * 1009 + key)
        n = x.shape[0]
        size = min(batch, n)
        per_epoch = math.ceil(n / size)
        with torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
            for it in range(steps):
                if it % per_epoch == 0:
                    order = torch.randperm(n, generator=gen).to(x.device)
                rows = order[(it % per_epoch) * size : (it % per_epoch + 1) * size]
                for group in opt.param_groups:
                    group["lr"] = lr * 0.1 ** (
                        (it // per_epoch) // self.cfg.autoencoder_lr_decay_epochs
                    )
                opt.zero_grad(set_to_none=True)
                F.mse_loss(ae(x[rows]), x[rows]).backward()
                opt.step()
        ae.requires_grad_(False)

    # -- evaluation -------------------------------------------------------------------------
    def routes(self, features: torch.Tensor) -> torch.Tensor:
        """Task index per image ([B]; -1 = the zero-shot CLIP) from raw frozen image features."""
        none = torch.full((features.shape[0],), -1, dtype=torch.long, device=features.device)
        if not self.trained:
            return none
        if not self.cfg.ddas:
            return torch.full_like(none, self.trained[-1])
        x = torch.sigmoid(features.float())
        candidates = ([0] if self.reference_trained else []) + [t + 1 for t in self.trained]
        errors = torch.stack([self.autoencoders[i].errors(x) for i in candidates])  # type: ignore[operator]
        if self.cfg.ddas_routing == "batch":
            errors = errors.mean(dim=1, keepdim=True).expand_as(errors)
        best, pick = errors.min(dim=0)
        task = to_device(torch.tensor(candidates), x.device)[pick] - 1  # no host sync on CUDA
        too_far = (
            best > self.threshold if self.threshold is not None else torch.zeros_like(pick).bool()
        )
        return torch.where(too_far, none, task)

    def eval_logits(self, images: torch.Tensor, space: LabelSpace) -> torch.Tensor:
        clip = as_clip(self.model)
        with self.stack.routed(None):
            raw = clip.encode_image(images)
        with torch.autocast(images.device.type, enabled=False):
            scores = F.normalize(raw.float(), dim=-1) @ space.text_features.float().T  # zeroshot's
            routes = self.routes(raw)
        for t in sorted(set(routes.tolist()) - {-1}):
            rows = torch.nonzero(routes == t).flatten()
            with self.stack.routed(t):
                feats = clip.encode_image(images[rows])
            text = self.text_classifier(t, space)
            with torch.autocast(images.device.type, enabled=False):
                scores[rows] = F.normalize(feats.float(), dim=-1) @ text.T
        return scores

    def text_classifier(self, task: int, space: LabelSpace) -> torch.Tensor:
        """The space's classifier encoded through `task`'s router (`zeroshot_classifier`)."""
        if not space.prompts:
            raise UserError("moe_adapters: the label space carries no prompts (LabelSpace.prompts)")
        key = (task, space.prompts)
        if key not in self._text_cache:
            flat = [p for prompts in space.prompts for p in prompts]
            owner = torch.repeat_interleave(torch.tensor([len(p) for p in space.prompts]))
            tokens = self.ctx.tokenize(flat)
            clip = as_clip(self.model)
            with self.stack.routed(task):
                feats = torch.cat([F.normalize(clip.encode_text(tokens[i : i + TEXT_CHUNK]).float(), dim=-1)
                                   for i in range(0, len(flat), TEXT_CHUNK)])  # fmt: skip
            summed = feats.new_zeros(space.num_classes, feats.shape[1])
            summed.index_add_(0, owner.to(feats.device), feats)
            self._text_cache[key] = F.normalize(summed, dim=-1)
        return self._text_cache[key]

    def eval_model(self) -> nn.Module:
        return InferenceModel(self)

    # -- cost and persistence ------------------------------------------------------------------
    def _layers(self) -> list[MoELayer]:
        return [layer for layer in self.stack.layers.values()]  # type: ignore[misc]

    def base_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.model.named_parameters() if not n.startswith("moe_adapters.")]

    def inference_parameters(self) -> int:
        return sum(p.numel() for p in self.active_parameters())

    def active_parameters(self) -> list[nn.Parameter]:
        """The base CLIP + what one image runs through: top_k experts (every expert has the same
        size) and one w_gate per block, and every trained autoencoder (all score each image)."""
        params = self.base_parameters()
        for layer in self._layers():
            for expert in list(layer.experts)[: self.cfg.top_k]:
                params += list(expert.parameters())
            params.append(layer.routers[0])
        used = ([0] if self.reference_trained else []) + [t + 1 for t in self.trained]
        for i in used:
            params += list(self.autoencoders[i].parameters())
        return params

    def cost(self) -> dict[str, Any]:
        layers = self._layers()
        expert = sum(p.numel() for p in layers[0].experts[0].parameters())
        router = sum(la.routers[0].numel() for la in layers)
        ae = sum(p.numel() for p in self.autoencoders[0].parameters())
        experts_all = sum(sum(p.numel() for p in la.experts.parameters()) for la in layers)
        return {
            "bottleneck": self.bottleneck,
            "code_dim": self.code_dim,
            "moe_layers": len(layers),
            "expert_parameters_all": experts_all,
            "router_parameters_per_task": 2 * router,
            "stored_parameters": experts_all + 2 * router * self.ctx.num_tasks,
            "active_parameters_per_image": self.cfg.top_k
            * sum(sum(p.numel() for p in la.experts[0].parameters()) for la in layers)
            + router,
            "autoencoder_parameters_each": ae,
            "expert_parameters_each_vision": expert,
            "frozen_experts": len(self.frozen),
            "threshold": self.threshold,
            "lr_table": self.lr_table(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "autoencoders": self.autoencoders.state_dict(),
            "frozen": sorted([name, e] for name, e in self.frozen),
            "trained": list(self.trained),
            "reference_trained": self.reference_trained,
            "own_errors": dict(self.own_errors),
            "threshold": self.threshold,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.autoencoders.load_state_dict(state["autoencoders"])
        self.frozen = {(str(name), int(e)) for name, e in state["frozen"]}
        self.trained = [int(t) for t in state["trained"]]
        self.reference_trained = bool(state["reference_trained"])
        self.own_errors = {str(k): v.cpu() for k, v in state["own_errors"].items()}
        self.threshold = None if state["threshold"] is None else float(state["threshold"])
        self.stack.route = self.trained[-1] if self.trained else None
        self._text_cache.clear()
