"""Teacher training: natural (CE), Madry PGD-AT and TRADES, on any supported dataset.

Driven by ``launch/train_teacher.py``; one explicit epoch loop through Accelerate. The
output folder is an export folder (``config.json`` + ``model.safetensors``, see
``derd_scale.export``), so a trained teacher is directly a teacher source:
``teachers.robust.arch=local-dir:OUT``.

Objectives (x in [0, 1], L∞ ball of radius ε):
  ce:     CE(f(x), y)
  pgd:    CE(f(x'), y),  x' = PGD_S(x; ε, α, K)                       (Madry et al. 2018)
  trades: CE(f(x), y) + β · KL(f(x) ‖ f(x')),  x' = PGD_T(x; ε, α, K)  (Zhang et al. 2019)
Adversarial examples are crafted with the model in eval mode (BatchNorm running stats),
as in the TRADES/RSLAD reference code, then the update runs in train mode.

Resume: ``OUT/checkpoints/last.pt`` is written after every epoch (model, optimiser,
scheduler, epoch); the epoch's shuffle is a function of (seed, epoch), so a resumed run
makes exactly the updates an uninterrupted one would.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from .config import DataConfig, ModelConfig, OptimizerConfig
from .data import dataset_info, load_dataset_split
from .evaluation import attacks as A


@dataclass
class TeacherTrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(arch="small_cnn"))
    method: str = "ce"
    eps: float = 8 / 255
    alpha: float = 2 / 255
    attack_steps: int = 10
    beta: float = 6.0
    epochs: int = 10
    batch_size: int = 128
    optim: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="sgd", lr=0.1, schedule="cosine"))
    augment: str = "auto"
    max_train_examples: Optional[int] = None
    eval_examples: int = 1000
    eval_steps: int = 10
    seed: int = 0
    out: str = "teachers/teacher"
    progress: bool = True

    def validate(self) -> None:
        if self.method not in ("ce", "pgd", "trades"):
            raise ValueError(f"method: {self.method!r}; allowed: ce, pgd, trades")
        if self.augment not in ("auto", "none", "flip_crop"):
            raise ValueError(f"augment: {self.augment!r}; allowed: auto, none, flip_crop")
        for key in ("epochs", "batch_size", "attack_steps"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key}: must be > 0")
        if self.method != "ce" and self.eps <= 0:
            raise ValueError("eps: must be > 0 for adversarial training")


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and 4-pixel-padded random crop (the standard CIFAR recipe)."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    dx = torch.randint(0, 9, (n,), generator=gen)
    dy = torch.randint(0, 9, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h)[None, :])[:, None, :, None].expand(n, x.shape[1], h, w + 8)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None, :])[:, None, None, :].expand(n, x.shape[1], h, w)
    return out.gather(3, cols)


def teacher_loss(model, x: torch.Tensor, y: torch.Tensor, cfg: TeacherTrainConfig, gen: torch.Generator) -> torch.Tensor:
    if cfg.method == "ce":
        return F.cross_entropy(model(x), y)
    model.eval()
    if cfg.method == "pgd":
        x_adv = A.pgd_s(model, x, y, cfg.eps, cfg.alpha, cfg.attack_steps, generator=gen)
        model.train()
        return F.cross_entropy(model(x_adv), y)
    x_adv = A.pgd_t(model, x, y, cfg.eps, cfg.alpha, cfg.attack_steps, generator=gen)
    model.train()
    logits = model(x)
    kl = F.kl_div(F.log_softmax(model(x_adv), 1), F.log_softmax(logits, 1), reduction="batchmean", log_target=True)
    return F.cross_entropy(logits, y) + cfg.beta * kl


def train_teacher(cfg: TeacherTrainConfig, accelerator=None) -> dict:
    """Train (or resume) a teacher; returns final clean/PGD accuracy on the eval split."""
    from tqdm.auto import tqdm

    from .distributed import build_accelerator, world
    from .config import DistributedConfig
    from .export import export_model
    from .teachers import model_from_config
    from .trainer import _maybe_simulate_preemption, build_optimizer, build_scheduler

    cfg.validate()
    accelerator = accelerator or build_accelerator(DistributedConfig())
    rank, size = world()
    out = Path(cfg.out)
    ckpt = out / "checkpoints" / "last.pt"
    info = dataset_info(cfg.data.name)
    train_set, _ = load_dataset_split(cfg.data, cfg.data.train_split)
    train_set = train_set.subset(cfg.max_train_examples)
    x_all, y_all = train_set.tensors()
    augment = cfg.augment == "flip_crop" or (cfg.augment == "auto" and info.channels == 3 and info.image_size == 32)

    torch.manual_seed(cfg.seed)
    model = model_from_config(cfg.model, info)
    steps_per_epoch = len(y_all) // cfg.batch_size
    optimizer = build_optimizer(model.parameters(), cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.epochs * steps_per_epoch, cfg.optim)
    start_epoch = 0
    if ckpt.exists():
        blob = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(blob["model"])
        optimizer.load_state_dict(blob["optimizer"])
        scheduler.load_state_dict(blob["scheduler"])
        start_epoch = blob["epoch"]
        accelerator.print(f"resumed {out} at epoch {start_epoch}")
    model, optimizer = accelerator.prepare(model, optimizer)
    log_path = out / "train_log.jsonl"
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "teacher_config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str))
    t_start = time.time()
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        gen = torch.Generator().manual_seed(cfg.seed * 10_007 + epoch)
        order = torch.randperm(len(y_all), generator=gen)
        local = cfg.batch_size // size
        bar = tqdm(range(steps_per_epoch), desc=f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}", disable=not (cfg.progress and accelerator.is_main_process), dynamic_ncols=True)
        total, seen = 0.0, 0
        for step in bar:
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size][rank * local : (rank + 1) * local]
            x = x_all[idx].float().div_(255)
            if augment:
                x = _augment(x, gen)
            x, y = x.to(accelerator.device), y_all[idx].to(accelerator.device)
            loss = teacher_loss(model, x, y, cfg, gen)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(y)
            seen += len(y)
            bar.set_postfix(loss=f"{total / seen:.3f}")
        if accelerator.is_main_process:
            (out / "checkpoints").mkdir(parents=True, exist_ok=True)
            tmp = ckpt.with_suffix(".tmp")
            torch.save({"model": accelerator.unwrap_model(model).state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch + 1}, tmp)
            tmp.replace(ckpt)
            with open(log_path, "a") as fh:
                fh.write(json.dumps({"epoch": epoch + 1, "loss": total / max(seen, 1), "seconds": time.time() - t_start}) + "\n")
        accelerator.wait_for_everyone()
        _maybe_simulate_preemption("teacher", epoch + 1)

    plain = accelerator.unwrap_model(model)
    metrics = evaluate_teacher(plain, cfg, accelerator)
    metrics["train_seconds"] = time.time() - t_start
    if accelerator.is_main_process:
        export_model(plain, out, arch=cfg.model.arch, num_classes=info.num_classes, in_chans=info.channels, img_size=info.image_size,
                     class_names=list(info.class_names), model_kwargs=dict(cfg.model.kwargs),
                     metadata={"training": {"method": cfg.method, "eps": cfg.eps, "alpha": cfg.alpha, "attack_steps": cfg.attack_steps, "beta": cfg.beta, "epochs": cfg.epochs}, "dataset": cfg.data.name, "metrics": metrics})
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    accelerator.wait_for_everyone()
    return metrics


def evaluate_teacher(model, cfg: TeacherTrainConfig, accelerator) -> dict:
    """Clean and PGD_S (ε, α, ``eval_steps``) accuracy on the first ``eval_examples`` test images."""
    from .evaluation import Protocol, evaluate

    test_set, _ = load_dataset_split(cfg.data, cfg.data.eval_split)
    eps = cfg.eps if cfg.eps > 0 else 8 / 255
    report = evaluate(model, test_set, ["clean", "pgd_s"], Protocol("teacher", eps, cfg.alpha, cfg.eval_steps, 500), n_examples=cfg.eval_examples, accelerator=accelerator, seed=cfg.seed, progress=False)
    return {"clean": report.accuracy("clean"), "pgd_s": report.accuracy("pgd_s"), "eps": eps, "eval_steps": cfg.eval_steps, "n": report.n}
