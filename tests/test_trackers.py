"""Experiment trackers (derd_scale/trackers.py): a run with ``logging.trackers=[tensorboard]``
leaves event files whose scalars equal metrics.jsonl (also after a kill and resume), plus the
config, the final evaluation and the curves image; a missing tracker package is one line before
anything is written.

    pytest -q tests/test_trackers.py
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import TINY, interrupted_run, train_tiny  # the toy run

from derd_scale.config import ConfigError, config_from_dict
from derd_scale.run_dir import RunDir, read_jsonl
from derd_scale.trackers import Trackers, flat_config, scalars, start_trackers

SHARED = (Path(__file__).resolve().parent.parent.parent / "shared" / "data").resolve()


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(folder.rglob("events.out.tfevents.*"))
    assert files, f"no event file under {folder}"
    scalars_, images = {}, {}
    for f in files:
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0, "images": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars_.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
        for tag in acc.Tags()["images"]:
            images[tag] = acc.Images(tag)
    return scalars_, images


def test_tensorboard_event_scalars_equal_metrics_jsonl(tmp_path):
    pytest.importorskip("tensorboard")
    from derd_scale.trainer import train

    cfg = config_from_dict(
        {},
        TINY
        + [
            f"output.root={tmp_path}",
            "output.name=tb",
            "stage1.steps=3",
            "stage2.steps=3",
            "logging.trackers=[tensorboard]",
            "eval.final=true",
            "eval.attacks=[clean]",
            "eval.n_examples=8",
            "data.source=parquet",
            f"data.path={SHARED}",
        ],
    )
    run = train(cfg, "tiny")
    records = read_jsonl(run.metrics_path)
    assert [r["stage"] for r in records] == ["stage1"] * 3 + ["stage2"] * 3
    logged, images = _events(run.path / "trackers" / "tb")

    expected = {}
    for r in records:
        step = r["step"] + (3 if r["stage"] == "stage2" else 0)  # Stage II continues after Stage I's steps
        for tag, value in scalars(r).items():
            expected.setdefault(tag, {})[step] = value
    assert any(t.startswith("stage1/") for t in expected) and "stage2/l_1" in expected, sorted(expected)
    metric_tags = {t for t in logged if not t.startswith("eval/")}
    assert metric_tags == set(expected), sorted(metric_tags ^ set(expected))
    for tag, by_step in expected.items():
        assert set(logged[tag]) == set(by_step), tag
        for step, value in by_step.items():
            if np.isnan(value):
                assert np.isnan(logged[tag][step]), (tag, step)
            else:  # event files store float32
                assert logged[tag][step] == np.float32(value), (tag, step, logged[tag][step], value)

    report = json.loads((run.path / "eval" / "report.json").read_text())
    assert logged["eval/clean"] == {6: np.float32(report["attacks"]["clean"]["accuracy"])}
    assert "curves" in images and (run.path / "curves.png").is_file()
    hparams = list((run.path / "trackers" / "tb").rglob("hparams.yml"))
    assert hparams, "init_trackers did not store the resolved config"
    import yaml

    stored = yaml.safe_load(hparams[0].read_text())
    assert stored["stage2.sa.steps"] == 2 and stored["logging.trackers"] == '["tensorboard"]'


def _scalar_stream(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar event of the TensorBoard run ``folder`` (all its event files, as TensorBoard
    reads them: in file order, honouring a restarted writer's purge), as (step, value) per tag."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_after_a_kill_and_resume_tensorboard_holds_each_step_once_as_metrics_jsonl(tmp_path, monkeypatch):
    """The killed attempt logged stage-II step 3 past its last checkpoint (step 2); the resumed
    run logs step 3 again. metrics.jsonl keeps the resumed run's record only, and so must the
    TensorBoard stream: every scalar once per step, with metrics.jsonl's value."""
    pytest.importorskip("tensorboard")
    tb = ["logging.trackers=[tensorboard]", "logging.project=tb"]
    run_path = interrupted_run(tmp_path, monkeypatch, "stage2:3", *tb)
    before = _scalar_stream(run_path / "trackers" / "tb")
    assert [s for s, _ in before["stage2/l_1"]] == [5, 6, 7]  # step 3 (global 4 + 3) reached the event file

    run = train_tiny(tmp_path, *tb)
    records = read_jsonl(run.metrics_path)
    assert [(r["stage"], r["step"]) for r in records] == [("stage1", s) for s in range(1, 5)] + [
        ("stage2", s) for s in range(1, 5)
    ]
    expected: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        step = r["step"] + (4 if r["stage"] == "stage2" else 0)
        for tag, value in scalars(r).items():
            expected.setdefault(tag, []).append((step, value))
    logged = _scalar_stream(run.path / "trackers" / "tb")
    assert set(logged) == set(expected), sorted(set(logged) ^ set(expected))
    for tag, stream in expected.items():
        assert [s for s, _ in logged[tag]] == [s for s, _ in stream], tag  # each step once, in order
        for (step, got), (_, value) in zip(logged[tag], stream):
            assert np.isnan(got) if np.isnan(value) else got == np.float32(value), (tag, step, got, value)


def test_missing_tracker_package_is_one_line_before_anything_is_written(tmp_path, monkeypatch, capsys):
    from derd_scale.commands.train import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    argv = []
    for item in TINY + [f"output.root={tmp_path / 'runs'}", "output.name=x", "logging.trackers=[wandb]"]:
        argv += ["--set", item]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "input error: logging.trackers: wandb needs the 'wandb' package, which is not installed: "
        "pip install wandb (or remove wandb from logging.trackers)"
    ]
    assert not (tmp_path / "runs").exists()


def test_unknown_tracker_is_a_config_error():
    with pytest.raises(
        ConfigError, match=r"^logging\.trackers\[0\]: invalid value 'tensorbord'; allowed: tensorboard, wandb"
    ):
        config_from_dict({}, ["logging.trackers=[tensorbord]"])


def test_off_the_main_process_or_without_trackers_nothing_subscribes(tmp_path):
    cfg = config_from_dict({}, ["logging.trackers=[tensorboard]"])
    run = RunDir(tmp_path)
    worker = SimpleNamespace(is_main_process=False)
    assert start_trackers(worker, cfg, run).names == [] and run.listeners == []
    main = SimpleNamespace(is_main_process=True)
    assert start_trackers(main, config_from_dict({}, []), run).names == [] and run.listeners == []
    Trackers().log({"stage": "stage1", "step": 1, "l_g": 1.0})  # inert: no accelerator needed
    run.log({"stage": "stage1", "step": 1, "l_g": 1.0})
    assert not (tmp_path / "trackers").exists()


def test_scalars_and_flat_config():
    assert scalars({"stage": "stage2", "step": 4, "time": 1.0, "l_s": 0.5, "n": 3, "diverged": "l_1", "ok": True}) == {
        "stage2/l_s": 0.5,
        "stage2/n": 3,
    }
    flat = flat_config(config_from_dict({}, ["logging.trackers=[tensorboard]"]))
    assert flat["stage2.sa.steps"] == config_from_dict({}, []).stage2.sa.steps
    assert flat["output.name"] == "null" and flat["logging.trackers"] == '["tensorboard"]'
    assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())
