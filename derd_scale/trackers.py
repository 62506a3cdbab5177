"""Experiment trackers (TensorBoard, W&B, Trackio, MLflow, Aim, …) through Accelerate.

    derd-scale train --config configs/fmnist_quickstart.yaml --set 'logging.trackers=[tensorboard]'
    tensorboard --logdir runs/quickstart/derd/trackers   # <output.root>/<output.name>/trackers

``logging.trackers`` names Accelerate trackers (``Accelerator(log_with=…)``'s names). When the
run folder is open, ``start_trackers`` sets them on the run's accelerator, calls
``init_trackers`` with the resolved config (flattened to dotted keys) and subscribes to the run
folder's metrics log: every record written to ``metrics.jsonl`` goes to every tracker too, as
``<stage>/<key>`` scalars at a global step (Stage II's steps continue after Stage I's), on the
main process only. ``finish`` logs the final evaluation (``eval/<attack>``), renders the
training curves (``curves.png``) and hands the image to the trackers that take images (MLflow:
as an artifact), then ends them. Local trackers write under ``<run>/trackers/``.

A tracker whose package is missing stops the run before anything is written, in one line
(``check_trackers``, called by the pre-flight checks). docs/runs.md has the details.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from typing import Any, Optional

from .config import RunConfig, to_dict
from .errors import InputError
from .run_dir import RunDir

# Tracker -> (module that must be importable, what to pip install). Names are Accelerate's.
PACKAGES = {
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
    "wandb": (("wandb",), "wandb"),
    "trackio": (("trackio",), "trackio"),
    "mlflow": (("mlflow",), "mlflow"),
    "aim": (("aim",), "aim"),
    "comet_ml": (("comet_ml",), "comet-ml"),
    "clearml": (("clearml",), "clearml"),
    "dvclive": (("dvclive",), "dvclive"),
    "swanlab": (("swanlab",), "swanlab"),
}
_NOT_SCALARS = ("stage", "step", "time")


def check_trackers(names: list[str]) -> None:
    """Each tracker's package is importable, else one line naming the key and the install."""
    for name in names:
        modules, pip_name = PACKAGES[name]
        if not any(importlib.util.find_spec(m) is not None for m in modules):
            raise InputError(
                f"logging.trackers: {name} needs the {pip_name!r} package, which is not installed: "
                f"pip install {pip_name} (or remove {name} from logging.trackers)"
            )


def flat_config(cfg: RunConfig) -> dict[str, Any]:
    """The resolved config as dotted keys with scalar values (what every tracker's hparams take)."""
    out: dict[str, Any] = {}

    def walk(d: dict, prefix: str) -> None:
        for key, value in d.items():
            if isinstance(value, dict) and value:
                walk(value, f"{prefix}{key}.")
            elif isinstance(value, (bool, int, float, str)):
                out[prefix + key] = value
            else:  # None, lists, empty mappings: their YAML spelling
                out[prefix + key] = json.dumps(value)

    walk(to_dict(cfg), "")
    return out


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of one metrics.jsonl record as ``<stage>/<key>`` (strings and flags are not metrics)."""
    stage = record.get("stage", "run")
    return {
        f"{stage}/{k}": v
        for k, v in record.items()
        if k not in _NOT_SCALARS and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


@dataclass
class Trackers:
    """The run's trackers; inert (``names == []``) off the main process or without ``logging.trackers``."""

    accelerator: Any = None
    names: list[str] = field(default_factory=list)
    offsets: dict[str, int] = field(default_factory=dict)
    last_step: int = 0

    def global_step(self, record: dict[str, Any]) -> int:
        return self.offsets.get(record.get("stage", ""), 0) + int(record.get("step", 0))

    def log(self, record: dict[str, Any]) -> None:
        """One metrics.jsonl record (``RunDir.log`` calls this after writing the line)."""
        if not self.names:
            return
        self.last_step = self.global_step(record)
        self.accelerator.log(scalars(record), step=self.last_step)

    def finish(self, run: RunDir) -> None:
        """Final evaluation numbers and the training-curve image, then end every tracker."""
        if not self.names:
            return
        report = run.path / "eval" / "report.json"
        if report.is_file():
            attacks = json.loads(report.read_text()).get("attacks", {})
            self.accelerator.log(
                {f"eval/{k}": v["accuracy"] for k, v in attacks.items() if isinstance(v.get("accuracy"), float)},
                step=self.last_step,
            )
        if run.metrics_path.is_file() and run.metrics_path.stat().st_size:
            self._log_curves(run)
        self.accelerator.end_training()
        if self.log in run.listeners:
            run.listeners.remove(self.log)
        self.names = []

    def _log_curves(self, run: RunDir) -> None:
        import numpy as np
        from PIL import Image

        from .plots import plot_training_curves

        png = plot_training_curves(run.metrics_path, run.path / "curves.png")
        image = Image.open(png).convert("RGB")
        for tracker in self.accelerator.trackers:
            # Each tracker takes images its own way; those without images are skipped (docs/runs.md).
            if tracker.name == "tensorboard":
                tracker.log_images({"curves": np.asarray(image)[None]}, step=self.last_step, dataformats="NHWC")
            elif tracker.name == "mlflow":
                tracker.log_artifact(str(png))
            elif hasattr(tracker, "log_images"):
                tracker.log_images({"curves": [image]}, step=self.last_step)


def start_trackers(
    accelerator,
    cfg: RunConfig,
    run: RunDir,
    stage_steps: Optional[dict[str, int]] = None,
    starts_after: tuple[str, int] = ("stage1", 0),
) -> Trackers:
    """Set ``logging.trackers`` on ``accelerator``, ``init_trackers`` with the resolved config and
    subscribe to ``run``'s metrics log. Called once the run folder is open (an overwrite may
    have just emptied it) and any resume has chosen its checkpoint, on every rank; only the main
    process logs.

    ``starts_after`` is the (stage, step) the run continues from: a resume's checkpoint, else
    the start. metrics.jsonl keeps the records up to it and the run re-logs what follows
    (``RunDir.truncate_metrics``); TensorBoard is told the same (``purge_step``: when read, the
    events an earlier attempt wrote from the next global step on are discarded), so its
    scalars equal metrics.jsonl after a kill and resume. Other trackers start a new tracker run
    per attempt (unless their own environment resumes one), which holds what that attempt logged.

    The accelerator is usually built before the run folder is known (and callers may pass their
    own), so the trackers are set on it here rather than in its constructor; ``init_trackers``
    reads exactly these two attributes."""
    names = list(cfg.logging.trackers)
    if not names or not accelerator.is_main_process:
        return Trackers()
    from accelerate.tracking import filter_trackers

    logging_dir = run.path / "trackers"
    accelerator.project_configuration.logging_dir = str(logging_dir)
    accelerator.log_with = filter_trackers(names, logging_dir)
    if len(accelerator.log_with) != len(set(names)):  # check_trackers ran before; a package vanished since
        check_trackers(names)
    stage_steps = stage_steps or {"stage1": cfg.stage1.steps}
    trackers = Trackers(accelerator, names, {"stage2": stage_steps.get("stage1", 0)})
    stage, step = starts_after
    first_step = trackers.global_step({"stage": stage, "step": step}) + 1  # the first step this run logs
    accelerator.init_trackers(
        cfg.logging.project or run.path.name,
        config=flat_config(cfg),
        init_kwargs={"tensorboard": {"purge_step": first_step}},
    )
    run.listeners.append(trackers.log)
    return trackers
