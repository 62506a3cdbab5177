"""Data-driven reference students for the benchmark tables (they read the real training set).

- ``train_natural_student``: CE on real images, no attack (the "natural" row).
- ``train_rslad_student``: RSLAD (Zi et al. 2021), the data-driven upper bound DERD is
  compared with. Student loss on a real batch x (robust teacher T_rob, student S):

      x' = argmax_{‖x'−x‖∞≤ε} KL(T_rob(x) ‖ S(x'))      (PGD, K steps, student in eval mode)
      L  = 5/6 · KL(T_rob(x) ‖ S(x')) + 1/6 · KL(T_rob(x) ‖ S(x))

Both take a fixed number of student steps so a table can match DERD's step count.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .derd.student_adversary import student_inner_max


def _batches(x_all: torch.Tensor, y_all: torch.Tensor, steps: int, batch_size: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y_all), generator=gen)
    pos = 0
    for _ in range(steps):
        if pos + batch_size > len(order):
            order, pos = torch.randperm(len(y_all), generator=gen), 0
        idx = order[pos : pos + batch_size]
        pos += batch_size
        yield x_all[idx].float().div(255), y_all[idx]


def _optimizer(student, lr: float, steps: int):
    opt = torch.optim.SGD(student.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    return opt, sched


def train_natural_student(
    student, x_all, y_all, steps: int, batch_size: int, lr: float = 0.05, seed: int = 0, progress: bool = True
):
    from tqdm.auto import tqdm

    opt, sched = _optimizer(student, lr, steps)
    student.train()
    for x, y in tqdm(
        _batches(x_all, y_all, steps, batch_size, seed), total=steps, desc="natural student", disable=not progress
    ):
        loss = F.cross_entropy(student(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return student


def rslad_inner_max(
    student,
    teacher_probs_log: torch.Tensor,
    x: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """PGD maximising KL(T_rob(x) ‖ S(x')) from x + 0.001·N(0, 1) (the RSLAD reference code)."""
    noise = torch.randn(x.shape, generator=generator)
    return student_inner_max(student, teacher_probs_log, x, eps, alpha, steps, noise=noise.to(x.device))


def train_rslad_student(
    student,
    robust_teacher,
    x_all,
    y_all,
    steps: int,
    batch_size: int,
    eps: float,
    alpha: float,
    attack_steps: int = 10,
    lr: float = 0.05,
    seed: int = 0,
    progress: bool = True,
):
    from tqdm.auto import tqdm

    opt, sched = _optimizer(student, lr, steps)
    robust_teacher.eval()
    gen = torch.Generator().manual_seed(seed + 1)
    for x, _ in tqdm(
        _batches(x_all, y_all, steps, batch_size, seed), total=steps, desc="RSLAD student", disable=not progress
    ):
        with torch.no_grad():
            t_log = F.log_softmax(robust_teacher(x), dim=1)
        student.eval()
        x_adv = rslad_inner_max(student, t_log, x, eps, alpha, attack_steps, gen)
        student.train()
        kl_adv = F.kl_div(F.log_softmax(student(x_adv), 1), t_log, reduction="batchmean", log_target=True)
        kl_nat = F.kl_div(F.log_softmax(student(x), 1), t_log, reduction="batchmean", log_target=True)
        loss = 5 / 6 * kl_adv + 1 / 6 * kl_nat
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return student
