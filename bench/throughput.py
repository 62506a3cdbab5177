"""How close each DERD step runs to this machine's limit: FLOPs, time and memory per stage and part.

    python bench/throughput.py                                   # every recipe, 1 and 2 threads, fp32 and bf16
    python bench/throughput.py --recipes cifar10 --threads 1 --precisions fp32 --steps 5
    python bench/throughput.py --out bench/out/throughput.json   # + throughput.md beside it
    python bench/throughput.py --recipes vit_real --threads 16 --precisions bf16 --batch 32 \
        --stages stage2 --compile default                        # + the torch.compile'd step (GPU)
    python bench/throughput.py --recipes cifar10 --threads 1 --precisions bf16 --stages stage2 --batch 256 \
        --variant g64 --set stage2.generator_batch_size=64     # a candidate configuration, named

For each recipe (``RECIPES``: the Fashion-MNIST CNNs, the CIFAR-10 recipe ResNet-56 natural +
ResNet-4B robust -> ResNet-20, the tiny ImageNet-100 ViT twin, one real-size ViT-S -> ViT-T
step at 224x224), each stage, each thread count and precision, one fresh worker process:

- times ``--steps`` steps of ``trainer.stage1_step`` / ``trainer.stage2_step`` after one
  warm-up step (the models are built by ``build_training``, exactly as ``train`` does, random
  weights: speed does not depend on them), and splits Stage II's time into its parts (the
  generator update, the self-adversary SA, the student's inputs and targets incl. its inner
  maximisation, the expert-guided forward/backward EG, GA/SGA, the optimiser step);
- counts the FLOPs of one step with a dispatch mode over ``torch.utils.flop_counter.flop_registry``
  (``FlopCounterMode``'s module tracking breaks on Stage II's ``autograd.grad``; counting at
  the ATen level does not), per part too;
- measures the dense-matmul peak (GFLOP/s) of the same process, threads and precision, so
  ``fraction_of_peak`` = achieved FLOP/s ÷ that peak compares like with like on a shared machine;
- records the process's peak resident memory after set-up and after the steps (the worker is
  fresh, so the difference is the stage's working set), or CUDA's peak allocation.

Derived ratios (written under ``ratios``): SGA step ÷ GA step (Stage II of the CIFAR-10
recipe), the Accelerate-prepared Stage-I step ÷ the same Stage-I step written as a bare
loop over the unwrapped modules, and with ``--compile MODES`` the eager step ÷ the step under
``distributed.compile=MODE`` (``compiled_speedup``; each compiled row also records its warm-up,
which holds the compilation, and takes its FLOPs from the same step run eagerly: compiled
kernels do not dispatch ATen ops one by one). Writes ``<out>`` (json) and ``<out>.md``; the committed copy
is ``docs/results/throughput.json`` and the table is in ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# The figure at the start of issue 16 (this kind of machine, one thread, fp32, CIFAR-10 recipe at
# batch 64, SA K = 3): the Stage-II speed-up target is measured against it.
ISSUE_START = {
    "recipe": "cifar10",
    "stage1": {"gflop_per_step": 136, "seconds_per_step": 1.8, "fraction_of_peak": 0.43},
    "stage2": {"gflop_per_step": 278, "seconds_per_step": [3.7, 9.6], "fraction_of_peak": [0.16, 0.40]},
    "peak_gflops": 170,
}

# Each recipe: the overrides of a shipped config (random-init teachers of the same architectures).
RECIPES = {
    "fmnist": {
        "config": None,
        "overrides": [
            "preset=derd_recommended",
            "data.name=fashion_mnist",
            "teachers.natural.arch=small_cnn",
            "teachers.natural.kwargs={width: 16}",
            "teachers.robust.arch=small_cnn",
            "teachers.robust.kwargs={width: 16}",
            "student.arch=small_cnn",
            "student.kwargs={width: 8}",
            "generator.latent_dim=128",
            "generator.base_channels=32",
            "stage1.batch_size=128",
            "stage2.batch_size=128",
            "stage2.sa.steps=5",
            "stage2.sa.alpha=0.02",
            "eval.protocol=fashion_mnist",
        ],
    },
    "cifar10": {
        "config": None,
        "overrides": [
            "preset=derd_recommended",
            "data.name=cifar10",
            "teachers.natural.arch=resnet56",
            "teachers.robust.arch=resnet4b",
            "student.arch=resnet20",
            "stage1.batch_size=64",
            "stage2.batch_size=64",
            "stage2.sa.steps=3",
            "stage2.sa.alpha=0.00784313725490196",
            "eval.protocol=cifar",
            "eval.eps=0.00784313725490196",
            "eval.alpha=0.00196078431372549",
        ],
    },
    "vit_tiny": {"config": "configs/imnet100_vit_tiny.yaml", "overrides": []},
    # configs/imnet100_vit.yaml with random-init ViT-S teachers (no download) at a CPU batch.
    "vit_real": {
        "config": "configs/imnet100_vit.yaml",
        "overrides": [
            "teachers.natural.arch=vit_small_patch16_224",
            "teachers.natural.pretrained=false",
            "teachers.natural.class_subset=null",
            "teachers.robust.arch=vit_small_patch16_224",
            "teachers.robust.class_subset=null",
            "teachers.robust.input_size=null",
        ],
        "batch": 8,  # per device on CPU (--batch 32 on a GPU: the config's global 256 on 8 GPUs)
    },
}

# The paper's Stage I (Eq. 11 on T_nat, one G and one student update per step, Eq. 12 on G(z)
# as made): what ``bare_stage1_step`` writes by hand, for the prepared-vs-bare ratio.
PLAIN_STAGE1 = [
    "stage1.lambda_adv=0",
    "stage1.lambda_robust_g=0",
    "stage1.generator_steps=1",
    "stage1.student_steps=1",
    "stage1.replay_steps=0",
    "stage1.class_balance=false",
    "stage1.augment=none",
]

# Stage-II parts: names in derd_scale.trainer that the step calls, in the order it calls them.
# ``aggregate`` runs inside ``_expert_guided_update``; its time is taken out of "eg".
PARTS = {
    "generator_update": "generator",
    "craft_discrepancy_data": "sa",
    "student_batch": "student_inputs",
    "_expert_guided_update": "eg",
    "_robust_only_update": "eg",
    "aggregate": "ga_sga",
}


def matmul_peak_gflops(dtype, device, n: int = 0, repeats: int = 5) -> float:
    """The best dense n×n matmul rate of ``repeats`` (after one warm-up) in this process
    (n = 2048 on a CPU, 8192 on a GPU, where smaller products do not fill the chip)."""
    import torch

    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def _sync(device) -> None:
    import torch

    if getattr(device, "type", device) == "cuda":
        torch.cuda.synchronize()


def flop_counter():
    """A dispatch mode that sums ``flop_registry`` FLOPs of every ATen op, per active part."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class FlopCount(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.total = 0
            self.by_part: dict = {}
            self.part_stack: list = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            packet = func._overloadpacket
            if packet in flop_registry:
                flops = flop_registry[packet](*args, **kwargs, out_val=out)
                self.total += flops
                for part in set(self.part_stack):
                    self.by_part[part] = self.by_part.get(part, 0) + flops
            return out

    return FlopCount()


class PartTimer:
    """Wraps the trainer's step functions to time (and, under a FlopCount, attribute) each part."""

    def __init__(self, device):
        self.device = device
        self.seconds: dict = {}
        self.counter = None
        self.hooked: list = []

    @contextmanager
    def part(self, name: str):
        if self.counter is not None:
            self.counter.part_stack.append(name)
        _sync(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            _sync(self.device)
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
            if self.counter is not None:
                self.counter.part_stack.pop()

    def wrap(self, fn, name):
        def timed(*args, **kwargs):
            with self.part(name):
                return fn(*args, **kwargs)

        return timed

    def install(self, trainer_module, par) -> None:
        for attr, name in PARTS.items():
            if hasattr(trainer_module, attr):
                setattr(trainer_module, attr, self.wrap(getattr(trainer_module, attr), name))
                self.hooked.append(attr)
        par.student.step = self.wrap(par.student.step, "optimizer")
        self.hooked.append("par.student.step")


def worker(spec: dict) -> dict:
    """One (recipe, stage, threads, precision[, variant]) measurement in this fresh process."""
    import torch

    torch.set_num_threads(spec["threads"])
    from accelerate import Accelerator

    import derd_scale.trainer as trainer
    from derd_scale.config import load_config
    from derd_scale.state import TrainState

    recipe = RECIPES[spec["recipe"]]
    # Eager unless the variant compiles (configs/imnet100_vit.yaml asks for compile=auto): the
    # default row is the eager reference of compiled_speedup.
    overrides = list(recipe["overrides"]) + ["distributed.compile=none"] + list(spec.get("variant_overrides", []))
    batch = spec.get("batch") or recipe.get("batch")
    if batch:
        overrides += [f"stage1.batch_size={batch}", f"stage2.batch_size={batch}"]
    overrides += [
        f"distributed.mixed_precision={'bf16' if spec['precision'] == 'bf16' else 'no'}",
    ]
    config = recipe["config"] and str(REPO / recipe["config"])
    cfg = load_config(config, overrides)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peak = matmul_peak_gflops(torch.bfloat16 if spec["precision"] == "bf16" else torch.float32, device)
    peak_fp32 = peak if spec["precision"] == "fp32" else matmul_peak_gflops(torch.float32, device)
    models, par, scheds, _ = trainer.build_training(cfg, Accelerator(cpu=device.type == "cpu"))
    rss_setup = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stage = spec["stage"]
    state = TrainState(stage=stage)

    if spec.get("bare"):
        step_fn = bare_stage1_step(models, cfg, par.autocast)
    elif stage == "stage1":

        def step_fn(i):
            trainer.stage1_step(models, cfg, i, scheds, par)
    else:

        def step_fn(i):
            state.step = i
            trainer.stage2_step(models, cfg, state, scheds, par)

    timer = PartTimer(device)
    if not spec.get("bare"):
        timer.install(trainer, par)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    t_warm = time.perf_counter()
    step_fn(0)  # warm-up: allocator, oneDNN kernels, lazy state, compilation under distributed.compile
    _sync(device)
    warmup_seconds = time.perf_counter() - t_warm
    timer.seconds.clear()
    times = []
    for i in range(1, spec["steps"] + 1):
        _sync(device)
        t0 = time.perf_counter()
        step_fn(i)
        _sync(device)
        times.append(time.perf_counter() - t0)
    part_seconds = {k: v / len(times) for k, v in timer.seconds.items()}
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cuda_peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None

    counter = flop_counter()
    timer.counter = counter
    # Compiled code runs fused kernels, not ATen ops one by one: count the same step eagerly.
    eager = torch.compiler.set_stance("force_eager") if cfg.distributed.compile != "none" else nullcontext()
    with eager, counter:
        step_fn(spec["steps"] + 1)
    seconds = statistics.median(times)
    gflop = counter.total / 1e9
    batch_size = cfg.stage1.batch_size if stage == "stage1" else cfg.stage2.batch_size
    if "eg" in part_seconds and "ga_sga" in part_seconds:
        part_seconds["eg"] -= part_seconds["ga_sga"]  # aggregate runs inside the EG update
    part_gflop = {k: v / 1e9 for k, v in counter.by_part.items()}
    if "eg" in part_gflop and "ga_sga" in part_gflop:
        part_gflop["eg"] -= part_gflop["ga_sga"]
    return {
        "recipe": spec["recipe"],
        "stage": stage,
        "variant": spec.get("variant", "default"),
        "threads": spec["threads"],
        "precision": spec["precision"],
        "batch": batch_size,
        "sa_steps": cfg.stage2.sa.steps,
        "compile": cfg.distributed.compile,
        "warmup_seconds": warmup_seconds,
        "steps_timed": len(times),
        "seconds_per_step": seconds,
        "seconds_all": times,
        "images_per_s": batch_size / seconds,
        "gflop_per_step": gflop,
        "achieved_gflops": gflop / seconds,
        "peak_gflops": peak,
        "peak_gflops_fp32": peak_fp32,
        "fraction_of_peak": gflop / seconds / peak,
        "parts_seconds": part_seconds,
        "parts_gflop": part_gflop,
        "parts_hooked": timer.hooked,
        "rss_after_setup_mb": rss_setup,
        "rss_peak_mb": rss_peak,
        "stage_working_set_mb": rss_peak - rss_setup,
        "cuda_peak_mb": cuda_peak,
        "device": str(device),
    }


def bare_stage1_step(models, cfg, autocast):
    """Stage I as a bare loop over the unwrapped modules and plain optimisers (the reference the
    prepared ``stage1_step`` is compared with): same losses, batch, optimiser kind and autocast."""

    from derd_scale.derd.losses import generator_loss, kd_kl
    from derd_scale.distributed import unwrap
    from derd_scale.optim import build_optimizer
    from derd_scale.trainer import step_noise

    generator, student, teacher = unwrap(models.generator), unwrap(models.student), models.natural_teacher
    opt_g = build_optimizer(generator.parameters(), cfg.optim.generator)
    opt_s = build_optimizer(student.parameters(), cfg.optim.student)
    s1 = cfg.stage1

    def step(i):
        z, y = generator.sample(s1.batch_size, step_noise(cfg.seed, "stage1", i))
        with autocast():
            x = generator(z, y)
            loss, t_logits, _ = generator_loss(
                teacher, x, s1.lambda_oh, s1.lambda_a, s1.lambda_bn, s1.lambda_ie, s1.lambda_tv, targets=y
            )
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        with autocast():
            kd = kd_kl(t_logits.detach(), student(x.detach().float()), s1.kd_temperature)
        opt_s.zero_grad(set_to_none=True)
        kd.backward()
        opt_s.step()

    return step


def run_worker(spec: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], env=env, capture_output=True, text=True, cwd=REPO
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
STAGES = ("stage1", "stage2")


def plan(recipes, threads, precisions, steps, cuda: bool = False, compile_modes=(), stages=STAGES) -> list[dict]:
    specs = []
    for recipe in recipes:
        n = 1 if recipe == "vit_real" and not cuda else steps  # a real-size step takes ~1 min on one CPU thread
        for t in threads:
            for precision in precisions:
                for stage in stages:
                    specs.append(dict(recipe=recipe, stage=stage, threads=t, precision=precision, steps=n))
                    for mode in compile_modes:
                        specs.append(
                            dict(
                                recipe=recipe,
                                stage=stage,
                                threads=t,
                                precision=precision,
                                steps=n,
                                variant=f"compile_{mode}",
                                variant_overrides=[f"distributed.compile={mode}"],
                            )
                        )
                if recipe == "cifar10" and stages == STAGES:
                    specs.append(
                        dict(
                            recipe=recipe,
                            stage="stage2",
                            threads=t,
                            precision=precision,
                            steps=n,
                            variant="ga",
                            variant_overrides=["stage2.aggregation.method=ga"],
                        )
                    )
                    # prepared vs bare on the paper's plain Stage I (one G and one student update,
                    # Eq. 11 + Eq. 12): the bare loop writes exactly that step and nothing more.
                    for variant in ("plain", "bare"):
                        specs.append(
                            dict(
                                recipe=recipe,
                                stage="stage1",
                                threads=t,
                                precision=precision,
                                steps=n,
                                variant=variant,
                                variant_overrides=PLAIN_STAGE1,
                                bare=variant == "bare",
                            )
                        )
    return specs


def _key(row: dict) -> tuple:
    """A measurement's identity (a spec or a result row)."""
    return (row["recipe"], row["stage"], row.get("variant", "default"), row["threads"], row["precision"])


# variant → (ratio name, the variant it is measured against, issue 16's target)
_RATIOS = {
    "ga": ("sga_over_ga", "default", "<= 1.10"),
    "bare": ("prepared_over_bare_stage1", "plain", "<= 1.05"),
    **{f"compile_{m}": (f"compiled_speedup_{m}", "default", "> 1 (else leave it off)") for m in COMPILE_MODES},
}


def ratios(rows: list[dict]) -> list[dict]:
    """SGA ÷ GA and prepared ÷ bare, for every (threads, precision) measured: the reference
    variant's time over this one's. ``flop_ratio`` is the same quotient of counted FLOPs: a
    time ratio means something only where it is 1 (both steps do the same work)."""
    out = []
    by = {(r["recipe"], r["stage"], r["variant"], r["threads"], r["precision"]): r for r in rows}
    for (recipe, stage, variant, t, p), r in by.items():
        if variant not in _RATIOS:
            continue
        name, reference, target = _RATIOS[variant]
        ref = by.get((recipe, stage, reference, t, p))
        if ref is None:
            continue
        value = ref["seconds_per_step"] / r["seconds_per_step"]
        flop_ratio = ref["gflop_per_step"] / max(r["gflop_per_step"], 1e-12)
        out.append(
            dict(
                name=name,
                recipe=recipe,
                stage=stage,
                threads=t,
                precision=p,
                value=value,
                flop_ratio=flop_ratio,
                target=target,
            )
        )
    return out


def markdown(result: dict) -> str:
    lines = [
        "# DERD step throughput",
        "",
        f"Machine: {result['machine']['processor']}, {result['machine']['cpus']} CPUs, torch {result['machine']['torch']}, "
        f"load average at start {result['machine']['loadavg_start']}. Peak = dense square matmul (2048² on CPU, 8192² on "
        "GPU) in the same process, threads and precision.",
        "",
        "| recipe | stage | variant | threads | precision | batch | s/step | img/s | GFLOP/step | GFLOP/s | peak GFLOP/s | "
        "fraction of peak | working set MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['recipe']} | {r['stage']} | {r['variant']} | {r['threads']} | {r['precision']} | {r['batch']} | "
            f"{r['seconds_per_step']:.3f} | {r['images_per_s']:.1f} | {r['gflop_per_step']:.1f} | "
            f"{r['achieved_gflops']:.1f} | {r['peak_gflops']:.1f} | {r['fraction_of_peak']:.2f} | "
            f"{r['stage_working_set_mb']:.0f} |"
        )
    lines += ["", "Stage II by part (seconds per step / GFLOP per step):", ""]
    lines += ["| recipe | threads | precision | variant | " + " | ".join(_PART_ORDER) + " | unattributed s |"]
    lines += ["|---|---|---|---|" + "---|" * (len(_PART_ORDER) + 1)]
    for r in result["rows"]:
        if r["stage"] != "stage2":
            continue
        cells = []
        for p in _PART_ORDER:
            s, g = r["parts_seconds"].get(p), r["parts_gflop"].get(p)
            cells.append("—" if s is None else f"{s:.3f} / {g or 0:.1f}")
        rest = r["seconds_per_step"] - sum(r["parts_seconds"].values())
        lines.append(
            f"| {r['recipe']} | {r['threads']} | {r['precision']} | {r['variant']} | "
            + " | ".join(cells)
            + f" | {rest:.3f} |"
        )
    lines += ["", "Ratios:", ""]
    for q in result["ratios"]:
        lines.append(
            f"- {q['name']} ({q['recipe']} {q.get('stage', '')}, {q['threads']} thread(s), {q['precision']}): {q['value']:.3f} (target {q['target']}; FLOP ratio {q.get('flop_ratio', float('nan')):.3f})"
        )
    return "\n".join(lines) + "\n"


_PART_ORDER = ("generator", "sa", "student_inputs", "eg", "ga_sga", "optimizer")


def main(argv=None) -> int:
    from derd_scale.commands import add_override_option

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default=",".join(RECIPES), help=f"comma list of {', '.join(RECIPES)}")
    p.add_argument("--threads", default="1,2", help="comma list of thread counts")
    p.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32, bf16 (bf16 = CPU/CUDA autocast)")
    p.add_argument(
        "--steps", type=int, default=3, help="timed steps per measurement (vit_real on a CPU: 1), after 1 warm-up"
    )
    p.add_argument("--batch", type=int, default=None, help="per-device batch for every recipe (default: each recipe's)")
    p.add_argument(
        "--compile",
        default="",
        help=f"comma list of distributed.compile modes ({', '.join(COMPILE_MODES)}) measured beside the eager step",
    )
    p.add_argument(
        "--stages", default=",".join(STAGES), help="comma list of stage1, stage2 (both: + the ratio variants)"
    )
    add_override_option(
        p, "config override on every measurement (repeatable; needs --variant, which names the rows it makes)"
    )
    p.add_argument("--variant", help="the variant name of the rows --set makes (e.g. a candidate recipe)")
    p.add_argument("--out", default="bench/out/throughput.json")
    p.add_argument("--fresh", action="store_true", help="start over instead of keeping the rows already in --out")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0
    recipes = [x for x in args.recipes.split(",") if x]
    bad = [x for x in recipes if x not in RECIPES]
    if bad:
        print(f"--recipes: unknown {bad}; allowed: {', '.join(RECIPES)}", file=sys.stderr)
        return 2
    precisions = [x for x in args.precisions.split(",") if x]
    if any(x not in ("fp32", "bf16") for x in precisions):
        print(f"--precisions: {precisions}; allowed: fp32, bf16", file=sys.stderr)
        return 2
    threads = [int(x) for x in args.threads.split(",") if x]
    if any(t < 1 for t in threads) or args.steps < 1:
        print("--threads and --steps must be ≥ 1", file=sys.stderr)
        return 2

    import torch

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": {
            "processor": _cpu_name(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        },
        "issue_start": ISSUE_START,
        "rows": [],
        "ratios": [],
    }
    compile_modes = [x for x in args.compile.split(",") if x]
    if any(x not in COMPILE_MODES for x in compile_modes):
        print(f"--compile: {compile_modes}; allowed: {', '.join(COMPILE_MODES)}", file=sys.stderr)
        return 2
    stages = tuple(x for x in STAGES if x in args.stages.split(","))
    if not stages or set(args.stages.split(",")) - set(STAGES):
        print(f"--stages: {args.stages!r}; allowed: {', '.join(STAGES)}", file=sys.stderr)
        return 2
    if bool(args.overrides) != bool(args.variant):
        print("--set and --variant go together: the variant names the rows the overrides make", file=sys.stderr)
        return 2
    specs = plan(recipes, threads, precisions, args.steps, torch.cuda.is_available(), compile_modes, stages)
    if args.variant:  # one candidate configuration: its plain rows only, under its own name
        specs = [s for s in specs if "variant" not in s]
        for spec in specs:
            spec.update(variant=args.variant, variant_overrides=list(args.overrides))
    for spec in specs:
        spec["batch"] = args.batch
    if out.exists() and not args.fresh:
        # Resumable: keep the rows measured before (e.g. 1 thread while another job held the other
        # core, 2 threads later) and measure only what is missing.
        previous = json.loads(out.read_text())
        result["rows"] = previous["rows"]
        result["machine"]["loadavg_start_previous"] = previous["machine"]["loadavg_start"]
        done = {_key(r) for r in result["rows"]}
        specs = [s for s in specs if _key(s) not in done]
    t0 = time.time()
    for i, spec in enumerate(specs, 1):
        label = (
            f"{spec['recipe']} {spec['stage']} {spec.get('variant', 'default')} {spec['threads']}t {spec['precision']}"
        )
        print(f"[throughput] {i}/{len(specs)} {label} …", flush=True)
        row = run_worker(spec)
        print(
            f"[throughput]   {row['seconds_per_step']:.3f} s/step, {row['gflop_per_step']:.1f} GFLOP, "
            f"{row['fraction_of_peak']:.2f} of {row['peak_gflops']:.0f} GFLOP/s",
            flush=True,
        )
        result["rows"].append(row)
        result["ratios"] = ratios(result["rows"])
        result["minutes"] = (time.time() - t0) / 60
        result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        out.write_text(json.dumps(result, indent=2))  # after every row: nothing lost on a crash
        out.with_suffix(".md").write_text(markdown(result))
    print(out.with_suffix(".md").read_text())
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
