import pytest
import torch

from derd_scale.derd.generator import ImplicitGenerator, PseudoImageGenerator, build_generator


@pytest.mark.parametrize("size,channels,stages", [(28, 1, 2), (32, 3, 3), (64, 3, 4), (224, 3, 5)])
def test_generator_reaches_size_by_upsampling(size, channels, stages):
    gen = PseudoImageGenerator(size, channels, latent_dim=16, base_channels=4)
    assert sum(isinstance(m, torch.nn.Upsample) for m in gen.modules()) == stages
    z, labels = gen.sample(3, torch.Generator().manual_seed(0))
    assert z.shape == (3, 16) and labels is None
    x = gen(z)
    assert x.shape == (3, channels, size, size)
    assert x.min() >= 0 and x.max() <= 1


def test_conditional_generator_balanced_labels():
    gen = build_generator("auto", 32, 3, num_classes=10, latent_dim=8, base_channels=4, pseudo_labels="sampled")
    z, labels = gen.sample(20, torch.Generator().manual_seed(1))
    assert torch.bincount(labels, minlength=10).tolist() == [2] * 10
    x1 = gen(z, labels)
    x2 = gen(z, (labels + 1) % 10)
    assert not torch.allclose(x1, x2)
    with pytest.raises(ValueError, match="needs labels"):
        gen(z)


def test_implicit_generator_is_a_trainable_image_bank():
    gen = build_generator("implicit", 28, 1, num_classes=10, bank_size=16)
    assert isinstance(gen, ImplicitGenerator)
    idx, labels = gen.sample(4, torch.Generator().manual_seed(0))
    x = gen(idx)
    assert x.shape == (4, 1, 28, 28)
    x.sum().backward()
    assert gen.images_logit.grad is not None and gen.images_logit.grad.abs().sum() > 0


def test_same_noise_seed_same_images():
    gen = PseudoImageGenerator(32, 3, latent_dim=8, base_channels=4).eval()
    a = gen(gen.sample(2, torch.Generator().manual_seed(5))[0])
    b = gen(gen.sample(2, torch.Generator().manual_seed(5))[0])
    assert torch.equal(a, b)


def test_generator_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    gen = PseudoImageGenerator(32, 3, latent_dim=8, base_channels=4)
    z = torch.randn(4, 8)
    ref = torch.autograd.grad(gen(z).square().sum(), list(gen.parameters()))
    gen.set_grad_checkpointing(True)
    got = torch.autograd.grad(gen(z).square().sum(), list(gen.parameters()))
    for a, b in zip(ref, got):
        assert torch.allclose(a, b, atol=1e-6)
