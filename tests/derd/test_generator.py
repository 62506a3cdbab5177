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


@pytest.mark.parametrize("head", ["tanh_bn", "bn"])
def test_normalised_heads_map_the_teacher_space_to_clamped_pixels(head):
    """tanh_bn: n = BN_noaffine(tanh(c)); bn: n = BN_affine(c) (weight 1, bias 0 at init, so the
    same batch standardisation of c); pixels = clamp(n·std + mean, 0, 1), by hand from the conv output c."""
    torch.manual_seed(0)
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2470, 0.2435, 0.2616])
    gen = PseudoImageGenerator(32, 3, latent_dim=8, base_channels=4, head=head, pixel_mean=mean, pixel_std=std)
    conv_out = []
    gen.to_image[0].register_forward_hook(lambda m, i, o: conv_out.append(o.detach()))
    x = gen(torch.randn(6, 8))
    c = conv_out[0]
    t = torch.tanh(c) if head == "tanh_bn" else c
    n = (t - t.mean(dim=(0, 2, 3), keepdim=True)) / torch.sqrt(
        t.var(dim=(0, 2, 3), unbiased=False, keepdim=True) + 1e-5
    )
    want = (n * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)).clamp(0, 1)
    assert torch.allclose(x, want, atol=1e-5)
    assert x.min() >= 0 and x.max() <= 1 and ((x == 0) | (x == 1)).any()  # the clamp acts: ±2 std leave [0, 1]
    bn = gen.to_image[-1]
    assert isinstance(bn, torch.nn.BatchNorm2d) and bn.affine == (head == "bn")


def test_sigmoid_head_keeps_its_layout_and_the_pixel_stats_are_not_saved():
    gen = PseudoImageGenerator(28, 1, latent_dim=8, base_channels=4, pixel_mean=torch.tensor([0.3]))
    keys = [k for k in gen.state_dict() if k.startswith("to_image")]
    assert keys == ["to_image.0.weight", "to_image.0.bias"]
    assert "pixel_mean" not in gen.state_dict()
    with pytest.raises(ValueError, match="generator.head"):
        PseudoImageGenerator(28, 1, latent_dim=8, base_channels=4, head="tanh")


def test_build_models_gives_a_normalised_head_the_natural_teachers_statistics(tmp_path):
    from conftest import tiny_config

    from derd_scale.trainer import build_models

    models = build_models(tiny_config(tmp_path, "generator.head=bn"))
    natural = models.natural_teacher
    want_mean = natural.mean.flatten() if natural.has_norm else torch.zeros(1)
    want_std = natural.std.flatten() if natural.has_norm else torch.ones(1)
    assert torch.equal(models.generator.pixel_mean.flatten(), want_mean)
    assert torch.equal(models.generator.pixel_std.flatten(), want_std)
    assert models.generator.head == "bn"


def test_a_normalised_head_on_the_implicit_generator_is_a_config_error(tmp_path):
    from conftest import tiny_config

    from derd_scale.config import ConfigError

    with pytest.raises(ConfigError, match=r"^generator\.head: 'bn' is a layer of the dcgan generator"):
        tiny_config(tmp_path, "generator.head=bn", "generator.kind=implicit")
