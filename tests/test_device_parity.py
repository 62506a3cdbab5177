"""One recommended Stage-II step on another device or precision against the CPU fp32 step.

The CUDA tests run only where a GPU is present (``bench/gpu_check.sh`` runs this file on the
lent GPU machine); the CPU bf16 twin runs everywhere and checks the same comparison, so the
tolerances below are exercised in CI too.

Compared: the student's parameter update Δθ of one full Stage-II step (G update, SA, the
student's inner maximisation, EG, GA + SGA, SGD step) from identical weights and noise.
fp32 on another device: Δθ equal up to float reassociation. bf16 autocast: the sign steps of
SA and the inner maximisation may flip where a gradient entry is ~0, so Δθ is compared by
direction (cosine) and size (norm ratio) rather than elementwise.
"""

import copy

import pytest
import torch
from conftest import tiny_models

from derd_scale.config import config_from_dict
from derd_scale.distributed import native_bf16
from derd_scale.state import Models, TrainState
from derd_scale.trainer import build_training, stage1_step, stage2_step

CUDA = torch.cuda.is_available()


def _models() -> Models:
    return tiny_models(base_channels=8)


def _update(models: Models, device: str, precision: str, compile_mode: str = "none") -> torch.Tensor:
    """Δθ of the student after one Stage-II step of the recommended preset."""
    from accelerate import Accelerator

    cfg = config_from_dict(
        {"data": {"name": "fashion_mnist"}},
        [
            "preset=derd_recommended",
            "seed=1",
            "stage2.batch_size=32",
            "stage2.sa.steps=2",
            "stage2.adv.steps=2",
            "optim.student.lr=0.1",
            "optim.student.schedule=constant",
            f"distributed.mixed_precision={'bf16' if precision == 'bf16' else 'no'}",
            "distributed.channels_last=false",
            f"distributed.compile={compile_mode}",
        ],
    )
    models = copy.deepcopy(models)
    before = torch.cat([p.detach().reshape(-1).clone() for p in models.student.parameters()])
    models, par, scheds, _ = build_training(cfg, Accelerator(cpu=device == "cpu"), models)
    stage2_step(models, cfg, TrainState(stage="stage2"), scheds, par)
    after = torch.cat([p.detach().reshape(-1).float().cpu() for p in par.student.unwrapped.parameters()])
    return after - before


def _assert_same_direction(delta: torch.Tensor, reference: torch.Tensor, min_cos: float, max_norm_ratio: float):
    cos = torch.nn.functional.cosine_similarity(delta, reference, dim=0).item()
    ratio = (delta.norm() / reference.norm()).item()
    assert cos >= min_cos, f"update direction differs: cos {cos:.4f} < {min_cos}"
    assert 1 / max_norm_ratio <= ratio <= max_norm_ratio, f"update size differs: ratio {ratio:.3f}"


@pytest.fixture(scope="module")
def cpu_reference():
    models = _models()
    return models, _update(models, "cpu", "fp32")


def test_cpu_fp32_step_is_deterministic(cpu_reference):
    models, reference = cpu_reference
    assert reference.abs().sum() > 0
    assert torch.equal(_update(models, "cpu", "fp32"), reference)


@pytest.mark.skipif(not native_bf16(torch.device("cpu")), reason="CPU without native bf16 (AMX/AVX512-BF16)")
def test_cpu_bf16_step_follows_fp32(cpu_reference):
    models, reference = cpu_reference
    _assert_same_direction(_update(models, "cpu", "bf16"), reference, min_cos=0.9, max_norm_ratio=1.25)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (bench/gpu_check.sh)")
def test_cuda_fp32_step_matches_cpu(cpu_reference):
    models, reference = cpu_reference
    # cuDNN/cuBLAS reassociate sums (and TF32 is off for fp32 by default in torch): allow rounding.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    _assert_same_direction(_update(models, "cuda", "fp32"), reference, min_cos=0.999, max_norm_ratio=1.01)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (bench/gpu_check.sh)")
def test_cuda_bf16_step_follows_cpu_fp32(cpu_reference):
    models, reference = cpu_reference
    _assert_same_direction(_update(models, "cuda", "bf16"), reference, min_cos=0.9, max_norm_ratio=1.25)


def test_compiled_step_follows_eager(cpu_reference, monkeypatch):
    """distributed.compile: the step with every model traced by dynamo and AOTAutograd — SA's and
    the inner maximisation's input gradients through compiled teachers and student included —
    against the eager step. The aot_eager backend runs the graphs inductor would receive without
    its C++ build (minutes on this CPU); inductor itself is checked on CUDA below."""
    import torch._dynamo

    models, reference = cpu_reference
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compile_(fn, backend="aot_eager"))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    delta = _update(models, "cpu", "fp32", compile_mode="default")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 4  # 2 teachers, student, generator
    # Decompositions may round differently: a sign step can flip where a gradient entry is ~0.
    _assert_same_direction(delta, reference, min_cos=0.99, max_norm_ratio=1.02)
    torch._dynamo.reset()


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (bench/gpu_check.sh)")
@pytest.mark.parametrize("mode", ["default", "max-autotune-no-cudagraphs"])
def test_cuda_compiled_bf16_step_follows_cpu_fp32(cpu_reference, mode):
    import torch._dynamo

    models, reference = cpu_reference
    torch._dynamo.reset()
    delta = _update(models, "cuda", "bf16", compile_mode=mode)
    _assert_same_direction(delta, reference, min_cos=0.9, max_norm_ratio=1.25)
    torch._dynamo.reset()


def test_compiled_stage1_step_keeps_the_bn_prior(monkeypatch):
    """Stage I under distributed.compile: L_BN's forward hooks (registered per step, after the
    teacher was compiled) are traced into the compiled teacher, so L_BN and the step equal the
    eager ones (aot_eager backend, as above)."""
    import torch._dynamo
    from accelerate import Accelerator

    def step(compile_mode: str) -> tuple[dict, torch.Tensor]:
        cfg = config_from_dict(
            {"data": {"name": "fashion_mnist"}},
            [
                "seed=1",
                "stage1.batch_size=16",
                "distributed.channels_last=false",
                f"distributed.compile={compile_mode}",
            ],
        )
        models, par, scheds, _ = build_training(cfg, Accelerator(cpu=True), _models())
        metrics = stage1_step(models, cfg, 0, scheds, par)
        return metrics, torch.cat([p.detach().reshape(-1) for p in par.generator.unwrapped.parameters()])

    eager_metrics, eager_g = step("none")
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: compile_(fn, backend="aot_eager"))
    torch._dynamo.reset()
    metrics, g = step("default")
    torch._dynamo.reset()
    assert eager_metrics["l_bn"] > 0
    assert float(metrics["l_bn"]) == pytest.approx(float(eager_metrics["l_bn"]), rel=1e-4)
    assert torch.allclose(g, eager_g, atol=1e-5, rtol=1e-4)
