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


@pytest.mark.parametrize("section, message", [
    ({"eps": 0.0}, r"^eval\.eps: must be in \(0, 1\] \(pixel units\), got 0\.0$"),
    ({"eps": 8.0}, r"^eval\.eps: must be in \(0, 1\] \(pixel units\), got 8\.0$"),
    ({"steps": 0}, r"^eval\.steps: must be >= 1, got 0$"),
    ({"restarts": 0}, r"^eval\.restarts: must be >= 1, got 0$"),
    ({"n_examples": 0}, r"^eval\.n_examples: must be > 0, got 0$"),
    ({"square_queries": 0}, r"^eval\.square_queries: must be >= 1, got 0$"),
    ({"batch_size": -4}, r"^eval\.batch_size: must be > 0, got -4$"),
    ({"attacks": ["clean", "autoattack"]}, r"^eval\.attacks: unknown attack 'autoattack'; allowed: .*aa, aa_fast"),
])
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
    with pytest.raises(EvaluationInputError, match=r"^labels: example 1 has label 10, outside \[0, 10\) of the model's 10 outputs$"):
        evaluate(_tiny(), data, ["clean"], Protocol("t", 0.1, 0.02, 1, 8), progress=False)
    with pytest.raises(EvaluationInputError, match=r"label -1"):
        evaluate(_tiny(), [(torch.rand(1, 2, 2), -1)], ["clean"], Protocol("t", 0.1, 0.02, 1, 8), progress=False)


def test_more_examples_than_the_split_is_an_error():
    data = [(torch.rand(1, 2, 2), 1)] * 5
    with pytest.raises(EvaluationInputError, match=r"^n_examples: must be in \[1, 5\] \(the split has 5 examples\), got 6$"):
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


@pytest.mark.parametrize("flags, message", [
    (["--eps", "2"], r"--eps \(eval\.eps\): must be in \(0, 1\]"),
    (["--steps", "0"], r"--steps \(eval\.steps\): must be >= 1"),
    (["--restarts", "0"], r"--restarts \(eval\.restarts\): must be >= 1"),
    (["--n-examples", "0"], r"--n-examples \(eval\.n_examples\): must be > 0"),
    (["--square-queries", "0"], r"--square-queries \(eval\.square_queries\): must be >= 1"),
    (["--batch-size", "0"], r"--batch-size \(eval\.batch_size\): must be > 0"),
    (["--attacks", "clean,autoattack"], r"--attacks: unknown \['autoattack'\]"),
])
def test_cli_rejects_bad_settings_in_one_line(run_folder, capsys, flags, message):
    code, out, err = _evaluate_cli(["--model", str(run_folder), *flags], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    import re

    assert re.search(message, err), err


def test_cli_never_overwrites_the_published_report(run_folder, shared_data, capsys):
    published = (run_folder / "eval" / "report.json").read_text()
    common = ["--model", str(run_folder), "--data-source", "parquet", "--data-path", str(shared_data), "--attacks", "clean", "--n-examples", "8", "--no-masking-check"]
    code, out, err = _evaluate_cli(common, capsys)
    assert code == 0, err
    assert (run_folder / "eval" / "report.json").read_text() == published
    written = [p for p in (run_folder / "eval").glob("*/report.json")]
    assert len(written) == 1 and written[0].parent.name.startswith("cifar-")
    assert json.loads(written[0].read_text())["attacks"]["clean"]["n"] == 8
    # an explicit --out onto the published folder is refused without --overwrite ...
    code, out, err = _evaluate_cli([*common, "--out", str(run_folder / "eval")], capsys)
    assert code == 2 and "exists; pass --overwrite" in err and (run_folder / "eval" / "report.json").read_text() == published
    # ... and replaces it with it
    code, out, err = _evaluate_cli([*common, "--out", str(run_folder / "eval"), "--overwrite"], capsys)
    assert code == 0 and json.loads((run_folder / "eval" / "report.json").read_text())["attacks"]["clean"]["n"] == 8
