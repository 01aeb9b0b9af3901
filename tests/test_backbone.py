"""`Backbone.normalize`: the one uint8 -> model-input conversion of training and evaluation."""

from __future__ import annotations

import torch

from cl_bench.models.backbone import Backbone

MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's
STD = (0.26862954, 0.26130258, 0.27577711)


def backbone() -> Backbone:
    return Backbone(torch.nn.Linear(1, 1), lambda t: t, 32, MEAN, STD, "tiny", "random")


def explicit(images: torch.Tensor) -> torch.Tensor:
    x = images.permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_normalize_equals_the_out_of_place_formula_bit_for_bit_in_its_layout():
    images = torch.randint(0, 256, (5, 17, 13, 3), generator=torch.Generator().manual_seed(0))
    images = images.to(torch.uint8)
    got, want = backbone().normalize(images), explicit(images)
    assert got.shape == (5, 3, 17, 13)
    assert torch.equal(got, want)
    # the same memory layout (channels-last strides) as before: conv kernels see what they saw
    assert got.stride() == want.stride()
    assert images.dtype == torch.uint8 and int(images.max()) > 1  # the input is untouched


def test_mean_and_std_are_built_once_per_device_and_follow_a_changed_mean():
    bb = backbone()
    images = torch.full((2, 4, 4, 3), 255, dtype=torch.uint8)
    first = bb.normalize(images)
    for _ in range(3):
        assert torch.equal(bb.normalize(images), first)
    assert len(bb._stats) == 1
    bb.mean = (0.0, 0.0, 0.0)
    assert torch.allclose(bb.normalize(images)[:, 0], torch.full((2, 4, 4), 1.0 / STD[0]))


def test_first_call_under_inference_mode_leaves_tensors_training_can_use():
    bb = backbone()
    images = torch.randint(0, 256, (2, 4, 4, 3), dtype=torch.uint8)
    with torch.inference_mode():
        bb.normalize(images)  # an evaluation comes first (row 0)
    weight = torch.ones(3, requires_grad=True)
    x = bb.normalize(images)
    assert not x.is_inference()
    (x * weight.view(1, 3, 1, 1)).sum().backward()
    assert weight.grad is not None
    assert torch.allclose(weight.grad, explicit(images).sum((0, 2, 3)))


def test_to_device_on_cpu_keeps_values_and_copies_a_read_only_array(tmp_path):
    import warnings

    import numpy as np

    from cl_bench.api.sampling import to_device

    path = tmp_path / "images.u8"
    np.arange(24, dtype=np.uint8).tofile(path)
    memmap = np.memmap(path, dtype=np.uint8, mode="r", shape=(2, 12))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns on a non-writable numpy array
        tensor = to_device(memmap[:1], torch.device("cpu"))
    assert tensor.tolist() == [list(range(12))]
    tensor[0, 0] = 99  # its own memory: the file is untouched
    assert int(memmap[0, 0]) == 0
    same = torch.ones(3)
    assert to_device(same, torch.device("cpu")) is same
