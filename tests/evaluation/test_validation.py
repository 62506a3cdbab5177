"""Evaluation settings and inputs are checked up front, one line naming the key; the CLI never
overwrites the report that push_to_hub publishes."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from derd_scale.config import ConfigError, EvalConfig, config_from_dict
from derd_scale.evaluation import EvaluationInputError, Protocol, evaluate, protocol_from_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "section, message",
    [
        ({"eps": 0.0}, r"^eval\.eps: must be in \(0, 1\] \(pixel units\), got 0\.0$"),
        ({"eps": 8.0}, r"^eval\.eps: must be in \(0, 1\] \(pixel units\), got 8\.0$"),
        ({"steps": 0}, r"^eval\.steps: must be >= 1, got 0$"),
        ({"restarts": 0}, r"^eval\.restarts: must be >= 1, got 0$"),
        ({"n_examples": 0}, r"^eval\.n_examples: must be > 0, got 0$"),
        ({"square_queries": 0}, r"^eval\.square_queries: must be >= 1, got 0$"),
        ({"batch_size": -4}, r"^eval\.batch_size: must be > 0, got -4$"),
        ({"attacks": ["clean", "autoattack"]}, r"^eval\.attacks: unknown attack 'autoattack'; allowed: .*aa, aa_fast"),
    ],
)
def test_each_bad_setting_is_one_line_naming_its_key(section, message):
    with pytest.raises(ConfigError, match=message) as err:
        config_from_dict({"eval": section})
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=message):  # the same check guards protocol_from_config
        protocol_from_config(EvalConfig(**section))


def test_eps_different_from_the_preset_warns():
    with pytest.warns(UserWarning, match=r"eval\.eps: 0\.00784314 differs from preset 'cifar'"):
        p = protocol_from_config(EvalConfig(protocol="cifar", eps=2 / 255))
    assert p.name == "cifar+override"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        protocol_from_config(EvalConfig(protocol="cifar", eps=8 / 255))  # the preset's own ε: silent


def _tiny():
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 10)).eval()


def test_labels_outside_the_classes_are_an_error():
    data = [(torch.rand(1, 2, 2), 3), (torch.rand(1, 2, 2), 10)]
    with pytest.raises(
        EvaluationInputError, match=r"^labels: example 1 has label 10, outside \[0, 10\) of the model's 10 outputs$"
    ):
        evaluate(_tiny(), data, ["clean"], Protocol("t", 0.1, 0.02, 1, 8), progress=False)
    with pytest.raises(EvaluationInputError, match=r"label -1"):
        evaluate(_tiny(), [(torch.rand(1, 2, 2), -1)], ["clean"], Protocol("t", 0.1, 0.02, 1, 8), progress=False)


def test_more_examples_than_the_split_is_an_error():
    data = [(torch.rand(1, 2, 2), 1)] * 5
    with pytest.raises(
        EvaluationInputError, match=r"^n_examples: must be in \[1, 5\] \(the split has 5 examples\), got 6$"
    ):
        evaluate(_tiny(), data, ["clean"], Protocol("t", 0.1, 0.02, 1, 8), n_examples=6, progress=False)
    assert evaluate(_tiny(), data, ["clean"], Protocol("t", 0.1, 0.02, 1, 8), n_examples=3, progress=False).n == 3


def _evaluate_cli(argv, capsys):
    spec = importlib.util.spec_from_file_location("evaluate_cli", REPO / "launch" / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    code = module.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def run_folder(tmp_path):
    from derd_scale.config import RunConfig, save_config
    from derd_scale.export import export_model
    from derd_scale.models import create_model

    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    save_config(RunConfig(), run / "config.yaml")
    torch.manual_seed(0)
    export_model(create_model("resnet20", 10), run / "student", "resnet20", 10, 3, 32)
    (run / "eval" / "report.json").write_text('{"attacks": {"clean": {"accuracy": 0.5}}, "published": true}')
    return run


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--set", "eval.eps=2"], r"^config error: eval\.eps: must be in \(0, 1\]"),
        (["--set", "eval.steps=0"], r"^config error: eval\.steps: must be >= 1"),
        (["--set", "eval.restarts=0"], r"^config error: eval\.restarts: must be >= 1"),
        (["--set", "eval.n_examples=0"], r"^config error: eval\.n_examples: must be > 0"),
        (["--set", "eval.square_queries=0"], r"^config error: eval\.square_queries: must be >= 1"),
        (["--set", "eval.batch_size=0"], r"^config error: eval\.batch_size: must be > 0"),
        (["--set", "eval.attacks=[clean,autoattack]"], r"^config error: eval\.attacks: unknown attack 'autoattack'"),
        (
            ["--set", "eval.stepz=20"],
            r"^config error: eval\.stepz: unknown key; allowed: protocol, attacks, eps, alpha, steps",
        ),
        (["--set", "eval.steps=twenty"], r"^config error: eval\.steps: expected an integer, got 'twenty'"),
        (["--set", "eval.protocol=cifar100"], r"^config error: eval\.protocol: unknown 'cifar100'"),
    ],
)
def test_cli_rejects_bad_settings_in_one_line(run_folder, capsys, flags, message):
    code, out, err = _evaluate_cli(["--model", str(run_folder), *flags], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    import re

    assert re.search(message, err), err


def test_cli_model_errors_name_the_key(tmp_path, capsys):
    code, out, err = _evaluate_cli([], capsys)
    assert (
        code == 2
        and err.strip()
        == "config error: model: required: a run folder, an export folder, or a checkpoint file (with arch)"
    )
    code, out, err = _evaluate_cli(["--model", str(tmp_path / "nothing")], capsys)
    assert code == 2 and err.strip().startswith("config error: model: ") and "is not a run folder" in err
    (tmp_path / "w.pth").write_bytes(b"")
    code, out, err = _evaluate_cli(["--model", str(tmp_path / "w.pth")], capsys)
    assert code == 2 and err.strip().startswith("config error: arch: required with a checkpoint file")


def test_cli_print_schema_lists_every_key(capsys):
    from derd_scale.config import EvaluateConfig, schema_lines

    code, out, err = _evaluate_cli(["--print-schema"], capsys)
    assert code == 0
    keys = [line.split()[0] for line in out.splitlines()]
    assert keys == [line.split()[0] for line in schema_lines(EvaluateConfig)]
    for key in (
        "model",
        "arch",
        "data.name",
        "data.eval_split",
        "eval.eps",
        "eval.attacks",
        "eval.n_examples",
        "eval.masking_check",
        "seed",
        "out",
        "overwrite",
    ):
        assert key in keys, key


def test_cli_defaults_come_from_the_run_then_yaml_then_set(run_folder, tmp_path, capsys):
    """With a run folder, data.* and the attack budget start from its config.yaml; the YAML and
    --set win; other eval keys keep evaluate's own defaults (all examples, the six columns)."""
    import yaml

    from derd_scale.config import RunConfig, save_config

    run_cfg = RunConfig()
    run_cfg.data.name, run_cfg.eval.steps, run_cfg.eval.restarts, run_cfg.eval.n_examples = "fashion_mnist", 7, 3, 50
    run_cfg.eval.protocol, run_cfg.eval.attacks = "fashion_mnist", ["clean"]
    save_config(run_cfg, run_folder / "config.yaml")
    (tmp_path / "e.yaml").write_text("eval:\n  restarts: 2\n  eps: 0.05\nseed: 4\n")
    with pytest.warns(UserWarning, match="differs from preset 'fashion_mnist'"):
        code, out, err = _evaluate_cli(
            [
                "--model",
                str(run_folder),
                "--config",
                str(tmp_path / "e.yaml"),
                "--set",
                "eval.eps=0.03",
                "--print-config",
            ],
            capsys,
        )
    assert code == 0, err
    resolved = yaml.safe_load(out)
    assert resolved["data"]["name"] == "fashion_mnist" and resolved["eval"]["protocol"] == "fashion_mnist"
    assert (
        resolved["eval"]["steps"] == 7
        and resolved["eval"]["restarts"] == 2
        and resolved["eval"]["eps"] == 0.03
        and resolved["seed"] == 4
    )
    assert resolved["eval"]["n_examples"] is None and resolved["eval"]["attacks"] == [
        "clean",
        "fgsm",
        "pgd_s",
        "pgd_t",
        "cw",
        "aa",
    ]
    assert resolved["model"] == str(run_folder) and resolved["out"].startswith(
        str(run_folder / "eval" / "fashion_mnist+override-")
    )


def test_cli_never_overwrites_the_published_report(run_folder, shared_data, capsys):
    published = (run_folder / "eval" / "report.json").read_text()
    common = [
        "--model",
        str(run_folder),
        "--set",
        "data.source=parquet",
        "--set",
        f"data.path={shared_data}",
        "--set",
        "eval.attacks=[clean]",
        "--set",
        "eval.n_examples=8",
        "--set",
        "eval.masking_check=false",
    ]
    code, out, err = _evaluate_cli(common, capsys)
    assert code == 0, err
    assert (run_folder / "eval" / "report.json").read_text() == published
    written = [p for p in (run_folder / "eval").glob("*/report.json")]
    assert len(written) == 1 and written[0].parent.name.startswith("cifar-")
    assert json.loads(written[0].read_text())["attacks"]["clean"]["n"] == 8
    # the resolved config is saved beside the report, and loads back to the same settings
    from derd_scale.config import EvaluateConfig, load_config

    saved = load_config(written[0].parent / "eval_config.yaml", cls=EvaluateConfig)
    assert (
        saved.out == str(written[0].parent)
        and saved.eval.n_examples == 8
        and saved.eval.attacks == ["clean"]
        and saved.data.path == str(shared_data)
    )
    # an explicit --out onto the published folder is refused without --overwrite ...
    code, out, err = _evaluate_cli([*common, "--out", str(run_folder / "eval")], capsys)
    assert code == 2 and "exists; pass --overwrite" in err and len(err.strip().splitlines()) == 1
    assert (run_folder / "eval" / "report.json").read_text() == published
    # ... and replaces it with it (--overwrite is overwrite=true)
    code, out, err = _evaluate_cli([*common, "--out", str(run_folder / "eval"), "--set", "overwrite=true"], capsys)
    assert code == 0 and json.loads((run_folder / "eval" / "report.json").read_text())["attacks"]["clean"]["n"] == 8
