"""One folder per run: resolved config, metrics (JSON lines), checkpoints, final student.

    runs/<name>/
      config.yaml          the resolved RunConfig (every default spelled out)
      metrics.jsonl        one JSON object per logged step: {"stage", "step", ...}
      checkpoints/<stage>-<step:08d>/state.pt   resumable state (see derd_scale.checkpoint)
      student/             final student (timm-format export folder)
      eval/                final evaluation report
      DONE                 written when the run finished (summary JSON); a finished run is
                           never overwritten unless output.overwrite is true

The name is ``output.name`` or, unset, the config file's stem: the same command always
reaches the same folder, on every rank and after a SLURM requeue, and resumes there.
Opening a folder is two steps so that bad input never leaves a half-made folder behind:
``plan_run_dir`` (read-only, every rank, before the models are built) decides new / resume
/ restart and refuses what must not happen; ``open_run_dir`` (main process, after the
pre-flight checks) does the writes. docs/runs.md describes the rules.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .config import ConfigError, RunConfig, check_run_name, config_from_dict, save_config, to_dict
from .errors import InputError, ResumeError, RunExistsError

__all__ = [
    "RunDir",
    "RunExistsError",
    "RunPlan",
    "plan_run_dir",
    "open_run_dir",
    "read_jsonl",
    "config_changes",
    "is_derd_run_folder",
    "IGNORED_ON_RESUME",
]

STAGE_NAMES = ("stage1", "stage2")  # = state.STAGES (not imported: state imports the models)
_CHECKPOINT_NAME = re.compile(r"^(stage1|stage2)-(\d{8})$")


@dataclass
class RunDir:
    path: Path
    listeners: list[Callable[[dict[str, Any]], None]] = field(default_factory=list, repr=False, compare=False)
    """Called with each record ``log`` writes (the experiment trackers, derd_scale/trackers.py)."""

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

    def summary(self) -> dict:
        """The training summary a finished run wrote into DONE (``train_seconds``, ``world_size``,
        ``mixed_precision``, …); {} while unfinished, or for a DONE that holds no JSON object
        (hand-made markers). The one reader of DONE: the Hub card and the tables read it here."""
        if not self.is_finished():
            return {}
        try:
            summary = json.loads(self.done_marker.read_text() or "{}")
        except json.JSONDecodeError as err:
            raise InputError(f"{self.done_marker}: not valid JSON ({err.msg} at line {err.lineno})") from None
        return summary if isinstance(summary, dict) else {}

    def checkpoint_dirs(self) -> list[Path]:
        """``<stage>-<step>`` folders holding a ``state.pt``, oldest first (other names are ignored)."""
        if not self.checkpoints.is_dir():
            return []
        found = []
        for p in self.checkpoints.iterdir():
            m = _CHECKPOINT_NAME.match(p.name)
            if m and (p / "state.pt").is_file():
                found.append(((STAGE_NAMES.index(m.group(1)), int(m.group(2))), p))
        return [p for _, p in sorted(found)]

    def log(self, record: dict[str, Any]) -> None:
        record = {k: _jsonable(v) for k, v in record.items()}
        record.setdefault("time", time.time())
        with open(self.metrics_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        for listener in self.listeners:
            listener(record)

    def read_metrics(self) -> list[dict]:
        return read_jsonl(self.metrics_path) if self.metrics_path.exists() else []

    def truncate_metrics(self, stage: Optional[str], step: int = 0) -> int:
        """Keep the records up to and including (stage, step) — the checkpoint a resume starts
        from — so the resumed run appends without duplicated steps; ``stage=None`` drops all.
        A line torn by a kill mid-write is dropped too. Returns how many records were dropped."""
        if not self.metrics_path.exists():
            return 0
        limit = (STAGE_NAMES.index(stage), step) if stage is not None else None
        kept, dropped = [], 0
        for line in self.metrics_path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            at = (
                (STAGE_NAMES.index(record["stage"]), record.get("step", 0))
                if record.get("stage") in STAGE_NAMES
                else None
            )
            if limit is None or (at is not None and at > limit):
                dropped += 1
                continue
            kept.append(line)
        if dropped:
            tmp = self.metrics_path.with_name(self.metrics_path.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            tmp.replace(self.metrics_path)
        return dropped


def read_jsonl(path: str | Path) -> list[dict]:
    """One record per non-empty line (metrics.jsonl and the other JSON-lines logs)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


# --------------------------------------------------------------------------------------
# Which folder, and what may happen to it
# --------------------------------------------------------------------------------------


def is_derd_run_folder(path: str | Path) -> bool:
    """A folder derd_scale made: a config.yaml with the run config's sections, or (a run seeded
    with another run's checkpoint, as bench/distill_table.py does) a checkpoints/ folder of
    ``<stage>-<step>/state.pt``. Only such a folder is ever deleted (output.overwrite)."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return False
    config = path / "config.yaml"
    if config.is_file():
        try:
            import yaml

            data = yaml.safe_load(config.read_text())
        except Exception:  # noqa: BLE001 — any unreadable file means "not ours"
            return False
        return isinstance(data, dict) and {"stage1", "stage2", "teachers", "output"} <= set(data)
    entries = {p.name for p in path.iterdir()}
    return entries <= {"checkpoints", "metrics.jsonl"} and bool(RunDir(path).checkpoint_dirs())


# Keys that cannot change what a run computes (the student's weights), so a resume ignores
# them when it compares the new config with the run folder's config.yaml. ``eval.protocol``
# and ``eval.eps`` are not here: with stage2.eps unset they are Stage II's training radius.
IGNORED_ON_RESUME = (
    "preset",  # its values are compared where they land
    "logging.",
    "output.",  # root/name pick the folder; resume/overwrite/allow_config_change/checkpoint_every do not touch the math
    "data.source",
    "data.path",
    "data.streaming",  # how the evaluation reads the split, not what it reads
    "data.eval_split",
    "data.train_split",
    "data.resize",
    "data.crop",  # distillation reads no data
    "eval.attacks",
    "eval.alpha",
    "eval.steps",
    "eval.batch_size",
    "eval.n_examples",
    "eval.every_steps",
    "eval.probe_examples",
    "eval.probe_attacks",
    "eval.final",
    "eval.restarts",
    "eval.cw_kappa",
    "eval.square_queries",
    "eval.surrogate",
    "eval.surrogate_checkpoint",
    "eval.masking_threshold",
    "eval.masking_check",  # evaluation only (probes run on a forked RNG)
    "eval.optimized_copy",
    "distributed.expected_world_size",  # a launch guard
)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Dotted keys; free-form ``kwargs`` mappings stay one value."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "kwargs":
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _ignored(key: str, old: dict, new: dict) -> bool:
    if any(key == p or (p.endswith(".") and key.startswith(p)) for p in IGNORED_ON_RESUME):
        return True
    if key in ("eval.protocol", "eval.eps"):
        # They set Stage II's radius only while stage2.eps is unset.
        return old.get("stage2.eps") is not None and old.get("stage2.eps") == new.get("stage2.eps")
    return False


def config_changes(saved_path: str | Path, cfg: RunConfig) -> list[str]:
    """The dotted keys whose values differ between a run folder's config.yaml and ``cfg``, as
    ``key (old -> new)``, leaving out ``IGNORED_ON_RESUME``. The saved file is read through the
    current schema, so keys added since (with their defaults) are not differences."""
    import yaml

    try:
        raw = yaml.safe_load(Path(saved_path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ResumeError(
            f"{saved_path}: unreadable ({type(err).__name__}); cannot tell whether the config changed — set output.allow_config_change=true to resume anyway"
        ) from None
    try:
        saved = to_dict(config_from_dict(raw if isinstance(raw, dict) else {}))
    except ConfigError as err:
        raise ResumeError(
            f"{saved_path}: {err} (written by another version?) — set output.allow_config_change=true to resume anyway"
        ) from None
    old, new = _flatten(saved), _flatten(to_dict(cfg))
    changes = []
    for key in sorted(set(old) | set(new), key=lambda k: list(new).index(k) if k in new else len(new)):
        if old.get(key) != new.get(key) and not _ignored(key, old, new):
            changes.append(f"{key} ({_short(old.get(key))} -> {_short(new.get(key))})")
    return changes


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:39] + "…"


@dataclass
class RunPlan:
    """What ``open_run_dir`` will do with the folder: ``new`` (create), ``restart`` (delete a
    derd_scale run folder, then create), ``fresh`` (an unfinished run without a checkpoint:
    start again in place), ``resume`` (from ``checkpoints``, newest first)."""

    run: RunDir
    action: str
    name: str
    checkpoints: list[Path] = field(default_factory=list)
    config_changes: list[str] = field(default_factory=list)


def run_name(cfg: RunConfig, config_stem: str = "run") -> str:
    """``output.name``, or the config file's stem: deterministic, the same on every rank."""
    name = cfg.output.name if cfg.output.name is not None else config_stem
    check_run_name(name, "output.name" if cfg.output.name is not None else "output.name (from the config file's name)")
    return name


def plan_run_dir(cfg: RunConfig, config_stem: str = "run") -> RunPlan:
    """Decide, without writing anything, what happens to ``<output.root>/<name>``; raise
    ``RunExistsError`` / ``ResumeError`` (one line) for what must not. Every rank calls it."""
    name = run_name(cfg, config_stem)
    root = Path(cfg.output.root)
    if root.exists() and not root.is_dir():
        raise RunExistsError(f"output.root: {root} exists and is not a folder")
    run = RunDir(root / name)
    real_root, real_run = os.path.realpath(root), os.path.realpath(run.path)
    if os.path.commonpath([real_root, real_run]) != real_root or real_run == real_root:
        raise RunExistsError(
            f"output.name: {run.path} resolves to {real_run}, outside output.root {real_root} (a symbolic link?)"
        )
    out = cfg.output
    if not run.path.exists():
        if run.path.is_symlink():
            raise RunExistsError(f"{run.path}: a dangling symbolic link; remove it or pick another output.name")
        return RunPlan(run, "new", name)
    if not run.path.is_dir():
        raise RunExistsError(f"{run.path} exists and is not a folder; pick another output.name")
    if not is_derd_run_folder(run.path):
        if any(run.path.iterdir()):
            raise RunExistsError(
                f"{run.path} exists and is not a derd_scale run folder (no run config.yaml or checkpoints); "
                f"it is never written into or deleted — pick another output.name"
            )
        return RunPlan(run, "new", name)
    if run.is_finished():
        if not out.overwrite:
            raise RunExistsError(
                f"{run.path} holds a finished run; pick another output.name or set output.overwrite=true"
            )
        return RunPlan(run, "restart", name)
    if not out.resume:
        if not out.overwrite:
            raise RunExistsError(
                f"{run.path} exists (unfinished) and output.resume=false; set output.overwrite=true to start over"
            )
        return RunPlan(run, "restart", name)
    checkpoints = run.checkpoint_dirs()
    if not checkpoints:
        return RunPlan(run, "fresh", name)
    changes = config_changes(run.config_path, cfg) if run.config_path.is_file() else []
    if changes and not out.allow_config_change:
        raise ResumeError(
            f"{run.path}: the config changed since the run started: {', '.join(changes)}; "
            f"resume with the same config, set output.allow_config_change=true, or pick another output.name"
        )
    return RunPlan(run, "resume", name, checkpoints, changes)


def open_run_dir(plan: RunPlan, cfg: RunConfig, is_main: bool = True) -> RunDir:
    """Carry out ``plan`` (the writes; main process only): create or restart the folder, set
    metrics.jsonl aside for a fresh start, keep the replaced config.yaml when a change was
    allowed, and write the resolved config (with the resolved ``output.name``)."""
    run = plan.run
    if not is_main:
        return run
    try:
        if plan.action == "restart":
            if not is_derd_run_folder(run.path):  # checked again right before deleting
                raise RunExistsError(f"{run.path} is not a derd_scale run folder; refusing to delete it")
            shutil.rmtree(run.path)
        run.path.mkdir(parents=True, exist_ok=True)
        run.checkpoints.mkdir(exist_ok=True)
        if plan.action == "fresh":
            run.truncate_metrics(None)
        if plan.config_changes and run.config_path.is_file():
            kept = run.path / f"config.replaced-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.yaml"
            shutil.copy2(run.config_path, kept)
            warnings.warn(
                f"resuming {run.path} with a changed config ({', '.join(plan.config_changes)}); the previous one is kept as {kept.name}",
                stacklevel=2,
            )
        import dataclasses

        resolved = dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, name=plan.name))
        tmp = run.path / "config.yaml.tmp"
        save_config(resolved, tmp)
        tmp.replace(run.config_path)
    except OSError as err:
        raise RunExistsError(
            f"{run.path}: cannot write the run folder ({type(err).__name__}: {err.strerror or err})"
        ) from None
    return run


def prepare_run_dir(cfg: RunConfig, config_stem: str = "run", is_main: bool = True) -> RunDir:
    """Plan and open in one call (no pre-flight checks between them)."""
    return open_run_dir(plan_run_dir(cfg, config_stem), cfg, is_main)
