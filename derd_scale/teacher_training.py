"""Teacher training: natural (CE), Madry PGD-AT, TRADES and FGSM-RS, on any supported dataset.

Driven by ``launch/train_teacher.py`` (``TeacherTrainConfig`` loaded like the run config:
``--config``/``--set``/``--print-schema``); one explicit epoch loop through Accelerate. The
output folder is an export folder (``config.json`` + ``model.safetensors``, see
``derd_scale.export``), so a trained teacher is directly a teacher source:
``teachers.robust.arch=local-dir:OUT``.

Objectives (x in [0, 1], L∞ ball of radius ε):
  ce:     CE(f(x), y)
  pgd:    CE(f(x'), y),  x' = PGD_S(x; ε, α, K)                       (Madry et al. 2018)
  trades: CE(f(x), y) + β · KL(f(x) ‖ f(x')),  x' = PGD_T(x; ε, α, K)  (Zhang et al. 2019)
  fgsm_rs: CE(f(x'), y), x' = PGD_S(x; ε, α, 1): one FGSM step of size α from a uniform
           start in the ε-ball, projected onto the ball and [0, 1] ("fast is better than free",
           Wong et al. 2020, locuslab/fast_adversarial CIFAR10/train_fgsm.py; α = 1.25·ε there)
Adversarial examples are crafted with the model in eval mode (BatchNorm running stats),
as in the TRADES/RSLAD reference code, then the update runs in train mode (Wong et al.'s
FGSM-RS code attacks in train mode; one convention for every objective here).

Early stopping (``val_examples`` > 0): the last N training images are held out; after every
epoch their clean and PGD_S accuracy is logged, the best epoch's weights are kept in the
checkpoint and exported, and ``patience`` stops the run after that many epochs without a
better held-out PGD_S accuracy (Rice et al. 2020's early stopping; it also catches FGSM-RS's
catastrophic overfitting, a sudden collapse of PGD accuracy, which Wong et al. watch with a
PGD-5 check on one training batch per epoch).

Data: small images (≤ 64 px: CIFAR, Fashion-MNIST) are decoded once into memory and
augmented per batch (``flip_crop``: flip + 4-px padded crop, the CIFAR recipe); larger ones
(ImageNet-100) are decoded per batch by ``workers`` DataLoader processes with an
Inception-style random-resized crop + flip at the dataset's size (``resized_crop``), the
crop of each image a function of (seed, epoch, index).

Resume: ``OUT/checkpoints/last.pt`` is written after every epoch (model, optimiser,
scheduler, epoch, torch RNG state, training seconds so far, the best held-out epoch and its
weights, whether early stopping ended the run); the epoch's shuffle, crops
and attack starts come from a generator seeded by (seed, epoch) and dropout / drop-path
from the restored global RNG, so a resumed run makes exactly the updates an uninterrupted
one would. Re-running with different training settings on the same ``OUT`` is refused.

Final metrics (``OUT/metrics.json``): clean and PGD_S accuracy (ε, ``eval_alpha``,
``eval_steps``) on the first ``eval_examples`` images of the eval split (None = all),
``train_seconds`` (optimisation only, summed over resumes) and ``eval_seconds``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Optional

import torch
import torch.nn.functional as F

from .config import ConfigError, DataConfig, ModelConfig, OptimizerConfig, save_config
from .data import dataset_info, load_dataset_split
from .evaluation import attacks as A
from .methods.augment import crop_flip


class TeacherTrainError(ConfigError):
    """A setting, or a setting and the data/checkpoint, do not fit (one line, names the setting)."""


AUGMENTS = ("auto", "none", "flip_crop", "resized_crop")
STREAM_ABOVE = 64  # image sizes above this are decoded per batch instead of held in memory


@dataclass
class TeacherTrainConfig:
    """``launch/train_teacher.py``: one teacher, trained on the real data (docs/models.md).

    Loaded like the run config (``--config teacher.yaml --set method=pgd``); ``validate`` holds
    the range checks, each error one line naming the dotted key.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(arch="small_cnn"))
    method: Literal["ce", "pgd", "trades", "fgsm_rs"] = "ce"
    """Objective: natural CE, Madry PGD-AT, TRADES, or FGSM-RS (one FGSM step of size alpha from a uniform start; Wong et al. use alpha = 1.25·eps)."""
    eps: float = 8 / 255
    """L∞ radius in [0, 1] pixel units for pgd/trades/fgsm_rs (and the PGD evaluations)."""
    alpha: float = 2 / 255
    """Attack step size while training."""
    attack_steps: int = 10
    """Attack iterations while training (pgd/trades; fgsm_rs takes one step)."""
    beta: float = 6.0
    """TRADES β."""
    epochs: int = 10
    """Passes over the training split."""
    batch_size: int = 128
    """Global batch (divisible by the number of processes)."""
    optim: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="sgd", lr=0.1, schedule="cosine"))
    augment: Literal["auto", "none", "flip_crop", "resized_crop"] = "auto"
    """auto = flip_crop (flip + 4-px padded crop) for 32×32 RGB, resized_crop (random-resized crop + flip) for images > 64 px, none otherwise."""
    max_train_examples: Optional[int] = None
    """Train on the first N examples only; None = the whole split."""
    eval_examples: Optional[int] = 1000
    """First N eval-split images for the final clean/PGD numbers; None = the whole split."""
    eval_steps: int = 10
    """PGD steps of the PGD evaluations (final and held-out)."""
    eval_alpha: Optional[float] = None
    """Step size of the PGD evaluations (final and held-out); None = ``alpha``."""
    val_examples: int = 0
    """Hold out the last N training images (never trained on): after every epoch their clean and PGD_S accuracy is logged and the export is the epoch with the best held-out PGD_S accuracy (early stopping); 0 = off, the last epoch is exported."""
    patience: Optional[int] = None
    """With val_examples: stop after this many epochs without a better held-out PGD_S accuracy; None = run every epoch."""
    workers: int = 4
    """DataLoader processes decoding large (streamed) training images; 0 = in the main process."""
    mixed_precision: Literal["no", "bf16", "auto"] = "no"
    """bf16 autocast for the training step (the attack's and the loss's forward/backward passes; weights, optimiser and held-out evaluation stay fp32); auto = bf16 only where it is native (CUDA, or a CPU with AMX / AVX512-BF16: ~2.5× a conv in fp32 there), as ``distributed.mixed_precision``."""
    seed: int = 0
    """Initialisation, shuffling, augmentation and attack starts."""
    out: Optional[str] = None
    """Output (export) folder (required); a re-run with the same settings resumes from OUT/checkpoints/last.pt."""
    progress: bool = True
    """Show the progress bar."""

    def validate(self) -> None:
        """Range checks the types cannot express; one line each, naming the key."""
        if not self.out:
            raise TeacherTrainError("out: required: the output (export) folder")
        if self.method not in ("ce", "pgd", "trades", "fgsm_rs"):
            raise TeacherTrainError(f"method: invalid value {self.method!r}; allowed: ce, pgd, trades, fgsm_rs")
        if self.augment not in AUGMENTS:
            raise TeacherTrainError(f"augment: invalid value {self.augment!r}; allowed: {', '.join(AUGMENTS)}")
        for key in ("epochs", "batch_size", "attack_steps", "eval_steps"):
            if getattr(self, key) <= 0:
                raise TeacherTrainError(f"{key}: must be > 0, got {getattr(self, key)}")
        if not 0.0 <= self.eps <= 1.0:
            raise TeacherTrainError(f"eps: must be in [0, 1] (pixel units), got {self.eps}")
        if self.method != "ce" and self.eps <= 0:
            raise TeacherTrainError(f"eps: must be > 0 for adversarial training (method={self.method})")
        if self.method != "ce" and self.alpha <= 0:
            raise TeacherTrainError(f"alpha: must be > 0, got {self.alpha}")
        if self.eval_alpha is not None and self.eval_alpha <= 0:
            raise TeacherTrainError(f"eval_alpha: must be > 0 or null, got {self.eval_alpha}")
        if self.beta < 0:
            raise TeacherTrainError(f"beta: must be >= 0, got {self.beta}")
        if self.workers < 0:
            raise TeacherTrainError(f"workers: must be >= 0, got {self.workers}")
        if self.eval_examples is not None and self.eval_examples <= 0:
            raise TeacherTrainError(
                f"eval_examples: must be > 0, or null for the whole split, got {self.eval_examples}"
            )
        if self.val_examples < 0:
            raise TeacherTrainError(f"val_examples: must be >= 0, got {self.val_examples}")
        if self.patience is not None and self.patience <= 0:
            raise TeacherTrainError(f"patience: must be > 0 or null, got {self.patience}")
        if self.patience is not None and not self.val_examples:
            raise TeacherTrainError("patience: early stopping needs held-out images; set val_examples > 0")
        if self.max_train_examples is not None and self.max_train_examples <= 0:
            raise TeacherTrainError(
                f"max_train_examples: must be > 0, or null for the whole split, got {self.max_train_examples}"
            )
        if self.optim.lr <= 0:
            raise TeacherTrainError(f"optim.lr: must be > 0, got {self.optim.lr}")
        if self.optim.weight_decay < 0:
            raise TeacherTrainError(f"optim.weight_decay: must be >= 0, got {self.optim.weight_decay}")
        if (self.model.mean is None) != (self.model.std is None):
            raise TeacherTrainError("model.mean / model.std: give both or neither")
        empty = [k for k, v in self.model.kwargs.items() if v is None]
        if empty:  # '{width:16}' is YAML for {"width:16": None}
            raise TeacherTrainError(
                f"model.kwargs: {empty[0]!r} has no value; YAML needs a space after the colon, e.g. '{{width: 16}}'"
            )


# Settings a resumed run must share with the run that wrote the checkpoint (others — the
# data path, evaluation size, progress bar — may change between attempts).
_RESUME_KEYS = (
    "model",
    "method",
    "eps",
    "alpha",
    "attack_steps",
    "beta",
    "epochs",
    "batch_size",
    "optim",
    "augment",
    "max_train_examples",
    "val_examples",
    "patience",
    "seed",
    "mixed_precision",
)
# With held-out early stopping the held-out PGD (eval_steps, eval_alpha) picks the exported epoch
# and ends the run, so a resumed run must measure it as the killed one did.
_EARLY_STOPPING_KEYS = ("eval_steps", "eval_alpha")


def _check_resume_compatible(out: Path, cfg: "TeacherTrainConfig") -> None:
    saved_path = out / "teacher_config.json"
    if not saved_path.exists():
        return
    saved = json.loads(saved_path.read_text())
    now = json.loads(json.dumps(asdict(cfg), default=str))
    keys = _RESUME_KEYS + (_EARLY_STOPPING_KEYS if cfg.val_examples else ())
    # A key the saved config lacks (written before the setting existed) had its default value.
    defaults = json.loads(json.dumps(asdict(type(cfg)(out="-")), default=str))
    changed = [k for k in keys if saved.get(k, defaults.get(k)) != now.get(k)]
    if saved.get("data", {}).get("name") != now["data"]["name"]:
        changed.append("data.name")
    if changed:
        raise TeacherTrainError(
            f"{out}: has a checkpoint trained with different {', '.join(changed)}; use another out or delete {out / 'checkpoints'}"
        )


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and 4-pixel reflect-padded random crop (the standard CIFAR recipe):
    ``methods.augment.crop_flip`` driven by this recipe's own draws from ``gen`` (flip, column and row
    offset, in that order), so the committed teachers' augmentation stream is unchanged."""
    n = x.shape[0]
    flip = torch.rand(n, generator=gen) < 0.5
    dx = torch.randint(0, 9, (n,), generator=gen)
    dy = torch.randint(0, 9, (n,), generator=gen)
    # This recipe flips the image, then crops at dx; crop_flip crops, then flips: the same view is
    # its crop at column 8 − dx. (offset + 0.5) / 9 is the uniform that crop_flip maps back to offset.
    col = torch.where(flip, 8 - dx, dx)
    u = torch.stack([(dy + 0.5) / 9, (col + 0.5) / 9, flip.to(torch.float32)], dim=1)
    return crop_flip(x, u.to(x.device), pad=4, padding_mode="reflect")


def random_resized_crop(
    x: torch.Tensor, size: int, gen: torch.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip: bool = True
) -> torch.Tensor:
    """Inception crop of a CHW image in [0, 1] resized to size×size (+ horizontal flip), drawn from ``gen``."""
    _, h, w = x.shape
    area = h * w
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    top, left, ch, cw = (h - min(h, w)) // 2, (w - min(h, w)) // 2, min(h, w), min(h, w)  # fallback: centre square
    for _ in range(10):
        u = torch.rand(3, generator=gen).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[1])
        tw, th = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < tw <= w and 0 < th <= h:
            top = int(torch.randint(0, h - th + 1, (1,), generator=gen))
            left = int(torch.randint(0, w - tw + 1, (1,), generator=gen))
            ch, cw = th, tw
            break
    crop = x[:, top : top + ch, left : left + cw][None]
    out = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=max(ch, cw) > size)[0]
    if flip and bool(torch.rand(1, generator=gen) < 0.5):
        out = out.flip(2)
    return out.clamp_(0.0, 1.0)


def center_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Shorter side to ``size``, centre crop (the no-augmentation path for streamed images)."""
    _, h, w = x.shape
    s = min(h, w)
    crop = x[:, (h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s][None]
    return F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=s > size)[0].clamp_(
        0.0, 1.0
    )


class _StreamedEpoch(torch.utils.data.Dataset):
    """One rank's training images of one epoch, in order, decoded and augmented per item."""

    def __init__(self, dataset, indices: torch.Tensor, size: int, augment: bool, seed: int, epoch: int):
        self.dataset, self.indices, self.size, self.augment = dataset, indices.tolist(), size, augment
        self.base = (seed * 1_000_003 + epoch) * 10_000_019

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        idx = self.indices[i]
        x, y = self.dataset[idx]
        if self.augment:
            # Per-image generator: the same crop whichever worker decodes it, and after a resume.
            x = random_resized_crop(x, self.size, torch.Generator().manual_seed(self.base + idx))
        else:
            x = center_resize(x, self.size)
        return x, y


def teacher_loss(
    model, x: torch.Tensor, y: torch.Tensor, cfg: TeacherTrainConfig, gen: torch.Generator
) -> torch.Tensor:
    if cfg.method == "ce":
        return F.cross_entropy(model(x), y)
    model.eval()
    if cfg.method in ("pgd", "fgsm_rs"):
        # FGSM-RS is PGD_S with one step: uniform start in the ε-ball cut to [0, 1], one signed
        # step of α, projection onto the ball and [0, 1] (Wong et al.'s train_fgsm.py, step for step).
        steps = 1 if cfg.method == "fgsm_rs" else cfg.attack_steps
        x_adv = A.pgd_s(model, x, y, cfg.eps, cfg.alpha, steps, generator=gen)
        model.train()
        return F.cross_entropy(model(x_adv), y)
    x_adv = A.pgd_t(model, x, y, cfg.eps, cfg.alpha, cfg.attack_steps, generator=gen)
    model.train()
    logits = model(x)
    kl = F.kl_div(F.log_softmax(model(x_adv), 1), F.log_softmax(logits, 1), reduction="batchmean", log_target=True)
    return F.cross_entropy(logits, y) + cfg.beta * kl


def held_out_accuracy(
    model, x_u8: torch.Tensor, y: torch.Tensor, cfg: TeacherTrainConfig, epoch: int, device
) -> tuple[float, float]:
    """Clean and PGD_S (ε, ``eval_alpha``, ``eval_steps``) accuracy on held-out images (uint8), in
    eval mode; the attack starts are a function of (seed, epoch), so a resumed run measures the same."""
    alpha = cfg.eval_alpha if cfg.eval_alpha is not None else cfg.alpha
    gen = torch.Generator().manual_seed(cfg.seed * 10_007 + 5_000_011 + epoch)
    was = model.training
    model.eval()
    clean = robust = 0
    for i in range(0, len(y), 256):
        xb, yb = x_u8[i : i + 256].float().div(255).to(device), y[i : i + 256].to(device)
        with torch.no_grad():
            clean += int((model(xb).argmax(1) == yb).sum())
        x_adv = A.pgd_s(model, xb, yb, cfg.eps, alpha, cfg.eval_steps, generator=gen)
        with torch.no_grad():
            robust += int((model(x_adv).argmax(1) == yb).sum())
    model.train(was)
    return clean / len(y), robust / len(y)


def train_teacher(cfg: TeacherTrainConfig, accelerator=None) -> dict:
    """Train (or resume) a teacher; returns final clean/PGD accuracy on the eval split."""
    from tqdm.auto import tqdm

    from .checkpoint import maybe_simulate_preemption
    from .config import DistributedConfig
    from .distributed import bf16_autocast, build_accelerator, resolve_mixed_precision, world
    from .export import export_model
    from .optim import build_optimizer, build_scheduler
    from .teachers import model_from_config

    cfg.validate()
    accelerator = accelerator or build_accelerator(DistributedConfig())
    rank, size = world()
    out = Path(cfg.out)
    ckpt = out / "checkpoints" / "last.pt"
    info = dataset_info(cfg.data)
    stream = info.image_size > STREAM_ABOVE
    if stream and cfg.augment == "flip_crop":
        raise TeacherTrainError(
            f"augment: flip_crop is the small-image recipe; {info.name} ({info.image_size} px) takes resized_crop or none"
        )
    if not stream and cfg.augment == "resized_crop":
        raise TeacherTrainError(
            f"augment: resized_crop is for streamed large images; {info.name} ({info.image_size} px) takes flip_crop or none"
        )
    if cfg.batch_size % size:
        raise TeacherTrainError(f"batch_size: {cfg.batch_size} is not divisible by the {size} processes")
    # Streamed training images are decoded raw (the eval resize/crop is not a training transform).
    train_set, _ = load_dataset_split(
        dataclasses.replace(cfg.data, resize=None, crop=None) if stream else cfg.data, cfg.data.train_split
    )
    train_set = train_set.subset(cfg.max_train_examples)
    if stream:
        x_all, y_all = None, train_set.labels
        augment = cfg.augment in ("auto", "resized_crop")
    else:
        x_all, y_all = train_set.tensors()
        augment = cfg.augment == "flip_crop" or (cfg.augment == "auto" and info.channels == 3 and info.image_size == 32)
    x_val = y_val = None
    if cfg.val_examples:
        if stream:
            raise TeacherTrainError(
                f"val_examples: held-out early stopping needs the training images in memory (≤ {STREAM_ABOVE} px); {info.name} is streamed"
            )
        if cfg.val_examples >= len(y_all):
            raise TeacherTrainError(
                f"val_examples: {cfg.val_examples} leaves none of the {len(y_all)} training examples"
            )
        x_all, x_val = x_all[: -cfg.val_examples], x_all[-cfg.val_examples :]
        y_all, y_val = y_all[: -cfg.val_examples], y_all[-cfg.val_examples :]
    steps_per_epoch = len(y_all) // cfg.batch_size
    if steps_per_epoch == 0:
        raise TeacherTrainError(f"batch_size: {cfg.batch_size} exceeds the {len(y_all)} training examples")

    torch.manual_seed(cfg.seed)
    model = model_from_config(cfg.model, info)
    optimizer = build_optimizer(model.parameters(), cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.epochs * steps_per_epoch, cfg.optim)
    start_epoch, trained_seconds = 0, 0.0
    best: dict = {}  # held-out early stopping: epoch, clean, pgd_s and the weights of the best epoch
    stopped = False
    if ckpt.exists():
        _check_resume_compatible(out, cfg)
        blob = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(blob["model"])
        optimizer.load_state_dict(blob["optimizer"])
        scheduler.load_state_dict(blob["scheduler"])
        start_epoch = blob["epoch"]
        trained_seconds = float(blob.get("train_seconds", 0.0))
        best, stopped = blob.get("best") or {}, bool(blob.get("stopped", False))
        if "rng" in blob:
            # Dropout / drop-path (ViTs) draw from the global RNG; restore it for exact resume.
            torch.set_rng_state(blob["rng"])
        accelerator.print(f"resumed {out} at epoch {start_epoch}")
    model, optimizer = accelerator.prepare(model, optimizer)
    precision = resolve_mixed_precision(cfg.mixed_precision, accelerator.device)
    log_path = out / "train_log.jsonl"
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "teacher_config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str))
        save_config(
            cfg, out / "teacher_config.yaml"
        )  # the resolved config: `--config OUT/teacher_config.yaml` re-runs it
    for epoch in range(start_epoch, cfg.epochs):
        if stopped:  # early stopping ended the run before a kill: go straight to the export
            break
        t_epoch = time.time()
        model.train()
        gen = torch.Generator().manual_seed(cfg.seed * 10_007 + epoch)
        order = torch.randperm(len(y_all), generator=gen)
        local = cfg.batch_size // size
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"{cfg.method} epoch {epoch + 1}/{cfg.epochs}",
            disable=not (cfg.progress and accelerator.is_main_process),
            dynamic_ncols=True,
        )
        total, seen = 0.0, 0
        if stream:
            mine = order[: steps_per_epoch * cfg.batch_size].view(steps_per_epoch, size, local)[:, rank].reshape(-1)
            loader = iter(
                torch.utils.data.DataLoader(
                    _StreamedEpoch(train_set, mine, info.image_size, augment, cfg.seed, epoch),
                    batch_size=local,
                    num_workers=cfg.workers,
                    pin_memory=accelerator.device.type == "cuda",
                    persistent_workers=False,
                )
            )
        for step in bar:
            if stream:
                x, y = next(loader)
            else:
                idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size][rank * local : (rank + 1) * local]
                x, y = x_all[idx].float().div_(255), y_all[idx]
                if augment:
                    x = _augment(x, gen)
            x, y = x.to(accelerator.device, non_blocking=True), y.to(accelerator.device, non_blocking=True)
            with bf16_autocast(precision, accelerator.device):
                loss = teacher_loss(model, x, y, cfg, gen).float()
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(y)
            seen += len(y)
            bar.set_postfix(loss=f"{total / seen:.3f}")
        trained_seconds += time.time() - t_epoch
        record = {}
        if x_val is not None:
            # Every rank measures the same held-out images, so every rank takes the same decision.
            val_clean, val_pgd = held_out_accuracy(
                accelerator.unwrap_model(model), x_val, y_val, cfg, epoch, accelerator.device
            )
            record = {"val_clean": val_clean, "val_pgd_s": val_pgd}
            if not best or val_pgd > best["pgd_s"]:
                weights = accelerator.unwrap_model(model).state_dict()
                best = {
                    "epoch": epoch + 1,
                    "clean": val_clean,
                    "pgd_s": val_pgd,
                    "model": {k: v.detach().cpu().clone() for k, v in weights.items()},
                }
            stopped = cfg.patience is not None and epoch + 1 - best["epoch"] >= cfg.patience
        if accelerator.is_main_process:
            (out / "checkpoints").mkdir(parents=True, exist_ok=True)
            tmp = ckpt.with_suffix(".tmp")
            torch.save(
                {
                    "model": accelerator.unwrap_model(model).state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch + 1,
                    "rng": torch.get_rng_state(),
                    "train_seconds": trained_seconds,
                    "best": best,
                    "stopped": stopped,
                },
                tmp,
            )
            tmp.replace(ckpt)  # atomic: a kill mid-save leaves the previous epoch's checkpoint
            with open(log_path, "a") as fh:
                fh.write(
                    json.dumps(
                        {
                            "epoch": epoch + 1,
                            "loss": total / max(seen, 1),
                            "lr": scheduler.get_last_lr()[0],
                            "train_seconds": trained_seconds,
                            **record,
                        }
                    )
                    + "\n"
                )
        accelerator.wait_for_everyone()
        maybe_simulate_preemption("teacher", epoch + 1)

    plain = accelerator.unwrap_model(model)
    if best:  # early stopping: the best held-out epoch is the teacher
        plain.load_state_dict(best["model"])
    t_eval = time.time()
    metrics = evaluate_teacher(plain, cfg, accelerator)
    metrics["train_seconds"] = trained_seconds
    if best:
        metrics.update(best_epoch=best["epoch"], val_clean=best["clean"], val_pgd_s=best["pgd_s"], stopped=stopped)
    metrics["eval_seconds"] = time.time() - t_eval
    if accelerator.is_main_process:
        export_model(
            plain,
            out,
            arch=cfg.model.arch,
            num_classes=info.num_classes,
            in_chans=info.channels,
            img_size=info.image_size,
            class_names=list(info.class_names),
            model_kwargs=dict(cfg.model.kwargs),
            metadata={"training": _recipe(cfg, len(y_all)), "dataset": cfg.data.name, "metrics": metrics},
        )
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    accelerator.wait_for_everyone()
    return metrics


def _recipe(cfg: TeacherTrainConfig, train_examples: int) -> dict:
    """How the teacher was trained, for the export's config.json (only the fields that applied)."""
    recipe = {
        "method": cfg.method,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "train_examples": train_examples,
        "optimizer": cfg.optim.name,
        "lr": cfg.optim.lr,
        "weight_decay": cfg.optim.weight_decay,
        "schedule": cfg.optim.schedule,
        "pretrained": cfg.model.pretrained,
        "init_checkpoint": cfg.model.checkpoint,
        "seed": cfg.seed,
    }
    if cfg.method in ("pgd", "trades"):
        recipe.update(eps=cfg.eps, alpha=cfg.alpha, attack_steps=cfg.attack_steps)
    if cfg.method == "fgsm_rs":
        recipe.update(eps=cfg.eps, alpha=cfg.alpha)  # one step: attack_steps does not apply
    if cfg.val_examples:
        recipe.update(val_examples=cfg.val_examples, patience=cfg.patience)
    if cfg.method == "trades":
        recipe["beta"] = cfg.beta
    return recipe


def evaluate_teacher(model, cfg: TeacherTrainConfig, accelerator) -> dict:
    """Clean and PGD_S (ε, ``eval_alpha``, ``eval_steps``) accuracy on the first ``eval_examples`` test images."""
    from .evaluation import Protocol, evaluate

    data, info = cfg.data, dataset_info(cfg.data)
    if info.image_size > STREAM_ABOVE and data.resize is None and data.crop is None:
        # Large images come in many sizes: the standard resize-256 / centre-crop-224 view.
        data = dataclasses.replace(data, resize=int(round(info.image_size / 0.875)), crop=info.image_size)
    test_set, _ = load_dataset_split(data, data.eval_split)
    eps = cfg.eps if cfg.eps > 0 else 8 / 255
    alpha = cfg.eval_alpha if cfg.eval_alpha is not None else cfg.alpha
    report = evaluate(
        model,
        test_set,
        ["clean", "pgd_s"],
        Protocol("teacher", eps, alpha, cfg.eval_steps, 500),
        n_examples=cfg.eval_examples,
        accelerator=accelerator,
        seed=cfg.seed,
        progress=False,
    )
    return {
        "clean": report.accuracy("clean"),
        "pgd_s": report.accuracy("pgd_s"),
        "eps": eps,
        "alpha": alpha,
        "eval_steps": cfg.eval_steps,
        "n": report.n,
    }
