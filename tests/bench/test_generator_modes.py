"""bench/generator_modes.py: what a trained run's G makes and whether its student is constant."""

import pytest
from conftest import load_bench, train_tiny


def test_reports_class_histograms_and_the_students_spread_of_a_trained_run(tmp_path):
    gm = load_bench("generator_modes")
    run = train_tiny(tmp_path).path
    out = gm.generator_modes(run, samples=16)
    assert sum(out["teacher_classes_on_gz"]) == sum(out["student_classes_on_gz"]) == 16
    assert sum(out["student_classes_on_noise"]) == 16 and len(out["teacher_classes_on_gz"]) == 10
    assert out["student_logit_std_over_batch"] > 0 and out["kl_teacher_student_on_gz"] >= 0
    assert 0.0 <= out["pixels"]["min"] <= out["pixels"]["max"] <= 1.0
    assert out["checkpoint"].startswith("stage2-")
    assert sum(out["robust_teacher_classes_on_gz"]) == 16 and 0.0 <= out["teacher_agreement"] <= 1.0
    agreement = out["teacher_agreement_by_class"]
    shown = [c for c, n in enumerate(out["teacher_classes_on_gz"]) if n]
    assert [c for c, a in enumerate(agreement) if a is not None] == shown  # None exactly where T_nat shows no image
    # the per-class shares weighted by T_nat's counts give back the overall agreement
    weighted = sum(agreement[c] * out["teacher_classes_on_gz"][c] for c in shown) / 16
    assert weighted == pytest.approx(out["teacher_agreement"], abs=1e-3)
    assert out["natural_follows_label_by_class"] is None  # the tiny run's G is not class-conditional


def test_share_by_class_against_hand_values():
    import torch

    gm = load_bench("generator_modes")
    by = torch.tensor([0, 0, 0, 2, 2])
    hit = torch.tensor([True, False, True, False, False])
    assert gm.share_by_class(by, hit, 3) == [pytest.approx(2 / 3, abs=1e-4), None, 0.0]


def test_a_run_without_checkpoints_is_refused_in_one_line(tmp_path):
    gm = load_bench("generator_modes")
    with pytest.raises(SystemExit, match="no config.yaml"):
        gm.generator_modes(tmp_path)
