"""Every distributed backend, 2 CPU processes (gloo), against the 1-process run of the same global batch.

    make test                       # includes these (marked slow)
    pytest -m slow tests/parallel   # just these, ~3-4 minutes on 2 cores

One launch per backend runs all scenarios of ``scenarios.py`` (Stage I, three full Stage-II
steps, natural term on G(z) + per-tensor GA + clipping, gradient accumulation, bf16);
DeepSpeed's launch runs them for ZeRO-1, -2 and -3. The 1-process references run here, in
the test process. Kill-and-resume goes through ``train()`` and ``launch/train.py`` under
ZeRO-2 (Accelerate) and FSDP2 (torchrun); the multi-node recipe runs two "nodes" on
localhost. Every launch has a timeout, so a hang fails instead of blocking CI.

Tolerance: parameters and buffers of student and generator agree within ``PARAM_TOL``
(2e-6 absolute; parameters are O(0.1-1), observed differences ≤ 2e-7 — fp32 round-off
from summing the two halves of the batch in another order; the rounding exceptions are named
below, SIGN_FLIP_TOL and FP16_ROUNDING_TOL); logged metrics within 1e-4 relative. bf16 runs
are checked for being bf16 (far from fp32) and for every 2-process layout agreeing with every
other.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import free_port, launch_failure

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scenarios import NOT_ON_DEEPSPEED, SCENARIOS, max_difference, run  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PARAM_TOL = 2e-6
# (layout, scenario) pairs whose two-process result may leave PARAM_TOL by one flipped sign: the
# second student update's inner maximisation takes sign(∇), and a ~0 gradient component can flip
# under FSDP2's reduce-scatter summation order. Measured: 3.5e-4 on one weight on a 2-core AMD
# EPYC (AVX-512; the next step's g2_norm then 1.4 % off; it fails there at the commits before too),
# within 2e-6 on the Xeon the scenario was written on. A slicing or reduction bug moves every weight
# by far more (the other scenarios and layouts keep PARAM_TOL).
# The same flip under DDP's all-reduce on a 2-core AMD EPYC with AVX2 only: 3.5e-4 (2026-12-07; the
# 1-process reference then runs in the test process on two threads).
SIGN_FLIP_TOL = {("fsdp", "stage2_student_steps"): 1e-3, ("ddp", "stage2_student_steps"): 1e-3}
# Scenarios whose result may leave PARAM_TOL by fp16 rounding: Stage I's replay bank stores G's images
# in fp16, and an image element whose fp32 value differs by round-off (a half batch through the conv
# kernels) can round to the neighbouring fp16 value, 2^-11 relative, which the replayed updates then
# train on. Measured on a 2-core AMD EPYC with AVX2 only: 6.6e-5 (stage1_replay) and 1.9e-5
# (stage1_augment_replay) on every layout, while the 1-process run with an fp32 bank moves by 1.1e-4
# from the fp16 one; replaying another step than the 1-process run (the bug this catches) moves the
# student by 5e-4 to 3e-3. Within PARAM_TOL on the Xeon the scenarios were written on.
FP16_ROUNDING_TOL = {"stage1_replay": 2e-4, "stage1_augment_replay": 2e-4}
FP32_SCENARIOS = [s for s in SCENARIOS if s != "bf16"]
LAYOUTS = ["ddp", "zero1", "zero2", "zero3", "fsdp"]

ENV = dict(
    os.environ,
    ACCELERATE_USE_CPU="true",  # docs/platform.md: without it `--multi_gpu` starts two unsynchronised processes
    DS_ACCELERATOR="cpu",
    OMP_NUM_THREADS="1",
    # DeepSpeed JIT-compiles a comm op on first use (~60-90 s): keep it with the venv, build once.
    TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR", str(BIN.parent / "torch_extensions")),
    PYTHONWARNINGS="ignore::FutureWarning",
    PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
)


def _tool(name: str) -> str:
    return shutil.which(name, path=str(BIN)) or shutil.which(name)


def _accelerate(config: str) -> list[str]:
    return [
        _tool("accelerate"),
        "launch",
        "--config_file",
        str(REPO / "configs/accelerate/cpu" / config),
        "--main_process_port",
        free_port(),
    ]


# DeepSpeed through Accelerate on CPU: ACCELERATE_USE_CPU would make Accelerate drop DeepSpeed.
DS_ENV = {k: v for k, v in ENV.items() if k != "ACCELERATE_USE_CPU"}


def _torchrun() -> list[str]:
    return [_tool("torchrun"), "--standalone", "--nproc_per_node", "2"]


def _launch(cmd: list[str], timeout: float, fail: bool = False, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a launcher; ``fail=True`` when the job is meant to exit non-zero (simulated kill)."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or ENV, cwd=REPO)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"launch hung for {timeout}s: {' '.join(cmd)}\n{(err.stderr or b'')[-3000:]!r}")
    assert (out.returncode != 0) == fail, f"{out.stdout[-2000:]}\n{launch_failure(out)}"
    assert "terminate called" not in out.stderr, out.stderr[-2000:]
    return out


# --------------------------------------------------------------------------------------
# One worker launch per backend (module-scoped: several tests read the same results)
# --------------------------------------------------------------------------------------

_WORKER = {
    "ddp": lambda: _accelerate("ddp.yaml"),
    "deepspeed": lambda: _accelerate("deepspeed_zero3.yaml"),
    "fsdp": _torchrun,
}


@pytest.fixture(scope="module")
def two_process(tmp_path_factory):
    cache: dict = {}

    def get(backend: str) -> dict:
        if backend not in cache:
            out = tmp_path_factory.mktemp(backend)
            _launch(
                _WORKER[backend]() + [str(REPO / "tests/parallel/worker.py"), "--backend", backend, "--out", str(out)],
                timeout=900,
                env=DS_ENV if backend == "deepspeed" else ENV,
            )
            cache[backend] = torch.load(out / f"{backend}.pt", weights_only=False)
            assert cache[backend]["world_size"] == 2
        return cache[backend]

    return get


@pytest.fixture(scope="module")
def one_process():
    cache: dict = {}

    def get(name: str) -> dict:
        if name not in cache:
            from accelerate import Accelerator
            from accelerate.state import AcceleratorState

            AcceleratorState._reset_state(reset_partial_state=True)
            cache[name] = run(name, "none", Accelerator(cpu=True))
        return cache[name]

    return get


def _result(two_process, layout: str, name: str) -> dict:
    if layout.startswith("zero"):
        return two_process("deepspeed")[f"{name}@{layout}"]
    return two_process(layout)[name]


def _assert_metrics_close(got: list[dict], want: list[dict], rel: float = 1e-4) -> None:
    assert len(got) == len(want)
    for step, (g, w) in enumerate(zip(got, want)):
        for k in w:
            if k in ("step_seconds",):
                continue
            assert g[k] == pytest.approx(w[k], rel=rel, abs=1e-6), (step, k, g[k], w[k])


# --------------------------------------------------------------------------------------
# Equivalence
# --------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_two_processes_equal_one_process(layout, two_process, one_process):
    for name in FP32_SCENARIOS:
        got = _result(two_process, layout, name)
        if layout.startswith("zero") and name in NOT_ON_DEEPSPEED:
            assert got["refused"] and "stage2.student_steps" in got["refused"], got
            continue
        want = one_process(name)
        assert got["world_size"] == 2 and got["backend"] == ("deepspeed" if layout.startswith("zero") else layout)
        tol = SIGN_FLIP_TOL.get((layout, name), FP16_ROUNDING_TOL.get(name, PARAM_TOL))
        for part in ("student", "generator"):
            diff, where = max_difference(got[part], want[part])
            assert diff <= tol, f"{layout}/{name}: {part} differs by {diff:.3g} at {where}"
        _assert_metrics_close(got["metrics"], want["metrics"], rel=1e-4 if tol == PARAM_TOL else 5e-2)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["zero1", "zero2", "zero3", "fsdp"])
def test_sharded_layouts_really_shard_the_tiny_student(layout, two_process):
    lay = _result(two_process, layout, "stage2")["layout"]
    if layout == "zero3":  # persistence threshold 0: every parameter partitioned, released outside forward
        assert lay["params_partitioned"] == lay["total"] == lay["params_released"]
    elif layout == "fsdp":
        assert lay["params_partitioned"] == lay["total"]
    else:  # ZeRO-1/2: this rank owns only part of the gradients and optimiser state
        assert 0 < lay["grad_and_optimizer_partitioned"] <= lay["total"]


@pytest.mark.slow
def test_bf16_step_runs_on_every_backend_and_is_the_same_autocast_everywhere(two_process, one_process):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    fp32_twin = run("bf16", "none", Accelerator(cpu=True), extra=["distributed.mixed_precision=no"])
    bf16_one = one_process("bf16")
    students = {}
    for layout in LAYOUTS:
        got = _result(two_process, layout, "bf16")
        s = got["student"]
        assert all(torch.isfinite(v).all() for v in s.values() if v.is_floating_point())
        assert all(v.dtype != torch.bfloat16 for v in s.values()), "master weights stay fp32 under autocast"
        # bf16 really ran (DeepSpeed's engine would silently switch an outer autocast off without its
        # torch_autocast section): far from the fp32 run of the same steps, near the 1-process bf16 run.
        assert max_difference(s, fp32_twin["student"])[0] > 1e-4, layout
        assert max_difference(s, bf16_one["student"])[0] < 2e-2, layout
        students[layout] = s
    # Every 2-process layout does the same bf16 arithmetic. Not bit-equal: the layouts reduce the fp32
    # gradients in other orders, and a weight whose fp32 value differs by that round-off can round to
    # the neighbouring bf16 value at the next step's cast (measured 2.4e-5, ZeRO-1 against DDP, on a
    # 2-core AMD EPYC with AVX2 only — bf16 emulated there; below 1e-5 on the AMX Xeon).
    for layout in LAYOUTS[1:]:
        assert max_difference(students[layout], students["ddp"])[0] < 1e-4, layout


# --------------------------------------------------------------------------------------
# Silent traps (docs/platform.md)
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_unreduced_second_backward_is_caught_and_the_adapter_is_not(two_process):
    # One forward, backward(l1, retain_graph) + backward(l2) under DDP: the second is never reduced.
    assert two_process("ddp")["silent_trap"] == {"two_backward": "diverged", "adapter": "in_sync"}


@pytest.mark.slow
def test_a_launch_that_starts_one_process_is_refused(tmp_path):
    # docs/platform.md: `--cpu --num_processes 2` starts ONE process. The worker asserts a world of 2.
    cmd = [
        _tool("accelerate"),
        "launch",
        "--cpu",
        "--num_processes",
        "2",
        "--main_process_port",
        free_port(),
        str(REPO / "tests/parallel/worker.py"),
        "--backend",
        "ddp",
        "--out",
        str(tmp_path),
        "--scenarios",
        "stage1",
    ]
    out = _launch(cmd, timeout=300, fail=True)
    assert "WORLD_SIZE_WRONG 1" in out.stdout


# --------------------------------------------------------------------------------------
# Kill-and-resume through train() and the real entry point
# --------------------------------------------------------------------------------------

TINY = [
    "data.name=fashion_mnist",
    "data.source=parquet",
    f"data.path={REPO.parent / 'shared' / 'data'}",
    "teachers.natural.arch=small_cnn",
    "teachers.natural.kwargs={width: 4}",
    "teachers.robust.arch=small_cnn",
    "teachers.robust.kwargs={width: 4}",
    "student.arch=small_cnn",
    "student.kwargs={width: 4}",
    "generator.latent_dim=16",
    "generator.base_channels=4",
    "stage1.steps=2",
    "stage1.batch_size=8",
    "stage2.steps=4",
    "stage2.batch_size=8",
    "stage2.sa.steps=2",
    "output.checkpoint_every=2",
    "logging.every_steps=1",
    "logging.progress_bar=false",
    # the probe and final evaluation run on a gathered copy under sharded backends
    "eval.probe_attacks=[clean]",
    "eval.probe_examples=32",
    "eval.attacks=[clean, fgsm]",
    "eval.n_examples=32",
    "eval.masking_check=false",
]


def _sets(items: list[str]) -> list[str]:
    return [a for item in items for a in ("--set", item)]


def _student(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run / "student" / "model.safetensors")


def _metrics(run: Path) -> list[dict]:
    drop = {"time", "step_seconds", "samples_per_s", "samples_per_s_per_rank"}
    return [
        {k: v for k, v in json.loads(line).items() if k not in drop}
        for line in (run / "metrics.jsonl").read_text().splitlines()
    ]


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["zero2", "fsdp"])
def test_kill_and_resume_equals_uninterrupted(layout, tmp_path, shared_data):
    extra = ["distributed.backend=fsdp"] if layout == "fsdp" else []
    launcher = (lambda: _accelerate("deepspeed_zero2.yaml")) if layout == "zero2" else _torchrun
    # 1) `full` runs to the end; `killed` hard-exits (17) right after the stage2:2 checkpoint.
    env = DS_ENV if layout == "zero2" else ENV
    _launch(
        launcher()
        + [str(REPO / "tests/parallel/train_twice.py"), str(tmp_path), "--preempt", "stage2:2"]
        + _sets(TINY + extra),
        timeout=600,
        fail=True,
        env=env,
    )
    assert not (tmp_path / "killed" / "DONE").exists()
    shards = sorted(p.name for p in (tmp_path / "killed" / "checkpoints" / "stage2-00000002" / "student").iterdir())
    assert shards == (
        [
            "mp_rank_00_model_states.pt",
            "zero_pp_rank_0_mp_rank_00_optim_states.pt",
            "zero_pp_rank_1_mp_rank_00_optim_states.pt",
        ]
        if layout == "zero2"
        else [".metadata", "__0_0.distcp", "__1_0.distcp"]
    )
    # 2) resume `killed` with the ordinary entry point.
    out = _launch(
        launcher()
        + [str(REPO / "launch/train.py")]
        + _sets(TINY + extra + [f"output.root={tmp_path}", "output.name=killed"]),
        timeout=600,
        env=env,
    )
    assert "resumed from" in out.stdout + out.stderr
    full, killed = (json.loads((tmp_path / n / "DONE").read_text()) for n in ("full", "killed"))
    assert full["backend"] == killed["backend"] == ("deepspeed" if layout == "zero2" else "fsdp")
    assert full["world_size"] == killed["world_size"] == 2
    a, b = _student(tmp_path / "full"), _student(tmp_path / "killed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), (
        "resumed student differs from the uninterrupted one"
    )
    assert full["student_digest"] == killed["student_digest"] and full["eval"] == killed["eval"]
    assert _metrics(tmp_path / "full")[-2:] == _metrics(tmp_path / "killed")[-2:]


# --------------------------------------------------------------------------------------
# Multi-node recipe: launch/slurm/node_launch.sh on two "nodes" of this machine
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_node_deepspeed_job_through_the_slurm_node_script(tmp_path):
    port = free_port()
    items = [i for i in TINY if not i.startswith(("eval.", "data.source", "data.path"))] + [
        "eval.final=false",
        "eval.probe_attacks=[]",
        "stage2.steps=2",
        f"output.root={tmp_path}",
        "output.name=two_nodes",
    ]
    procs = []
    for node in (0, 1):
        env = dict(
            DS_ENV,
            SLURM_NNODES="2",
            SLURM_NODEID=str(node),
            GPUS_PER_NODE="1",
            MAIN_PROCESS_IP="127.0.0.1",
            MAIN_PROCESS_PORT=port,
            ACCELERATE_CONFIG="configs/accelerate/cpu/multinode_deepspeed.yaml",
        )
        procs.append(
            subprocess.Popen(
                [str(REPO / "launch/slurm/node_launch.sh")] + _sets(items),
                env=env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        outs = [p.communicate(timeout=600) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("two-node launch hung")
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    done = json.loads((tmp_path / "two_nodes" / "DONE").read_text())
    assert done["world_size"] == 2 and done["backend"] == "deepspeed"
