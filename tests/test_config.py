import subprocess
import sys

import pytest
import yaml

from derd_scale.config import ConfigError, RunConfig, config_from_dict, load_config, save_config, schema_lines


def test_defaults_follow_method_decisions():
    cfg = RunConfig()
    assert cfg.generator.latent_dim == 256
    assert cfg.generator.pseudo_labels == "argmax"
    assert cfg.stage2.sa.steps == 10 and cfg.stage2.sa.alpha == pytest.approx(2 / 255)
    assert cfg.stage2.sa.discrepancy_on == "probs"
    assert cfg.stage2.aggregation.granularity == "global"
    assert cfg.stage2.aggregation.method == "sga"
    assert cfg.stage2.eg.natural_data == "x_d"
    assert cfg.optim.student.lr == 0.01 and cfg.optim.student.momentum == 0.9 and cfg.optim.student.weight_decay == 5e-4


def test_dotted_overrides_and_nested_defaults():
    cfg = config_from_dict(
        {"teachers": {"natural": {"checkpoint": "a.th"}}},
        ["stage2.sa.steps=5", "stage2.sa.alpha=0.01", "student.kwargs.width=8"],
    )
    assert cfg.stage2.sa.steps == 5 and cfg.stage2.sa.alpha == 0.01
    assert cfg.teachers.natural.arch == "resnet56" and cfg.teachers.natural.checkpoint == "a.th"
    assert cfg.teachers.robust.arch == "resnet4b"  # untouched sibling keeps its default
    assert cfg.student.kwargs == {"width": 8}


def test_override_key_reads_the_key_as_the_config_does():
    from derd_scale.config import override_key

    assert override_key(" stage2.sa.steps = 5") == "stage2.sa.steps" and override_key("a.b=c=d") == "a.b"
    with pytest.raises(ConfigError, match="key.sub=value"):
        override_key("stage2.sa.steps")


def test_bad_key_is_one_line_naming_it():
    with pytest.raises(ConfigError) as err:
        config_from_dict({}, ["stage2.sa.stepz=5"])
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("stage2.sa.stepz: unknown key") and "steps" in msg
    with pytest.raises(ConfigError, match=r"^stage1\.lambda_x: unknown key"):
        config_from_dict({"stage1": {"lambda_x": 1}})


def test_bad_value_is_one_line_naming_key_and_allowed_values():
    with pytest.raises(ConfigError) as err:
        config_from_dict({}, ["stage2.aggregation.method=avg"])
    msg = str(err.value)
    assert "\n" not in msg
    assert msg == "stage2.aggregation.method: invalid value 'avg'; allowed: sum, ga, sga"
    with pytest.raises(ConfigError, match=r"^stage2\.sa\.steps: expected an integer"):
        config_from_dict({}, ["stage2.sa.steps=ten"])
    with pytest.raises(ConfigError, match=r"^stage1\.batch_size: must be > 0"):
        config_from_dict({}, ["stage1.batch_size=0"])
    with pytest.raises(ConfigError, match=r"^eval\.attacks: unknown attack 'pgd'"):
        config_from_dict({"eval": {"attacks": ["clean", "pgd"]}})


def test_yaml_roundtrip(tmp_path):
    cfg = config_from_dict({}, ["seed=3", "stage2.eg.lambda_rob=2.5"])
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg
    assert yaml.safe_load((tmp_path / "c.yaml").read_text())["stage2"]["eg"]["lambda_rob"] == 2.5


def test_schema_documents_every_leaf():
    lines = schema_lines()
    assert any(line.strip().startswith("stage2.sa.discrepancy_on") and "softmax" in line for line in lines)
    assert any(line.strip().startswith("stage2.aggregation.sigma_r") for line in lines)


def test_every_shipped_config_validates():
    from pathlib import Path

    configs = sorted(Path(__file__).resolve().parent.parent.joinpath("configs").glob("*.yaml"))
    assert configs, "no run configs shipped"
    for path in configs:
        load_config(path)


def test_python_m_config_prints_schema():
    out = subprocess.run([sys.executable, "-m", "derd_scale.config"], capture_output=True, text=True, check=True).stdout
    assert "stage2.sa.steps" in out and "distributed.backend" in out


def test_yaml_bare_no_maps_to_the_literal():
    assert config_from_dict({"distributed": {"mixed_precision": False}}).distributed.mixed_precision == "no"
    assert config_from_dict({}, ["distributed.mixed_precision=no"]).distributed.mixed_precision == "no"


def test_presets_sit_under_the_yaml_and_the_overrides():
    from derd_scale.config import ConfigError, RunConfig

    paper = config_from_dict({}, ["preset=derd_paper"])
    assert paper.stage2 == RunConfig().stage2  # the paper's method is the defaults
    rec = config_from_dict({}, ["preset=derd_recommended"])
    assert rec.stage2.eg.robust_data == "x_adv" and rec.stage2.eg.robust_target == "anchor" and rec.stage2.sa.ball
    assert (rec.stage1.lambda_adv, rec.stage1.generator_steps) == (0.3, 4)  # the recommended Stage I
    assert (paper.stage1.lambda_adv, paper.stage1.generator_steps) == (0.0, 1)  # Eq. 11, one G update
    mine = config_from_dict(
        {"preset": "derd_recommended", "stage2": {"eg": {"robust_data": "x_d"}}}, ["stage2.eg.lambda_nat=0.5"]
    )
    assert mine.stage2.eg.robust_data == "x_d" and mine.stage2.eg.lambda_nat == 0.5 and mine.stage2.sa.ball
    with pytest.raises(ConfigError, match=r"^preset: unknown 'derd_best'; allowed: derd_paper, derd_recommended$"):
        config_from_dict({}, ["preset=derd_best"])


def test_set_accepts_exponent_floats():
    assert config_from_dict({}, ["optim.student.lr=1e-3"]).optim.student.lr == 1e-3


def test_schema_shows_each_sections_own_defaults():
    lines = {line.split()[0]: line for line in schema_lines()}
    assert "= 'resnet56'" in lines["teachers.natural.arch"] and "= 'resnet4b'" in lines["teachers.robust.arch"]
    assert "= 'resnet18'" in lines["student.arch"] and "= 'adam'" in lines["optim.generator.name"]


def test_a_wrong_type_under_an_optional_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^eval\.steps: expected an integer, got 'ten'$"):
        config_from_dict({}, ["eval.steps=ten"])


def test_the_loader_is_generic_over_the_root_dataclass(tmp_path):
    from derd_scale.config import EvaluateConfig

    (tmp_path / "e.yaml").write_text("model: runs/x\neval: {eps: 0.1, attacks: [clean]}\n")
    cfg = load_config(tmp_path / "e.yaml", ["eval.steps=20", "data.name=fashion_mnist"], cls=EvaluateConfig)
    assert (
        isinstance(cfg, EvaluateConfig)
        and cfg.eval.eps == 0.1
        and cfg.eval.steps == 20
        and cfg.data.name == "fashion_mnist"
    )
    assert cfg.eval.n_examples is None  # evaluate's own default: the whole split
    save_config(cfg, tmp_path / "again.yaml")
    assert load_config(tmp_path / "again.yaml", cls=EvaluateConfig) == cfg
    with pytest.raises(ConfigError, match=r"^eval\.stepz: unknown key; allowed: protocol, attacks"):
        load_config(None, ["model=x", "eval.stepz=1"], cls=EvaluateConfig)
    with pytest.raises(
        ConfigError, match=r"^stage2: unknown key; allowed: model, arch, data, eval, seed, out, overwrite$"
    ):
        config_from_dict({"model": "x", "stage2": {}}, cls=EvaluateConfig)
    with pytest.raises(
        ConfigError, match=r"^eval\.eps: must be in \(0, 1\]"
    ):  # the section's validation (validate_eval) runs
        config_from_dict({"model": "x"}, ["eval.eps=3"], cls=EvaluateConfig)
    keys = [line.split()[0] for line in schema_lines(EvaluateConfig)]
    assert keys[:3] == ["model", "arch", "data.name"] and "eval.eps" in keys and "stage2.sa.steps" not in keys


@pytest.mark.parametrize(
    "extra, message",
    [
        (["stage2.replay_steps=-1"], r"^stage2\.replay_steps: must be ≥ 0"),
        ([], r"^stage2\.eg\.natural_data: 'x_d' with stage2\.replay_steps > 0; a replayed anchor has no x_d"),
        (["preset=derd_recommended", "stage2.eg.robust_target=x_d"], r"^stage2\.eg\.robust_target: 'x_d' with"),
        (["preset=derd_recommended", "stage2.eg.robust_data=x_d"], r"^stage2\.eg\.robust_data: 'x_d' with"),
        (["preset=derd_recommended", "stage2.eg.class_balance=true"], r"^stage2\.eg\.class_balance: True with"),
        (["preset=derd_recommended", "method=rslad"], r"^stage2\.replay_steps: only DERD's Stage II keeps a bank"),
    ],
)
def test_stage2_replay_needs_the_anchor_side_targets(extra, message):
    replay = [] if extra and extra[0].startswith("stage2.replay_steps") else ["stage2.replay_steps=4"]
    with pytest.raises(ConfigError, match=message):
        config_from_dict({}, replay + extra)
    config_from_dict({}, ["preset=derd_recommended", "stage2.replay_steps=4"])  # the recommended targets: fine


@pytest.mark.parametrize(
    "extra, message",
    [
        (["stage2.eg.robust_prior_correction=-0.5"], r"^stage2\.eg\.robust_prior_correction: must be ≥ 0"),
        (
            ["preset=derd_recommended", "stage2.eg.robust_prior_correction=1", "stage2.replay_steps=4"],
            r"^stage2\.eg\.robust_prior_correction: 1\.0 with stage2\.replay_steps > 0",
        ),
    ],
)
def test_robust_prior_correction_is_checked(extra, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({}, extra)
    for preset in ("derd_recommended", "derd_paper"):  # any robust target: its own batch marginal
        cfg = config_from_dict({}, [f"preset={preset}", "stage2.eg.robust_prior_correction=0.5"])
        assert cfg.stage2.eg.robust_prior_correction == 0.5


@pytest.mark.parametrize(
    "extra, message",
    [
        (["stage2.generator_batch_size=0"], r"^stage2\.generator_batch_size: must be > 0"),
        (
            ["stage2.generator_batch_size=64", "stage2.generator_updates=false"],
            r"^stage2\.generator_batch_size: G takes no",
        ),
        (["stage2.generator_batch_size=64", "method=rslad"], r"^stage2\.generator_batch_size: only DERD's Stage II"),
        (
            ["stage2.generator_batch_size=6", "distributed.gradient_accumulation_steps=4"],
            r"^stage2\.generator_batch_size: 6 is not divisible by distributed\.gradient_accumulation_steps=4",
        ),
    ],
)
def test_generator_batch_size_is_checked(extra, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({}, extra)
    assert config_from_dict({}, ["stage2.generator_batch_size=64"]).stage2.generator_batch_size == 64
