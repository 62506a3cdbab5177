"""Every registered method runs a few real steps end to end on tiny models (seconds each), through
``trainer.method_step`` and the plain gradient adapter, and changes the student; the generator's
steps never leave a gradient on the student or the teachers; the config refuses what a method
cannot run, in one line."""

from __future__ import annotations

import pytest
import torch

from derd_scale import trainer
from derd_scale.config import config_from_dict
from derd_scale.data import dataset_info
from derd_scale.derd.generator import PseudoImageGenerator
from derd_scale.methods import METHODS, reads_real_data
from derd_scale.models import create_model, freeze
from derd_scale.state import Models, TrainState

BASE = [
    "data.name=fashion_mnist",
    "seed=1",
    "stage1.enabled=false",
    "stage2.batch_size=6",
    "stage2.steps=2",
    "stage2.eps=0.1",
    "baselines.attack_steps=2",
    "baselines.dfhl_rs.hee_steps=2",
    "optim.student.lr=0.05",
    "distributed.channels_last=false",
]

CASES = [
    ("dafl", ["baselines.variant=kd"]),
    ("dafl", ["baselines.variant=rslad"]),
    ("dfad", ["baselines.variant=kd", "baselines.student_steps=2"]),
    ("dfad", ["baselines.variant=rslad", "baselines.student_steps=2", "baselines.dfad.generator_loss=log_l1"]),
    ("zskt", ["baselines.variant=kd", "baselines.student_steps=2", "baselines.zskt.attention_layers=[features]"]),
    ("zskt", ["baselines.variant=rslad", "baselines.student_steps=2"]),
    (
        "deepinversion",
        [
            "baselines.variant=kd",
            "generator.kind=implicit",
            "generator.pseudo_labels=sampled",
            "generator.implicit_bank_size=12",
            "baselines.deepinversion.lambda_adi=0.01",
        ],
    ),
    ("deepinversion", ["baselines.variant=rslad", "generator.kind=implicit", "generator.implicit_bank_size=12"]),
    ("cmi", ["baselines.variant=kd", "generator.pseudo_labels=sampled"]),
    ("cmi", ["baselines.variant=rslad", "baselines.cmi.bank_size=8", "baselines.cmi.n_neg=4"]),
    ("dfard", ["baselines.student_steps=2", "baselines.dfard.agb=ratio", "baselines.dfard.lambda_oh=1"]),
    ("dfhl_rs", ["baselines.student_steps=2"]),
    ("ferd", []),
    ("natural", ["baselines.augment=crop_flip"]),
    ("sat", []),
    ("trades", []),
    ("ard", ["baselines.ard.alpha=0.5"]),
    ("rslad", ["baselines.kl_scale=source"]),
    ("iad", ["baselines.iad.warmup=0.5"]),
    ("iad", ["baselines.iad.variant=I", "baselines.iad.warmup=0.0", "baselines.iad.a=0.8"]),
    ("mtard", []),
]


def _warm(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(8, 1, 28, 28, generator=g))
    return freeze(model)


def _models(cfg) -> Models:
    from derd_scale.derd.generator import build_generator

    torch.manual_seed(0)
    info = dataset_info("fashion_mnist")
    nat = _warm(create_model("small_cnn", 10, in_chans=1, width=4), 1)
    rob = _warm(create_model("small_cnn", 10, in_chans=1, width=4), 2)
    student = create_model("small_cnn", 10, in_chans=1, width=4)
    g = cfg.generator
    if reads_real_data(cfg.method):  # as trainer.build_models: a data-driven method has no generator
        return Models(nat, rob, student, None, info)
    if g.kind == "implicit":
        gen = build_generator("implicit", 28, 1, 10, pseudo_labels=g.pseudo_labels, bank_size=g.implicit_bank_size)
    else:
        gen = PseudoImageGenerator(28, 1, latent_dim=8, base_channels=4)
    return Models(nat, rob, student, gen, info)


@pytest.fixture
def fake_training_split(monkeypatch):
    """A tiny 'training split' in place of Fashion-MNIST for the data-driven methods."""
    g = torch.Generator().manual_seed(5)
    x = (torch.rand(40, 1, 28, 28, generator=g) * 255).to(torch.uint8)
    y = torch.randint(0, 10, (40,), generator=g)
    monkeypatch.setattr(trainer, "real_training_data", lambda cfg: (x, y))


@pytest.mark.parametrize("name,extra", CASES, ids=[f"{n}-{'-'.join(e)[:40]}" for n, e in CASES])
def test_a_few_steps_of_each_method_run_and_move_the_student(name, extra, fake_training_split):
    from accelerate import Accelerator

    cfg = config_from_dict({}, BASE + [f"method={name}"] + extra)
    models, par, scheds, _ = trainer.build_training(cfg, Accelerator(cpu=True), _models(cfg))
    before = {k: v.clone() for k, v in par.student.unwrapped.state_dict().items()}
    teachers = [p.clone() for t in (models.natural_teacher, models.robust_teacher) for p in t.parameters()]
    state = TrainState(stage="stage2")
    models.student.train()
    if models.generator is not None:
        models.generator.train()
    assert (models.generator is None) == (METHODS[name].data == "real")
    assert set(scheds) == ({"student"} if models.generator is None else {"student", "generator"})
    for step in range(2):
        state.step = step
        metrics = trainer.method_step(models, cfg, state, scheds, par)
        assert all(torch.isfinite(torch.as_tensor(float(v))) for v in metrics.values()), metrics
    after = par.student.unwrapped.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if after[k].is_floating_point())
    assert all(p.grad is None for p in par.student.unwrapped.parameters())  # stepped and zeroed
    now = [p for t in (models.natural_teacher, models.robust_teacher) for p in t.parameters()]
    assert all(torch.equal(a, b) and b.grad is None for a, b in zip(teachers, now))
    if METHODS[name].data == "free":
        assert "l_g" in metrics


def test_cmi_keeps_its_head_and_memory_bank_in_the_checkpointed_state(tmp_path):
    """Two steps of batch 6 fill 12 rows of an 8-row bank (it wraps), the head moves by Adam, and
    the state survives the checkpoint's torch.save / weights_only load."""
    from accelerate import Accelerator

    cfg = config_from_dict({}, BASE + ["method=cmi", "baselines.cmi.bank_size=8", "baselines.cmi.n_neg=4"])
    models, par, scheds, _ = trainer.build_training(cfg, Accelerator(cpu=True), _models(cfg))
    state = TrainState(stage="stage2")
    heads = []
    for step in range(2):
        state.step = step
        metrics = trainer.method_step(models, cfg, state, scheds, par)
        heads.append([p.clone() for p in state.method_state["cmi_head"]])
        assert metrics["l_cr"] > 0
    st = state.method_state
    assert st["cmi_bank_filled"] == 8 and st["cmi_bank_ptr"] == 12 % 8 and st["cmi_adam"]["t"] == 2
    assert st["cmi_bank"].abs().sum(1).gt(0).all()  # every row written
    assert any(not torch.equal(a, b) for a, b in zip(*heads))
    torch.save(st, tmp_path / "state.pt")
    back = torch.load(tmp_path / "state.pt", weights_only=True)
    assert torch.equal(back["cmi_bank"], st["cmi_bank"]) and back["cmi_adam"]["t"] == 2


def test_only_the_data_driven_methods_read_real_data():
    assert not reads_real_data("derd") and not reads_real_data("dfad") and not reads_real_data("cmi")
    assert reads_real_data("rslad") and reads_real_data("sat") and reads_real_data("mtard")
    with pytest.raises(ValueError, match="not a registered baseline"):
        reads_real_data("madry")


def test_every_registered_method_has_a_smoke_case():
    assert {n for n, _ in CASES} == set(METHODS)


def test_the_generator_step_leaves_no_gradient_on_the_student():
    from accelerate import Accelerator

    cfg = config_from_dict({}, BASE + ["method=dfad", "baselines.variant=kd"])
    models, par, scheds, _ = trainer.build_training(cfg, Accelerator(cpu=True), _models(cfg))
    method = METHODS["dfad"]
    ctx = trainer.method_context(models, cfg, TrainState(stage="stage2"), par)
    latents = trainer.sample_latents(models, cfg, "stage2", 0, 6, par)
    gen_before = [p.clone() for p in models.generator.parameters()]
    trainer._method_generator_update(models, method, ctx, latents, par, {})
    assert all(p.grad is None for p in par.student.unwrapped.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(gen_before, models.generator.parameters()))


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["method=dfad"], "stage1.enabled: method dfad has no Stage I"),
        (["method=deepinversion", "stage1.enabled=false"], "generator.kind: method deepinversion"),
        (["method=sat", "stage1.enabled=false", "baselines.student_steps=0"], "baselines.student_steps: must be > 0"),
        (["method=dfadd"], "method: invalid value 'dfadd'"),
        (["baselines.dfad.generator_loss=l2"], "baselines.dfad.generator_loss: invalid value 'l2'"),
    ],
)
def test_the_config_refuses_what_a_method_cannot_run(overrides, message):
    from derd_scale.config import ConfigError

    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        config_from_dict({}, overrides)
