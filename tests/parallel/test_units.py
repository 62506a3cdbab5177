"""Fast, one-process checks of the distribution layer (the 2-process twins are in test_parallel.py)."""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

from derd_scale.config import ConfigError, DistributedConfig, config_from_dict
from derd_scale.distributed import check_launch, place_frozen, resolve_backend
from derd_scale.parallel.batchnorm import GlobalBatchNorm, convert_batchnorm
from derd_scale.parallel.zero import engine_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def one_rank_group():
    """A real (gloo, world of 1) process group, so GlobalBatchNorm takes its collective path."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 6 * 6, 4),
        nn.BatchNorm1d(4, momentum=None),
    )


def test_convert_batchnorm_keeps_keys_and_shares_tensors():
    net = _bn_net()
    keys = list(net.state_dict())
    weight = net[1].weight
    convert_batchnorm(net)
    assert isinstance(net[1], GlobalBatchNorm) and isinstance(net[5], GlobalBatchNorm)
    assert list(net.state_dict()) == keys and net[1].weight is weight


def test_global_batchnorm_matches_batchnorm_in_forward_backward_and_running_stats(one_rank_group):
    ref, glob = _bn_net(), convert_batchnorm(_bn_net())
    x = torch.randn(5, 2, 8, 8) * 3 + 1
    r = torch.randn(5, 4)  # a generic loss (Σ y² of a BN output would have a zero true gradient)
    for _ in range(2):  # second pass: shifted by non-trivial running means; momentum=None (cumulative) too
        out_r, out_g = ref(x), glob(x)
        torch.testing.assert_close(out_g, out_r, rtol=1e-5, atol=1e-5)
        gr = torch.autograd.grad((out_r * r).sum(), list(ref.parameters()))
        gg = torch.autograd.grad((out_g * r).sum(), list(glob.parameters()))
        for a, b in zip(gr, gg):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    for (n, a), (_, b) in zip(ref.state_dict().items(), glob.state_dict().items()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=n)
    ref.eval(), glob.eval()
    torch.testing.assert_close(glob(x), ref(x))


def test_a_deep_copy_of_global_batchnorm_shares_the_process_group_and_copies_the_tensors(one_rank_group):
    group = dist.new_group()
    net = convert_batchnorm(_bn_net(), group)
    twin = copy.deepcopy(net)  # EMA and student snapshots deep-copy the converted student
    assert twin[1].group is group and isinstance(twin[1], GlobalBatchNorm)
    assert twin[1].weight is not net[1].weight and torch.equal(twin[1].weight, net[1].weight)
    assert twin[1].running_mean is not net[1].running_mean
    x = torch.randn(5, 2, 8, 8)
    torch.testing.assert_close(twin(x), net(x))  # the copy still normalises over the group


def test_global_batchnorm_without_a_process_group_is_plain_batchnorm():
    ref, glob = _bn_net(), convert_batchnorm(_bn_net())
    x = torch.randn(4, 2, 8, 8)
    assert torch.equal(ref(x), glob(x))


def test_frozen_teacher_in_bf16_gives_bit_identical_outputs_under_autocast():
    from derd_scale.models import create_model

    torch.manual_seed(0)
    teacher = create_model("small_cnn", 10, in_chans=1, width=4)
    half = place_frozen(copy.deepcopy(teacher), torch.device("cpu"), bf16_weights=True)
    place_frozen(teacher, torch.device("cpu"), bf16_weights=False)
    assert half.model.fc1.weight.dtype == torch.bfloat16
    assert half.model.features[1].running_var.dtype == torch.float32  # L_BN's targets stay fp32
    x = torch.rand(3, 1, 28, 28, requires_grad=True)
    with torch.autocast("cpu", torch.bfloat16):
        a, b = teacher(x), half(x)
        (ga,) = torch.autograd.grad(a.float().sum(), x)
        (gb,) = torch.autograd.grad(b.float().sum(), x)
    assert torch.equal(a, b) and torch.equal(ga, gb)
    assert all(not p.requires_grad for p in half.parameters()) and not half.training


def test_deepspeed_engine_config_is_filled_and_guards_exactness():
    base = {
        "zero_optimization": {"stage": 2, "reduce_bucket_size": "auto"},
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
    }
    conf = engine_config(base, micro_batch=4, world_size=2, grad_clip=1.0, bf16=True)
    assert (
        conf["train_batch_size"] == 8 and conf["gradient_accumulation_steps"] == 1 and conf["gradient_clipping"] == 1.0
    )
    assert conf["torch_autocast"] == {
        "enabled": True,
        "dtype": "bfloat16",
        "lower_precision_safe_modules": [],
    }  # fp32 comms
    assert "reduce_bucket_size" not in conf["zero_optimization"]
    for bad, match in (
        ({"bf16": {"enabled": True}}, "torch autocast"),
        ({"optimizer": {"type": "Adam"}}, "optimiser"),
        ({"gradient_accumulation_steps": 4}, "gradient_accumulation_steps"),
    ):
        with pytest.raises(ValueError, match=match):
            engine_config({**base, **bad}, micro_batch=4, world_size=2, grad_clip=None, bf16=False)


def test_the_shipped_deepspeed_and_accelerate_configs_are_accepted():
    import json

    import yaml

    for stage in (1, 2, 3):
        conf = engine_config(
            json.loads((REPO / f"configs/deepspeed/zero{stage}.json").read_text()),
            micro_batch=1,
            world_size=8,
            grad_clip=None,
            bf16=False,
        )
        assert conf["zero_optimization"]["stage"] == stage
    assert (
        json.loads((REPO / "configs/deepspeed/zero3_partition_all.json").read_text())["zero_optimization"][
            "stage3_param_persistence_threshold"
        ]
        == 0
    )
    for path in sorted((REPO / "configs/accelerate").rglob("*.yaml")):
        conf = yaml.safe_load(path.read_text())
        assert not conf.get("use_cpu"), f"{path}: use_cpu starts one process (docs/platform.md)"
        if conf["distributed_type"] == "DEEPSPEED":
            assert (REPO / conf["deepspeed_config"]["deepspeed_config_file"]).exists()
            assert "mixed_precision" not in conf, (
                f"{path}: Accelerate refuses mixed_precision next to deepspeed_config_file"
            )
    multi = yaml.safe_load((REPO / "configs/accelerate/multinode_deepspeed.yaml").read_text())
    assert multi["deepspeed_config"]["deepspeed_multinode_launcher"] == "standard" and multi["num_machines"] > 1


def test_launch_traps_are_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # `--multi_gpu` without ACCELERATE_USE_CPU: two lone processes
    with pytest.raises(RuntimeError, match="not synchronised"):
        check_launch(DistributedConfig())
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(RuntimeError, match="expected_world_size=2"):  # `--cpu --num_processes 2` starts one
        check_launch(DistributedConfig(expected_world_size=2))
    assert check_launch(DistributedConfig(expected_world_size=1)) == 1


def test_backend_resolution(monkeypatch):
    from accelerate.utils import DistributedType

    class Fake:
        distributed_type = DistributedType.NO

    assert resolve_backend(DistributedConfig(), Fake()) == "none"
    assert resolve_backend(DistributedConfig(backend="ddp"), Fake()) == "none"  # one process: nothing to wrap
    assert resolve_backend(DistributedConfig(backend="fsdp"), Fake()) == "fsdp"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # Accelerate's FSDP on CPU silently becomes something else
    with pytest.raises(RuntimeError, match="torchrun"):
        resolve_backend(DistributedConfig(), Fake())


def test_config_fields_are_validated():
    with pytest.raises(ConfigError, match="gradient_accumulation_steps=3"):
        config_from_dict({}, ["distributed.gradient_accumulation_steps=3", "stage2.batch_size=8"])
    with pytest.raises(ConfigError, match="expected_world_size"):
        config_from_dict({}, ["distributed.expected_world_size=0"])
    assert config_from_dict({}, ["distributed.fsdp_min_params=1000"]).distributed.fsdp_min_params == 1000


def test_slurm_node_script_sets_machine_rank_world_and_rendezvous():
    env = dict(
        os.environ,
        SLURM_NNODES="4",
        SLURM_PROCID="2",
        GPUS_PER_NODE="8",
        MAIN_PROCESS_IP="node-a",
        MAIN_PROCESS_PORT="29555",
        DERD_DRY_RUN="1",
    )
    env.pop("SLURM_NODEID", None)
    out = subprocess.run(
        [str(REPO / "launch/slurm/node_launch.sh"), "--config", "configs/imnet100_vit.yaml"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    for part in (
        "--num_machines 4",
        "--num_processes 32",
        "--machine_rank 2",
        "--main_process_ip node-a",
        "--main_process_port 29555",
        "configs/accelerate/multinode_deepspeed.yaml",
        "launch/train.py --config configs/imnet100_vit.yaml",
        "distributed.expected_world_size=32",
    ):
        assert part in out, (part, out)
    sbatch = (REPO / "launch/slurm/train_multinode.sbatch").read_text()
    assert "--ntasks-per-node=1" in sbatch and "scontrol show hostnames" in sbatch and "node_launch.sh" in sbatch
