"""A randomly initialised, very small open_clip CLIP — for tests and for worlds that are
not the toy world's shipped model. Random weights only when asked for by name."""

from __future__ import annotations

import torch

from cl_bench.models.backbone import Backbone

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def random_tiny_clip(
    seed: int = 0,
    image_size: int = 16,
    width: int = 32,
    layers: int = 1,
    context_length: int = 16,
    patch_size: int = 8,
    device: torch.device | str = "cpu",
) -> Backbone:
    """An open_clip `CLIP` with nn.MultiheadAttention blocks, vocab 49408, random weights."""
    import open_clip
    from open_clip.tokenizer import SimpleTokenizer

    vision = open_clip.CLIPVisionCfg(
        layers=layers,
        width=width,
        head_width=16,
        patch_size=patch_size,
        image_size=image_size,
        mlp_ratio=2.0,
    )
    text = open_clip.CLIPTextCfg(
        context_length=context_length,
        vocab_size=49408,
        width=width,
        heads=max(1, width // 16),
        layers=layers,
        mlp_ratio=2.0,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = open_clip.CLIP(embed_dim=width, vision_cfg=vision, text_cfg=text)
    tokenizer = SimpleTokenizer(context_length=context_length)
    return Backbone(
        model.to(device),
        tokenizer,
        image_size,
        OPENAI_MEAN,
        OPENAI_STD,
        "tiny-random-clip",
        f"random-seed{seed}",
    )
