"""One folder per run: resolved config, metrics (JSON lines), checkpoints, final student.

    runs/<name>/
      config.yaml          the resolved RunConfig (every default spelled out)
      metrics.jsonl        one JSON object per logged step: {"stage", "step", ...}
      checkpoints/step_<stage>_<n>/   resumable state (see derd_scale.checkpointing)
      student/             final student (timm-format export folder)
      DONE                 written when the run finished; a finished run is never
                           overwritten unless output.overwrite is true
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .config import RunConfig, save_config


class RunExistsError(RuntimeError):
    pass


@dataclass
class RunDir:
    path: Path

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def student_dir(self) -> Path:
        return self.path / "student"

    @property
    def done_marker(self) -> Path:
        return self.path / "DONE"

    def is_finished(self) -> bool:
        return self.done_marker.exists()

    def mark_finished(self, summary: Optional[dict] = None) -> None:
        self.done_marker.write_text(json.dumps(summary or {}, indent=2))

    def log(self, record: dict[str, Any]) -> None:
        record = {k: _jsonable(v) for k, v in record.items()}
        record.setdefault("time", time.time())
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict]:
        return read_jsonl(self.metrics_path) if self.metrics_path.exists() else []


def read_jsonl(path: str | Path) -> list[dict]:
    """One record per non-empty line (metrics.jsonl and the other JSON-lines logs)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def prepare_run_dir(cfg: RunConfig, config_stem: str = "run", is_main: bool = True) -> RunDir:
    """Create (or reopen for resume) the run folder and write the resolved config.

    A finished run (DONE present) is refused unless ``output.overwrite``; then its contents
    are cleared. An unfinished run with ``output.resume`` is reopened as is.
    """
    name = cfg.output.name or f"{config_stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    run = RunDir(Path(cfg.output.root) / name)
    if is_main:
        if run.is_finished():
            if not cfg.output.overwrite:
                raise RunExistsError(f"{run.path} holds a finished run; pick another output.name or set output.overwrite=true")
            shutil.rmtree(run.path)
        elif run.path.exists() and not cfg.output.resume:
            if not cfg.output.overwrite:
                raise RunExistsError(f"{run.path} exists (unfinished) and output.resume=false; set output.overwrite=true to start over")
            shutil.rmtree(run.path)
        run.path.mkdir(parents=True, exist_ok=True)
        run.checkpoints.mkdir(exist_ok=True)
        save_config(cfg, run.config_path)
    return run
