"""derd/replay.py: Stage I's replay bank (ring buffer of steps, the draw, per-rank files) and a
run with it (the student update on the current and an earlier batch; exact resume)."""

import pytest
import torch
from conftest import assert_same_student, interrupted_run, train_tiny

from derd_scale.derd.replay import ReplayBank
from derd_scale.errors import ResumeError


def _batch(value: float):
    return [torch.full((2, 1, 2, 2), value)], [torch.full((2, 3), value)]


def test_bank_keeps_the_last_steps_and_draws_the_same_step_for_the_same_seed_and_step():
    bank = ReplayBank(2)
    assert bank.draw(seed=0, step=0) is None  # empty: nothing to replay
    for step in range(3):
        bank.add(step, *_batch(step / 4))
    assert bank.steps == [1, 2] and len(bank) == 2  # step 0 left when step 2 came in
    draws = {float(bank.draw(seed=5, step=t)[0][0].flatten()[0]) for t in range(40)}
    assert draws == {0.25, 0.5}  # both stored steps are drawn, never the evicted one
    again = bank.draw(seed=5, step=7)
    assert torch.equal(again[0][0], bank.draw(seed=5, step=7)[0][0])  # a pure function of (seed, step)
    images, logits = again[0]
    assert images.dtype == torch.float32 and logits.dtype == torch.float32


def test_bank_round_trips_per_rank_and_names_a_missing_file(tmp_path):
    bank = ReplayBank(3)
    bank.add(4, *_batch(0.5))
    bank.save(tmp_path, rank=1)
    back = ReplayBank(3)
    back.load(tmp_path, rank=1, device=torch.device("cpu"))
    assert back.steps == [4]
    assert torch.equal(back.entries[0][0][0], bank.entries[0][0][0])
    with pytest.raises(ResumeError, match="replay-rank0.pt: missing"):
        ReplayBank(3).load(tmp_path, rank=0, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="stage1.replay_steps"):
        ReplayBank(0)


def test_the_student_distils_the_current_and_an_earlier_batch():
    """Stage-I step 1 with a bank holding step 0: one SGD step on KD over [G(z)_1; G(z)_0]."""
    import copy

    from accelerate import Accelerator

    from derd_scale.config import config_from_dict
    from derd_scale.data import dataset_info
    from derd_scale.derd.generator import PseudoImageGenerator
    from derd_scale.derd.losses import kd_kl
    from derd_scale.models import create_model, freeze
    from derd_scale.state import Models
    from derd_scale.trainer import build_training, stage1_step

    cfg = config_from_dict(
        {"data": {"name": "fashion_mnist"}},
        [
            "stage1.batch_size=4",
            "stage1.replay_steps=4",
            "optim.student.lr=0.1",
            "optim.student.momentum=0",
            "optim.student.weight_decay=0",
            "optim.student.schedule=constant",
            "distributed.channels_last=false",
        ],
    )
    torch.manual_seed(0)
    teacher = freeze(create_model("small_cnn", 10, in_chans=1, width=4))
    student = create_model("small_cnn", 10, in_chans=1, width=4)
    gen = PseudoImageGenerator(28, 1, latent_dim=16, base_channels=4)
    models, par, scheds, _ = build_training(
        cfg, Accelerator(cpu=True), Models(teacher, teacher, student, gen, dataset_info("fashion_mnist"))
    )
    bank = ReplayBank(4)
    old_x = torch.rand(4, 1, 28, 28).half().float()  # what the bank stores (fp16 pixels)
    old_t = torch.randn(4, 10)
    bank.add(0, [old_x], [old_t])
    before = copy.deepcopy(models.student)
    gen_before = copy.deepcopy(models.generator)
    stage1_step(models, cfg, 1, scheds, par, bank)
    assert bank.steps == [0, 1]  # step 1 joined after the draw
    current = gen_before(*gen_before.sample(4, _noise(cfg, 1))).detach()  # G(z) before G's update
    new_x, new_t = bank.entries[1][0]
    assert torch.allclose(new_x.float(), current, atol=1e-3)  # stored in fp16
    x, t = torch.cat([current, old_x]), torch.cat([teacher(current), old_t])  # the live batch is not rounded
    loss = kd_kl(t, before(x))
    grads = torch.autograd.grad(loss, list(before.parameters()))
    for (name, got), p, g in zip(models.student.named_parameters(), before.parameters(), grads):
        assert torch.allclose(got, p - 0.1 * g, atol=2e-5), name


def _noise(cfg, step):
    from derd_scale.trainer import step_noise

    return step_noise(cfg.seed, "stage1", step)


def test_a_resumed_run_replays_as_an_uninterrupted_one(tmp_path, monkeypatch):
    straight = train_tiny(tmp_path, "stage1.replay_steps=2", name="straight")
    run_path = interrupted_run(tmp_path, monkeypatch, "stage1:3", "stage1.replay_steps=2")  # resumes from step 2
    assert (run_path / "checkpoints" / "stage1-00000002" / "replay-rank0.pt").exists()
    train_tiny(tmp_path, "stage1.replay_steps=2")
    assert_same_student(straight.path, run_path)


# --------------------------------------------------------------------------------------
# Stage II's bank (stage2.replay_steps)
# --------------------------------------------------------------------------------------

REPLAY2 = ["preset=derd_recommended", "stage2.replay_steps=2", "stage2.adv.steps=2"]


def test_stage2_bank_has_its_own_file_setting_and_draw_stream(tmp_path):
    from conftest import tiny_config

    from derd_scale.derd.replay import replay_noise
    from derd_scale.trainer import stage2_bank

    bank = stage2_bank(tiny_config(tmp_path, *REPLAY2))
    assert bank.capacity == 2 and bank.file(tmp_path, 3).name == "replay2-rank3.pt"
    with pytest.raises(ResumeError, match="replay2-rank0.pt: missing \\(stage2.replay_steps > 0"):
        bank.load(tmp_path, rank=0, device=torch.device("cpu"))
    assert stage2_bank(tiny_config(tmp_path)) is None
    # stream 1 draws differently from Stage I's stream 0 at the same (seed, step, update)
    a = [int(torch.randint(10**6, (1,), generator=replay_noise(0, t, 0, 0))) for t in range(5)]
    b = [int(torch.randint(10**6, (1,), generator=replay_noise(0, t, 0, 1))) for t in range(5)]
    assert a != b


def _stage2_models(cfg):
    from accelerate import Accelerator
    from conftest import tiny_models

    from derd_scale.trainer import build_training

    return build_training(cfg, Accelerator(cpu=True), tiny_models())


def test_stage2_steps_store_anchors_with_both_experts_logits_and_replay_from_the_second_step(tmp_path):
    """Step 0 (empty bank) updates the student exactly as without a bank; step 1 learns from
    [current; step 0's anchors] and so differs; the bank holds each step's anchors (fp32) with
    [T_nat | T_rob] logits (2C columns) and keeps the last stage2.replay_steps steps."""
    import copy

    from conftest import tiny_config

    from derd_scale.state import TrainState
    from derd_scale.trainer import stage2_bank, stage2_step

    cfg = tiny_config(tmp_path, *REPLAY2, "distributed.channels_last=false")
    plain = tiny_config(tmp_path, *REPLAY2[:1], "stage2.adv.steps=2", "distributed.channels_last=false")

    def run(cfg, steps, bank):
        models, par, scheds, _ = _stage2_models(cfg)
        state = TrainState(stage="stage2", replay2=bank)
        for t in range(steps):
            state.step = t
            stage2_step(models, cfg, state, scheds, par)
        return copy.deepcopy(models.student.state_dict())

    bank = stage2_bank(cfg)
    one = run(cfg, 1, bank)
    assert bank.steps == [0]
    images, logits = bank.entries[0][0]
    assert images.dtype == torch.float32 and images.shape == (8, 1, 28, 28) and logits.shape == (8, 20)
    assert all(torch.equal(one[k], v) for k, v in run(plain, 1, None).items())  # nothing to replay at step 0

    bank = stage2_bank(cfg)
    three = run(cfg, 3, bank)
    assert bank.steps == [1, 2]  # capacity 2: step 0 left
    without = run(plain, 3, None)
    assert any(not torch.equal(three[k], v) for k, v in without.items() if v.is_floating_point())


def test_a_resumed_stage2_run_replays_as_an_uninterrupted_one(tmp_path, monkeypatch):
    straight = train_tiny(tmp_path, *REPLAY2, name="straight")
    run_path = interrupted_run(tmp_path, monkeypatch, "stage2:3", *REPLAY2)  # resumes from stage2 step 2
    assert (run_path / "checkpoints" / "stage2-00000002" / "replay2-rank0.pt").exists()
    assert not (run_path / "checkpoints" / "stage1-00000002" / "replay2-rank0.pt").exists()
    train_tiny(tmp_path, *REPLAY2)
    assert_same_student(straight.path, run_path)
