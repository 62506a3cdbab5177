import torch
import torch.nn as nn
import torch.nn.functional as F

from derd_scale.baselines import rslad_inner_max


def test_rslad_inner_max_ascends_the_kl_inside_the_ball():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Flatten(), nn.Linear(12, 4)).eval()
    teacher_log = F.log_softmax(torch.randn(5, 4), 1)
    x = torch.rand(5, 3, 2, 2)
    adv = rslad_inner_max(
        student, teacher_log, x, eps=0.05, alpha=0.01, steps=5, generator=torch.Generator().manual_seed(0)
    )
    assert (adv - x).abs().max() <= 0.05 + 1e-6 and adv.min() >= 0 and adv.max() <= 1

    def kl(z):
        return F.kl_div(F.log_softmax(student(z), 1), teacher_log, reduction="sum", log_target=True).item()

    assert kl(adv) > kl(x)
    assert all(p.grad is None for p in student.parameters())
