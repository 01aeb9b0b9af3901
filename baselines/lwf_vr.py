"""LwF-VR — LwF with vocabulary replay (Ding et al., 2022), as ZSCL's code runs it.

Loss = the task loss (image→text CE, label smoothing 0.2)
     + lwf's distillation from the task-start model on a second batch of the current task's
       images, scored not against the task's prompts but against a **random vocabulary**:
       1000 "sentences" of 10 random tokens each. Image→text logits [B, 1000] and their
       transpose (text→image, a softmax over the batch's images per sentence), soft
       cross-entropy with T = 2 scaled by T², weight 1 each.

Reference code: Thunderbeee/ZSCL, ``mtil/scripts/lwf_vr.sh``: exactly ``lwf.sh``'s command
(``--method ZSCL --image_loss --text_loss --ls 0.2 --ref-dataset <current dataset>
--ref-model <previous task's checkpoint> --fair``, 1000 iterations) plus ``--ref-sentences
random``, which makes ``mtil/src/models/finetune.py`` take ``ref_texts = virtual_vocab()``
(``mtil/src/models/helpers.py``): ``torch.randint(0, len(encoder), (1000, 10))`` token ids
over the whole BPE vocabulary (the start and end tokens included), framed as
``[<start_of_text>, 10 tokens, <end_of_text>, 0, ...]`` and padded to the context length;
the text tower pools at the argmax token, so a random ``<end_of_text>`` (id 49407) among the
ten is where its sentence ends, as in the reference. Everything else is `lwf`'s (its
docstring): the second batch, the teacher = the model at the task's start, the student's
logits over the teacher's text embeddings, ``--fair`` read by nothing.

Vocabulary: drawn once per run from a generator seeded by the run seed and reused for every
task. The reference draws it from torch's global generator at the start of each task's
process, which its ``main`` seeds with 42 every time after the same sequence of draws, so
each task sees the same 1000 sentences unless a dataset constructor draws from that
generator. The teacher's embeddings of the vocabulary are computed once per task (the
reference recomputes the same constant every step). In the toy world the vocabulary keeps
the reference's 1000 × 10 tokens (no PROTOCOL.md §5 rule scales it; the toy context, 24
tokens, holds the 12-token frame). ``vocabulary=task`` scores the task's prompts instead:
plain `lwf`, term for term.

Memory: lwf's teacher copy plus the vocabulary's tokens and the teacher's text embeddings
(1000 × D). Compute: one no-grad text forward of 1000 sentences per task;
``student_text_features=student`` adds a grad text forward of all 1000 every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from cl_bench.api.learner import Batch, StepInfo, Task
from cl_bench.api.registry import register_learner
from cl_bench.api.toolkit import clip_features
from cl_bench.errors import UserError
from cl_bench.models.backbone import as_clip

from .finetune import baseline_task_loss
from .lwf import LwF


def virtual_vocabulary(
    size: int, length: int, vocab_size: int, start: int, end: int, context: int, seed: int
) -> torch.Tensor:
    """ZSCL's ``virtual_vocab``: [size, context] token ids, `length` random ids in [0, vocab_size)
    between `start` and `end`, zero-padded."""
    generator = torch.Generator().manual_seed(seed)
    body = torch.randint(0, vocab_size, (size, length), generator=generator)
    tokens = torch.zeros((size, context), dtype=torch.long)
    tokens[:, 0] = start
    tokens[:, 1 : length + 1] = body
    tokens[:, length + 1] = end
    return tokens


@register_learner("lwf_vr")
class LwFVR(LwF):
    description = "LwF with vocabulary replay: lwf's distillation over 1000 random token sentences"

    @dataclass
    class Config(LwF.Config):
        # "random" = the reference's --ref-sentences random; "task" = plain lwf
        vocabulary: Literal["random", "task"] = "random"
        vocabulary_size: int = 1000  # helpers.virtual_vocab n_class
        vocabulary_length: int = 10  # helpers.virtual_vocab length

        def __post_init__(self) -> None:
            for key in ("vocabulary_size", "vocabulary_length"):
                if getattr(self, key) < 1:
                    raise UserError(f"lwf_vr: {key} must be >= 1, got {getattr(self, key)}")

    def __init__(self, backbone: Any, cfg: Any, ctx: Any) -> None:
        super().__init__(backbone, cfg, ctx)
        self.vocabulary_tokens: torch.Tensor | None = None
        if cfg.vocabulary == "random":
            self.vocabulary_tokens = self.make_vocabulary().to(ctx.device)

    def make_vocabulary(self) -> torch.Tensor:
        frame = self.ctx.tokenize([""])[0].cpu()  # [<start>, <end>, 0, ...]
        context = int(frame.shape[0])
        if self.cfg.vocabulary_length + 2 > context:
            raise UserError(
                f"lwf_vr: vocabulary_length={self.cfg.vocabulary_length} does not fit the "
                f"model's {context}-token context with its start and end tokens; "
                f"use --set vocabulary_length={context - 2} or less"
            )
        embedding = getattr(self.model, "token_embedding", None)
        if not isinstance(embedding, torch.nn.Embedding):
            raise UserError(
                "lwf_vr: vocabulary=random needs a text tower with a token_embedding table "
                "(open_clip's CLIP); use --set vocabulary=task"
            )
        seed = int(np.random.SeedSequence([self.ctx.seed, 53]).generate_state(1)[0])
        return virtual_vocabulary(
            self.cfg.vocabulary_size,
            self.cfg.vocabulary_length,
            embedding.num_embeddings,
            int(frame[0]),
            int(frame[1]),
            context,
            seed,
        )

    def begin_task(self, task: Task) -> None:
        super().begin_task(task)  # the teacher, its prompt embeddings, the second loader
        if self.vocabulary_tokens is not None:
            with torch.no_grad():
                self.teacher_text = F.normalize(
                    as_clip(self.teacher).encode_text(self.vocabulary_tokens), dim=-1
                )

    def loss(self, batch: Batch, step: StepInfo) -> tuple[torch.Tensor, dict[str, Any]]:
        if self.vocabulary_tokens is None:
            return super().loss(batch, step)
        image_features, text_features = clip_features(self.model, batch.images, batch.text_tokens)
        logits = as_clip(self.model).logit_scale.exp() * image_features @ text_features.T
        task_loss = baseline_task_loss(
            logits, batch.labels, self.cfg.task_loss, self.cfg.label_smoothing
        )
        if self.cfg.student_text_features == "student":
            student_text = F.normalize(
                as_clip(self.model).encode_text(self.vocabulary_tokens), dim=-1
            )
        else:
            student_text = self.teacher_text
        if self.second is not None:
            i2t, t2i = self.distillation(self.second.next(), student_text)
        else:
            i2t, t2i = self.distillation(batch.images, student_text, image_features)
        loss = task_loss + self.cfg.image_to_text_weight * i2t + self.cfg.text_to_image_weight * t2i
        return loss, {
            "task_loss": task_loss.detach(),
            "distill_i2t": i2t.detach(),
            "distill_t2i": t2i.detach(),
        }
