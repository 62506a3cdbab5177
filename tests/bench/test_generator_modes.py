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


def test_a_run_without_checkpoints_is_refused_in_one_line(tmp_path):
    gm = load_bench("generator_modes")
    with pytest.raises(SystemExit, match="no config.yaml"):
        gm.generator_modes(tmp_path)
