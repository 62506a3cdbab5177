"""Block inheritance (derd_scale/models/inherit.py) and the ``student_init`` switch."""

import pytest
import torch

from derd_scale.config import ModelConfig, config_from_dict
from derd_scale.data import dataset_info
from derd_scale.models.inherit import block_map, inherit_blocks
from derd_scale.teachers import model_from_config

CIFAR = dataset_info("cifar10")


def build(arch: str, seed: int, **kwargs):
    torch.manual_seed(seed)
    return model_from_config(ModelConfig(arch=arch, kwargs=kwargs), CIFAR)


@pytest.mark.parametrize(
    "student, teacher, expected",
    [(3, 9, [0, 4, 8]), (3, 3, [0, 1, 2]), (1, 5, [0]), (2, 3, [0, 2]), (4, 9, [0, 3, 5, 8])],
)
def test_block_map_spreads_the_student_blocks_evenly(student, teacher, expected):
    # j(i) = round(i (N_t - 1) / (N_s - 1)): 4 of 9 → 0, round(8/3) = 3, round(16/3) = 5, 8
    assert block_map(student, teacher) == expected


def test_block_map_refuses_a_deeper_student():
    with pytest.raises(ValueError, match="4 blocks cannot inherit from one of 3"):
        block_map(4, 3)


def test_resnet20_inherits_stem_head_and_blocks_0_4_8_of_resnet56():
    teacher, student = build("resnet56", 0), build("resnet20", 1)
    sources = inherit_blocks(student, teacher)
    t = teacher.model
    s = student.model
    assert sources["model.layer2.1.conv1.weight"] == "model.layer2.4.conv1.weight"
    assert sources["model.layer3.2.bn2.running_var"] == "model.layer3.8.bn2.running_var"
    for i, j in enumerate([0, 4, 8]):
        for layer in ("layer1", "layer2", "layer3"):
            assert torch.equal(getattr(s, layer)[i].conv2.weight, getattr(t, layer)[j].conv2.weight)
            assert torch.equal(getattr(s, layer)[i].bn1.running_mean, getattr(t, layer)[j].bn1.running_mean)
    assert torch.equal(s.conv1.weight, t.conv1.weight) and torch.equal(s.linear.bias, t.linear.bias)
    # copies, not views: training the student leaves the frozen teacher as it was
    s.linear.weight.data.add_(1.0)
    assert not torch.equal(s.linear.weight, t.linear.weight)


def test_an_equal_depth_student_becomes_the_teachers_function():
    teacher, student = build("resnet20", 0).eval(), build("resnet20", 1).eval()
    x = torch.rand(4, 3, 32, 32)
    assert not torch.allclose(student(x), teacher(x))
    inherit_blocks(student, teacher)
    torch.testing.assert_close(student(x), teacher(x), rtol=0, atol=0)


def test_another_width_is_refused_naming_the_key():
    with pytest.raises(ValueError, match=r"model\.conv1\.weight: shape \(8, 3, 3, 3\) ≠ the teacher's"):
        inherit_blocks(build("resnet20", 0, width=8), build("resnet56", 0))


def test_student_init_natural_teacher_starts_the_run_from_the_natural_teacher(tmp_path):
    from derd_scale.trainer import build_models

    base = [
        "data.name=cifar10",
        "teachers.natural.arch=resnet56",
        "teachers.robust.arch=resnet20",
        "student.arch=resnet20",
        f"output.root={tmp_path}",
    ]
    models = build_models(config_from_dict({}, [*base, "student_init=natural_teacher"]))
    s, t = models.student.model, models.natural_teacher.model
    assert torch.equal(s.layer3[1].conv1.weight, t.layer3[4].conv1.weight)
    random = build_models(config_from_dict({}, base))
    assert not torch.equal(random.student.model.layer3[1].conv1.weight, t.layer3[4].conv1.weight)
    with pytest.raises(Exception, match="student_init"):
        config_from_dict({}, [*base, "student_init=robust_teacher"])


def test_student_init_refuses_a_student_of_other_widths_in_one_line(tmp_path):
    from derd_scale.config import ConfigError
    from derd_scale.trainer import build_models

    cfg = config_from_dict(
        {},
        [
            "data.name=cifar10",
            "teachers.natural.arch=resnet56",
            "teachers.robust.arch=resnet20",
            "student.arch=resnet20",
            "student.kwargs={width: 8}",
            "student_init=natural_teacher",
            f"output.root={tmp_path}",
        ],
    )
    with pytest.raises(ConfigError, match=r"^student_init=natural_teacher: model\.conv1\.weight: shape") as err:
        build_models(cfg)
    assert "\n" not in str(err.value)


def test_another_input_normalisation_is_refused():
    # the inherited weights would see other inputs than in the teacher: not the teacher's function
    torch.manual_seed(0)
    student = model_from_config(ModelConfig(arch="resnet20", mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]), CIFAR)
    with pytest.raises(ValueError, match="normalise or resize their inputs differently"):
        inherit_blocks(student, build("resnet56", 0))
