"""Runs that cannot lose work: divergence stops, resume outside the happy path, safe run folders.

Fast tests run in-process on the toy run of tests/conftest.py (an interruption is a
monkeypatched preemption hook raising instead of exiting: ``interrupted_run``); the ``slow`` ones launch
launch/train.py in subprocesses and kill it for real.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY, assert_same_student, interrupted_run, subprocess_env, train_tiny

from derd_scale.config import ConfigError, config_from_dict, load_config, schema_lines
from derd_scale.errors import DivergenceError, ResumeError, RunExistsError

REPO = Path(__file__).resolve().parent.parent


def _checkpoint_names(run_path: Path) -> list[str]:
    from derd_scale.run_dir import RunDir

    return [p.name for p in RunDir(run_path).checkpoint_dirs()]


def _metric_steps(run_path: Path) -> dict[str, list[int]]:
    from derd_scale.run_dir import read_jsonl

    out: dict[str, list[int]] = {}
    for r in read_jsonl(run_path / "metrics.jsonl"):
        out.setdefault(r["stage"], []).append(r["step"])
    return out


# --------------------------------------------------------------------------------------
# Divergence
# --------------------------------------------------------------------------------------


def test_nan_in_a_loss_stops_with_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    from derd_scale.checkpoint import read_checkpoint_state

    monkeypatch.setenv("DERD_INJECT_NAN", "stage2:3")
    with pytest.raises(DivergenceError) as err:
        train_tiny(tmp_path)
    line = str(err.value)
    assert line.startswith("divergence: stage2 step 3: l_1 is nan") and "\n" not in line
    run = tmp_path / "run"
    assert _checkpoint_names(run) == ["stage1-00000004", "stage2-00000002"]
    blob = read_checkpoint_state(run / "checkpoints" / "stage2-00000002")
    assert all(torch.isfinite(t).all() for t in blob["models"]["student"]["model"].values() if t.is_floating_point())
    assert not (run / "student").exists() and not (run / "DONE").exists() and not (run / "eval").exists()
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert (last["stage"], last["step"], last["diverged"], last["l_1"]) == ("stage2", 3, "l_1", "nan")


def test_nan_in_stage1_names_its_loss(tmp_path, monkeypatch):
    monkeypatch.setenv("DERD_INJECT_NAN", "stage1:2")
    with pytest.raises(DivergenceError, match=r"^divergence: stage1 step 2: l_s is nan$"):
        train_tiny(tmp_path)
    assert _checkpoint_names(tmp_path / "run") == []


def test_nan_weights_are_never_checkpointed(tmp_path, monkeypatch):
    # The losses of step 2 are finite; the weights go NaN after it, right before its checkpoint.
    monkeypatch.setenv("DERD_INJECT_NAN", "stage2:2:after")
    with pytest.raises(
        DivergenceError, match=r"^divergence: stage2 step 2: student weight \S+ is nan; the checkpoint was not written"
    ):
        train_tiny(tmp_path)
    assert _checkpoint_names(tmp_path / "run") == ["stage1-00000002", "stage1-00000004"]
    # ... and a resume from the last good checkpoint finishes once the cause is gone.
    monkeypatch.delenv("DERD_INJECT_NAN")
    run = train_tiny(tmp_path)
    assert run.is_finished()


def test_a_non_finite_student_is_never_exported(tmp_path, monkeypatch):
    import derd_scale.trainer as trainer

    monkeypatch.setattr(trainer, "_check_finite_weights", lambda *a, **k: None)  # let it reach the export
    monkeypatch.setenv("DERD_INJECT_NAN", "stage2:4:after")
    with pytest.raises(
        DivergenceError, match=r"^divergence: stage2 step 4: student weight \S+ is nan; nothing exported$"
    ):
        train_tiny(tmp_path)
    assert not (tmp_path / "run" / "student").exists() and not (tmp_path / "run" / "DONE").exists()


def test_push_to_hub_refuses_a_non_finite_model(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from derd_scale.config import RunConfig, save_config
    from derd_scale.export import export_model
    from derd_scale.hub import RunFolderError, stage_upload
    from derd_scale.models import create_model

    run = tmp_path / "run"
    run.mkdir()
    save_config(RunConfig(), run / "config.yaml")
    export_model(
        create_model("small_cnn", 10, in_chans=1, width=4),
        run / "student",
        "small_cnn",
        10,
        1,
        28,
        model_kwargs={"width": 4},
    )
    weights = run / "student" / "model.safetensors"
    sd = load_file(str(weights))
    name = sorted(k for k, v in sd.items() if v.is_floating_point())[0]
    sd[name] = torch.full_like(sd[name], float("inf"))
    save_file(sd, str(weights))
    with pytest.raises(RunFolderError, match=rf"tensor {name} holds Inf values .*refusing to publish it"):
        stage_upload(run, "me/x", tmp_path / "up")
    assert not (tmp_path / "up").exists()

    import importlib.util

    spec = importlib.util.spec_from_file_location("derd_launch_push_to_hub", REPO / "launch" / "push_to_hub.py")
    push_to_hub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(push_to_hub)
    assert push_to_hub.main(["--model", str(run), "--repo-id", "me/x", "--dry-run", str(tmp_path / "up2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds Inf values" in err[0]


def test_run_summary_reads_done(tmp_path):
    from derd_scale.errors import InputError
    from derd_scale.run_dir import RunDir

    run = RunDir(tmp_path / "run")
    (tmp_path / "run").mkdir()
    assert run.summary() == {}  # unfinished
    run.mark_finished({"train_seconds": 12.5, "mixed_precision": "bf16"})
    assert run.summary() == {"train_seconds": 12.5, "mixed_precision": "bf16"}
    run.done_marker.write_text("")  # a hand-made marker
    assert run.summary() == {}
    run.done_marker.write_text("[1, 2]")
    assert run.summary() == {}
    run.done_marker.write_text("{")
    with pytest.raises(InputError, match=r"DONE: not valid JSON \(Expecting property name"):
        run.summary()


# --------------------------------------------------------------------------------------
# Resume outside the happy path
# --------------------------------------------------------------------------------------


def test_every_shipped_config_has_a_deterministic_run_folder():
    from derd_scale.run_dir import run_name

    for path in sorted((REPO / "configs").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.output.name, f"{path.name}: set output.name so a re-run resumes"
        assert run_name(cfg, path.stem) == run_name(load_config(path), path.stem) == cfg.output.name
    # Unset, the name is the config file's stem: no timestamp, the same on every rank.
    assert run_name(config_from_dict({}), "my_experiment") == "my_experiment"


@pytest.mark.parametrize("name", ["..", ".", "", "/abs/path", "a/../../b", "a//b", "~/x", "C:\\runs", "a/./b"])
def test_output_name_cannot_escape_the_root(name):
    with pytest.raises(ConfigError, match=r"^output\.name: "):
        config_from_dict({}, [f"output.name={name}"])


def test_nested_relative_names_stay_allowed():
    assert config_from_dict({}, ["output.name=sweep/lr0.1"]).output.name == "sweep/lr0.1"


def test_resume_continues_metrics_without_duplicates_and_accumulates_time(tmp_path, monkeypatch):
    from derd_scale.checkpoint import read_checkpoint_state

    run_path = interrupted_run(tmp_path, monkeypatch, "stage2:3")
    assert _metric_steps(run_path)["stage2"] == [1, 2, 3]  # step 3 was logged, its checkpoint never written
    saved = read_checkpoint_state(run_path / "checkpoints" / "stage2-00000002")["train_seconds"]
    assert saved > 0
    with open(run_path / "metrics.jsonl", "a") as fh:
        fh.write('{"stage": "stage2", "step": 4, "l_')  # a line torn by the kill
    run = train_tiny(tmp_path)
    assert _metric_steps(run.path) == {"stage1": [1, 2, 3, 4], "stage2": [1, 2, 3, 4]}
    summary = json.loads(run.done_marker.read_text())
    assert summary["train_seconds"] > saved  # the first attempt's time plus the resumed one's


def test_resuming_with_a_changed_config_is_refused_naming_the_keys(tmp_path, monkeypatch):
    run_path = interrupted_run(tmp_path, monkeypatch, "stage2:2")
    before = (run_path / "config.yaml").read_text()
    with pytest.raises(ResumeError) as err:
        train_tiny(tmp_path, "stage2.sa.steps=3", "optim.student.lr=0.05")
    msg = str(err.value)
    assert "the config changed since the run started: stage2.sa.steps (2 -> 3), optim.student.lr (0.01 -> 0.05);" in msg
    assert "output.allow_config_change=true" in msg and "\n" not in msg
    assert (run_path / "config.yaml").read_text() == before  # nothing touched
    # Keys that cannot change the weights do not count.
    quiet = [
        "logging.every_steps=2",
        "output.checkpoint_every=1",
        "eval.attacks=[clean]",
        "data.path=/elsewhere",
        "eval.n_examples=10",
    ]
    with pytest.warns(UserWarning, match="changed config") as record:
        run = train_tiny(tmp_path, "stage2.sa.steps=3", "output.allow_config_change=true", *quiet)
    changed = [str(w.message) for w in record if "changed config" in str(w.message)]
    assert len(changed) == 1 and "(stage2.sa.steps (2 -> 3));" in changed[0]
    assert run.is_finished() and len(list(run.path.glob("config.replaced-*.yaml"))) == 1
    assert yaml.safe_load((run.path / "config.yaml").read_text())["stage2"]["sa"]["steps"] == 3


def test_config_changes_ignore_only_keys_that_cannot_change_results(tmp_path):
    from derd_scale.config import save_config
    from derd_scale.run_dir import config_changes

    saved = tmp_path / "config.yaml"
    save_config(config_from_dict({}), saved)
    assert (
        config_changes(
            saved,
            config_from_dict(
                {},
                [
                    "logging.every_steps=3",
                    "output.root=x",
                    "eval.probe_attacks=[clean]",
                    "preset=derd_paper",
                    "distributed.expected_world_size=2",
                ],
            ),
        )
        == []
    )
    # eval.eps is Stage II's training radius while stage2.eps is unset ...
    assert config_changes(saved, config_from_dict({}, ["eval.eps=0.01"])) == ["eval.eps (None -> 0.01)"]
    assert [
        c.split(" ")[0]
        for c in config_changes(saved, config_from_dict({}, ["teachers.natural.kwargs={width: 8}", "seed=1"]))
    ] == ["seed", "teachers.natural.kwargs"]
    # ... and not once stage2.eps is set on both sides.
    save_config(config_from_dict({}, ["stage2.eps=0.03"]), saved)
    assert config_changes(saved, config_from_dict({}, ["stage2.eps=0.03", "eval.eps=0.01"])) == []


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, monkeypatch):
    run_path = interrupted_run(tmp_path, monkeypatch, "stage2:2")
    newest = run_path / "checkpoints" / "stage2-00000002" / "state.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated
    with pytest.warns(
        UserWarning,
        match=rf"checkpoint {re.escape(str(newest))} is unreadable \(.*\); resuming from stage1-00000004 instead",
    ):
        run = train_tiny(tmp_path)
    assert run.is_finished() and (run_path / "checkpoints" / "stage2-00000002.unreadable").is_dir()
    assert _metric_steps(run.path)["stage2"] == [1, 2, 3, 4]
    assert_same_student(run.path, train_tiny(tmp_path, name="straight").path)


def test_no_readable_checkpoint_is_one_line_naming_the_file(tmp_path, monkeypatch):
    run_path = interrupted_run(tmp_path, monkeypatch, "stage2:2")
    for p in run_path.glob("checkpoints/*/state.pt"):
        p.write_bytes(b"garbage")
    with pytest.raises(
        ResumeError, match=r"^no readable checkpoint in .*checkpoints: .*stage2-00000002/state.pt: unreadable \("
    ) as err:
        train_tiny(tmp_path)
    assert "output.resume=false output.overwrite=true" in str(err.value)


def test_an_unfinished_run_without_checkpoints_starts_fresh(tmp_path, monkeypatch):
    run_path = interrupted_run(tmp_path, monkeypatch, "stage1:1", "output.checkpoint_every=0")
    assert _checkpoint_names(run_path) == [] and _metric_steps(run_path) == {"stage1": [1]}
    run = train_tiny(tmp_path, "output.checkpoint_every=0")
    assert _metric_steps(run.path) == {"stage1": [1, 2, 3, 4], "stage2": [1, 2, 3, 4]}


def test_overwrite_deletes_only_run_folders(tmp_path):
    precious = tmp_path / "run" / "thesis.tex"
    precious.parent.mkdir()
    precious.write_text("years of work")
    for extra in ([], ["output.overwrite=true"]):
        with pytest.raises(RunExistsError, match="is not a derd_scale run folder"):
            train_tiny(tmp_path, *extra)
    assert precious.read_text() == "years of work"
    # An empty folder is fine to use, and a finished run folder is deleted on overwrite.
    precious.unlink()
    run = train_tiny(tmp_path)
    with pytest.raises(RunExistsError, match="holds a finished run"):
        train_tiny(tmp_path)
    marker = run.path / "extra.txt"
    marker.write_text("x")
    train_tiny(tmp_path, "output.overwrite=true")
    assert not marker.exists()


def test_a_symlinked_run_folder_outside_the_root_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "run").symlink_to(outside)
    with pytest.raises(RunExistsError, match="outside output.root"):
        from derd_scale.trainer import train

        train(
            config_from_dict(
                {}, TINY + [f"output.root={tmp_path / 'root'}", "output.name=run", "output.overwrite=true"]
            ),
            "tiny",
        )
    assert outside.is_dir() and not any(outside.iterdir())


def test_metrics_truncation_keeps_records_up_to_the_checkpoint(tmp_path):
    from derd_scale.run_dir import RunDir

    run = RunDir(tmp_path)
    for stage, step in (("stage1", 1), ("stage1", 2), ("stage2", 1), ("stage2", 2), ("stage2", 3)):
        run.log({"stage": stage, "step": step})
    with open(run.metrics_path, "a") as fh:
        fh.write('{"stage": "sta')
    assert run.truncate_metrics("stage2", 2) == 2
    assert [(r["stage"], r["step"]) for r in run.read_metrics()] == [
        ("stage1", 1),
        ("stage1", 2),
        ("stage2", 1),
        ("stage2", 2),
    ]
    assert run.truncate_metrics("stage1", 2) == 2 and len(run.read_metrics()) == 2


def test_print_schema_shows_the_real_nested_defaults():
    lines = {line.split(" ")[2]: line for line in schema_lines()}
    assert "= 'resnet56'" in lines["teachers.natural.arch"] and "= 'resnet4b'" in lines["teachers.robust.arch"]
    assert "= 'resnet18'" in lines["student.arch"]
    assert "= 'adam'" in lines["optim.generator.name"] and "= 0.001" in lines["optim.generator.lr"]
    assert "output.allow_config_change" in lines


# --------------------------------------------------------------------------------------
# Slow: real processes, real kills
# --------------------------------------------------------------------------------------


def _cli(
    tmp_path,
    name: str,
    *extra: str,
    env_extra: dict | None = None,
    wait: bool = True,
    steps=("stage1.steps=4", "stage2.steps=6"),
):
    args = [
        sys.executable,
        str(REPO / "launch" / "train.py"),
        "--set",
        f"output.root={tmp_path}",
        "--set",
        f"output.name={name}",
    ]
    for item in TINY + list(steps) + list(extra):
        args += ["--set", item]
    env = subprocess_env(**(env_extra or {}))  # the same thread count as this process
    if not wait:
        return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """The uninterrupted reference (stage1 4 steps, stage2 6 steps)."""
    from accelerate.state import AcceleratorState

    root = tmp_path_factory.mktemp("straight")
    AcceleratorState._reset_state(reset_partial_state=True)
    return train_tiny(root, "stage1.steps=4", "stage2.steps=6", name="straight").path


@pytest.mark.slow
def test_cli_nan_injection_stops_cleanly(tmp_path):
    out = _cli(tmp_path, "nan", env_extra={"DERD_INJECT_NAN": "stage2:3"})
    assert out.returncode == 3, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("divergence: stage2 step 3: l_1 is nan") and "Traceback" not in out.stderr
    run = tmp_path / "nan"
    assert _checkpoint_names(run) == ["stage1-00000004", "stage2-00000002"]
    assert not (run / "student").exists() and not (run / "DONE").exists() and not (run / "eval").exists()


@pytest.mark.slow
def test_cli_corrupt_newest_checkpoint_falls_back_to_identical_weights(tmp_path, straight_run):
    killed = _cli(tmp_path, "run", env_extra={"DERD_SIMULATE_PREEMPTION": "stage2:4"})
    assert killed.returncode == 17 and "simulated preemption at stage2:4" in killed.stderr
    assert _checkpoint_names(tmp_path / "run") == ["stage2-00000002", "stage2-00000004"]
    state = tmp_path / "run" / "checkpoints" / "stage2-00000004" / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    resumed = _cli(tmp_path, "run")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (
        f"checkpoint {state.relative_to(tmp_path)} is unreadable" in resumed.stderr
        or f"checkpoint {state} is unreadable" in resumed.stderr
    )
    assert "resumed from" in resumed.stdout and "stage2-00000002" in resumed.stdout
    assert_same_student(straight_run, tmp_path / "run")
    assert _metric_steps(tmp_path / "run") == {"stage1": [1, 2, 3, 4], "stage2": [1, 2, 3, 4, 5, 6]}


@pytest.mark.slow
@pytest.mark.parametrize("where", ["stage1", "stage2", "stage2-save"])
def test_kill_at_a_random_point_resumes_to_identical_weights(tmp_path, straight_run, where):
    rng = random.Random(f"derd-{where}")
    stage = where.split("-")[0]
    if where.endswith("save"):
        point = f"stage2:{rng.choice([2, 4])}:save"  # inside a checkpoint, before state.pt is in place
    else:
        point = f"{stage}:{rng.randint(1, 3 if stage == 'stage1' else 5)}"
    killed = _cli(tmp_path, "run", env_extra={"DERD_SIMULATE_PREEMPTION": point})
    assert killed.returncode == 17, (point, killed.stderr[-2000:])
    assert not (tmp_path / "run" / "DONE").exists()
    resumed = _cli(tmp_path, "run")
    assert resumed.returncode == 0, (point, resumed.stderr[-2000:])
    assert_same_student(straight_run, tmp_path / "run")
    assert _metric_steps(tmp_path / "run") == {"stage1": [1, 2, 3, 4], "stage2": [1, 2, 3, 4, 5, 6]}, point


@pytest.mark.slow
def test_real_sigkill_mid_run_resumes_to_identical_weights(tmp_path, straight_run):
    """SIGKILL from outside at an arbitrary moment (possibly mid-checkpoint), twice, then finish."""
    rng = random.Random(13)
    for target in (("stage1", rng.randint(1, 3)), ("stage2", rng.randint(1, 5))):
        proc = _cli(tmp_path, "run", wait=False)
        metrics = tmp_path / "run" / "metrics.jsonl"
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if metrics.exists():
                steps = _metric_steps_safe(metrics)
                if target[1] in steps.get(target[0], []):
                    break
            time.sleep(0.05)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    resumed = _cli(tmp_path, "run")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_student(straight_run, tmp_path / "run")
    assert _metric_steps(tmp_path / "run") == {"stage1": [1, 2, 3, 4], "stage2": [1, 2, 3, 4, 5, 6]}


def _metric_steps_safe(path: Path) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        out.setdefault(r["stage"], []).append(r["step"])
    return out
