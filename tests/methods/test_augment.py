"""methods/augment.py: the label-free batch views, against hand-computed values."""

import torch

from derd_scale.methods.augment import mixup


def test_mixup_blends_each_image_with_its_batch_neighbour_by_its_own_weight():
    """x'_i = λ_i x_i + (1 − λ_i) x_{i−1 mod B}: batch of three constant images 1, 2, 4."""
    x = torch.tensor([1.0, 2.0, 4.0]).view(3, 1, 1, 1).expand(3, 1, 2, 2).clone()
    lam = torch.tensor([0.25, 1.0, 0.5])
    out = mixup(x, lam)
    # image 0 with image 2: 0.25·1 + 0.75·4 = 3.25; image 1 kept (λ = 1): 2; image 2 with image 1: 0.5·4 + 0.5·2 = 3
    assert torch.allclose(out[:, 0, 0, 0], torch.tensor([3.25, 2.0, 3.0]))
    assert out.shape == x.shape and torch.equal(out[0], out[0, 0, 0, 0].expand(1, 2, 2))


def test_mixup_stays_in_the_pixel_range_and_passes_gradients():
    x = torch.rand(4, 3, 5, 5, requires_grad=True)
    lam = torch.rand(4)
    out = mixup(x, lam)
    assert out.min() >= 0 and out.max() <= 1  # a convex blend of images in [0, 1]
    out.sum().backward()
    # image j enters x'_j with λ_j and x'_{j+1} with 1 − λ_{j+1}
    want = lam + 1 - lam.roll(-1)
    assert torch.allclose(x.grad, want.view(4, 1, 1, 1).expand_as(x))
