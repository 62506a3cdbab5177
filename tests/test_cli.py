"""The ``derd-scale`` command (derd_scale/cli.py, derd_scale/commands/): dispatch, ``--help`` on
every subcommand, the aliases, the launch/ shims, and a real non-editable install run from
another folder.

    pytest -q tests/test_cli.py
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from derd_scale import cli

REPO = Path(__file__).resolve().parent.parent


def test_top_level_help_lists_every_subcommand(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("train", "evaluate", "teacher", "push", "quickstart"):
        assert f"\n  {name} " in out, name


def test_no_or_unknown_subcommand_is_one_line_exit_2(capsys):
    assert cli.main([]) == 2
    assert "usage: derd-scale" in capsys.readouterr().err
    assert cli.main(["trian"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["derd-scale: error: unknown command 'trian'; choose from train, evaluate, teacher, push, quickstart"]


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_subcommand_has_help_under_its_cli_name(name, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main([name, "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: derd-scale {name} "), out[:200]


def test_train_and_evaluate_dispatch_to_the_commands(capsys):
    from derd_scale.config import EvaluateConfig, schema_lines

    assert cli.main(["train", "--print-schema"]) == 0
    assert capsys.readouterr().out == "\n".join(schema_lines()) + "\n"
    assert cli.main(["evaluate", "--print-schema"]) == 0
    assert capsys.readouterr().out == "\n".join(schema_lines(EvaluateConfig)) + "\n"
    # config errors keep their one line and exit code through the dispatcher
    assert cli.main(["train", "--set", "stage2.sa.stepz=3"]) == 2
    assert capsys.readouterr().err.startswith("config error: stage2.sa.stepz: unknown key")


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_a_usage_error_is_one_line_naming_the_cli(name, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main([name, "--frobnicate"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    if name == "push":  # its required options are named first
        assert err.startswith("derd-scale push: error: the following arguments are required: --model, --repo-id")
        assert "\n" not in err and err.endswith("(--help lists the options)")
    else:
        assert err == f"derd-scale {name}: error: unrecognized arguments: --frobnicate (--help lists the options)"


def test_launch_shims_are_the_package_commands():

    for script, module in (
        ("train.py", "train"),
        ("evaluate.py", "evaluate"),
        ("train_teacher.py", "teacher"),
        ("push_to_hub.py", "push"),
        ("quickstart.py", "quickstart"),
    ):
        spec = importlib.util.spec_from_file_location(f"shim_{module}", REPO / "launch" / script)
        shim = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(shim)
        target = importlib.import_module(f"derd_scale.commands.{module}")
        assert shim.main is target.main and shim.build_parser is target.build_parser, script
        # a shim is a shim: no logic of its own
        code = [line for line in (REPO / "launch" / script).read_text().split('"""', 2)[2].splitlines() if line.strip()]
        assert len(code) <= 8, f"launch/{script} grew logic: {code}"


def test_packaged_quickstart_config_is_the_shipped_one():
    from derd_scale.commands.quickstart import QUICKSTART_CONFIG

    assert QUICKSTART_CONFIG.read_text() == (REPO / "configs" / "fmnist_quickstart.yaml").read_text(), (
        "copy configs/fmnist_quickstart.yaml to derd_scale/resources/configs/ (the quickstart reads the packaged copy)"
    )


@pytest.mark.slow
def test_non_editable_install_runs_from_another_folder(tmp_path):
    """``pip install .`` (a built wheel, not the editable checkout) into a folder; the console
    scripts then run from an unrelated working directory with the installed package."""
    # Build from a copy: setuptools writes build/ and *.egg-info/ next to the sources.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "derd_scale", src / "derd_scale", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target)]
    subprocess.run(
        [*pip, "."],
        cwd=src,
        check=True,
        capture_output=True,
        timeout=600,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = dict(os.environ, PYTHONPATH=str(target))
    where = subprocess.run(
        [sys.executable, "-c", "import derd_scale; print(derd_scale.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert where.startswith(str(target)), f"imported {where}, not the installed copy"
    assert (target / "derd_scale" / "resources" / "configs" / "fmnist_quickstart.yaml").exists()
    assert (target / "derd_scale" / "resources" / "robust_accuracy" / "robust_accuracy.py").exists()
    scripts = target / "bin"
    out = subprocess.run(
        [str(scripts / "derd-scale"), "--help"], cwd=elsewhere, env=env, capture_output=True, text=True, check=True
    )
    assert "quickstart" in out.stdout
    for name in cli.COMMANDS:
        out = subprocess.run(
            [str(scripts / "derd-scale"), name, "--help"], cwd=elsewhere, env=env, capture_output=True, text=True
        )
        assert out.returncode == 0 and out.stdout.startswith(f"usage: derd-scale {name}"), (name, out.stderr[-500:])
    for alias in ("derd-train", "derd-evaluate"):
        out = subprocess.run([str(scripts / alias), "--help"], cwd=elsewhere, env=env, capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout.startswith(f"usage: {alias}"), (alias, out.stderr[-500:])
    out = subprocess.run(
        [sys.executable, "-m", "derd_scale", "teacher", "--help"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and "TeacherTrainConfig" in out.stdout
