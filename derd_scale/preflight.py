"""Checks a training run makes before its first step, so bad input fails in seconds, in one
line naming the key or file, and before anything is written (docs/runs.md).

``check_inputs(cfg)`` runs before the models are built: the dataset name, the evaluation
protocol, every file a config names (teacher/student checkpoints — opened, not just
found — ``local-dir:`` folders, class-subset files, the surrogate, a DeepSpeed JSON) and,
when the run will evaluate, the real data (parquet files of the split, their columns, the
label range, ``eval.n_examples`` against the split; image folders). ``check_models`` runs
after: one forward of each teacher (and a replicated student) on a zero batch of the
dataset's shape, which must give ``(2, num_classes)`` finite logits.

Hub datasets are not fetched here (that is the download itself); a Hub split that cannot
be read is still a warning at evaluation time.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import torch

from .config import ModelConfig, RunConfig
from .errors import InputError, one_line


def _model_specs(cfg: RunConfig) -> list[tuple[str, ModelConfig]]:
    return [
        ("teachers.natural", cfg.teachers.natural),
        ("teachers.robust", cfg.teachers.robust),
        ("student", cfg.student),
    ]


def check_weights_file(path: str | Path, key: str) -> None:
    """Open a weights file far enough to know it is one (safetensors header; a torch zip
    archive memory-mapped; a legacy torch file loaded ``weights_only``)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{key}: {path}: file not found")
    if not path.is_file():
        raise InputError(f"{key}: {path}: not a file")
    with open(path, "rb") as fh:
        head = fh.read(4)
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                if not list(fh.keys()):
                    raise InputError(f"{key}: {path}: holds no tensors")
        elif zipfile.is_zipfile(path):
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        elif head == b"PK\x03\x04":
            raise InputError(
                f"{key}: {path}: not a readable checkpoint (a truncated or damaged zip archive, torch.save's format)"
            )
        else:
            torch.load(path, map_location="cpu", weights_only=True)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 — torch/safetensors raise many types for a bad file
        text = one_line(err, 1000)
        if text.startswith("Weights only load failed"):
            # The weights-only unpickler says why after "WeightsUnpickler error:"; a global it
            # refuses means a pickle that needs code, anything else a file that is not one.
            reason = text.split("WeightsUnpickler error:", 1)[-1].split(" Check the documentation")[0].strip()
            if "GLOBAL" in reason or "global" in reason:
                raise InputError(
                    f"{key}: {path}: refused — not a weights-only checkpoint ({reason[:150]}); re-save its state_dict"
                ) from None
            raise InputError(f"{key}: {path}: not a readable checkpoint (UnpicklingError: {reason[:150]})") from None
        raise InputError(f"{key}: {path}: not a readable checkpoint ({type(err).__name__}: {text[:200]})") from None


def _check_model_spec(key: str, m: ModelConfig) -> None:
    if m.checkpoint:
        check_weights_file(m.checkpoint, f"{key}.checkpoint")
    if m.arch.startswith(("local-dir:", "transformers-dir:")):
        folder = Path(m.arch.split(":", 1)[1])
        if not folder.is_dir():
            raise InputError(f"{key}.arch: {m.arch}: folder not found")
        if not (folder / "config.json").is_file():
            kind = "a save_pretrained" if m.arch.startswith("transformers-dir:") else "a timm-format export"
            raise InputError(f"{key}.arch: {m.arch}: no config.json in {folder} (expected {kind} folder)")
        weights = [folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).is_file()]
        if not weights:
            raise InputError(f"{key}.arch: {m.arch}: no model.safetensors or pytorch_model.bin in {folder}")
        check_weights_file(weights[0], f"{key}.arch")
    if m.class_subset and m.class_subset != "imagenet100" and not Path(m.class_subset).is_file():
        raise InputError(f"{key}.class_subset: {m.class_subset}: file not found")


def evaluates(cfg: RunConfig) -> bool:
    """Whether the run reads real data (final evaluation or probes)."""
    return cfg.eval.final or bool(cfg.eval.probe_attacks and cfg.eval.probe_examples > 0)


def check_inputs(cfg: RunConfig) -> None:
    """Everything checkable from the config and the files it names, before any model is built."""
    from .data import dataset_info

    try:
        info = dataset_info(cfg.data)
    except (ValueError, RuntimeError) as err:  # a bad name or column; an unreadable Hub dataset
        raise InputError(one_line(err)) from None
    try:
        from .evaluation.runner import protocol_from_config

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the eps-override warning comes again where it matters
            protocol_from_config(cfg.eval, cfg.data.name)
    except ValueError as err:
        raise InputError(one_line(err)) from None
    for key, m in _model_specs(cfg):
        _check_model_spec(key, m)
    if cfg.eval.surrogate_checkpoint:
        check_weights_file(cfg.eval.surrogate_checkpoint, "eval.surrogate_checkpoint")
    from .trackers import check_trackers

    check_trackers(cfg.logging.trackers)  # a missing tracker package: one line, before anything is written
    if cfg.distributed.deepspeed_config and not Path(cfg.distributed.deepspeed_config).is_file():
        raise InputError(f"distributed.deepspeed_config: {cfg.distributed.deepspeed_config}: file not found")
    if evaluates(cfg):
        check_data(cfg, info)


def check_data(cfg: RunConfig, info) -> None:
    """The evaluation split is there and fits the dataset (local sources only)."""
    d = cfg.data
    if d.source == "hub":
        return
    if d.path is None:
        raise InputError(
            f"data.path: required when data.source is {d.source} (the run evaluates on real data; eval.final=false and eval.probe_attacks=[] skip it)"
        )
    root = Path(d.path)
    if not root.is_dir():
        raise InputError(f"data.path: {root}: folder not found")
    if d.source == "imagefolder":
        from .data import _read_imagefolder

        try:
            _, labels = _read_imagefolder(root, d.eval_split, info.class_names)
        except (FileNotFoundError, OSError) as err:
            raise InputError(f"data.eval_split={d.eval_split}: {one_line(err)}") from None
        rows = len(labels)
    else:
        rows = _check_parquet(root, info, d.eval_split)
    if rows == 0:
        raise InputError(f"data.eval_split: split {d.eval_split!r} under {root} holds no examples")
    if cfg.eval.final and cfg.eval.n_examples is not None and cfg.eval.n_examples > rows:
        raise InputError(
            f"eval.n_examples: {cfg.eval.n_examples} exceeds the {rows} examples of split {d.eval_split!r}"
        )


def _check_parquet(root: Path, info, split: str) -> int:
    import pyarrow.parquet as pq

    from .data import _find_parquet

    try:
        files = _find_parquet(root, info, split)
    except FileNotFoundError as err:
        raise InputError(f"data.eval_split={split}: {one_line(err)}") from None
    rows = 0
    for f in files:
        try:
            names = pq.read_schema(f).names
        except Exception as err:  # noqa: BLE001 — arrow raises its own types for a bad file
            raise InputError(f"data: {f}: not a readable parquet file ({one_line(err, 200)})") from None
        missing = [c for c in (info.image_column, info.label_column) if c not in names]
        if missing:
            raise InputError(
                f"data: {f}: no column {', '.join(repr(c) for c in missing)} ({info.name} reads {info.image_column!r} and {info.label_column!r}; the file has {', '.join(names)})"
            )
        labels = pq.read_table(f, columns=[info.label_column]).column(info.label_column)
        values = [v for v in labels.to_pylist()]
        if any(v is None or not isinstance(v, int) for v in values):
            raise InputError(f"data: {f}: column {info.label_column!r} must hold integer class indices")
        if values and (min(values) < 0 or max(values) >= info.num_classes):
            bad = next(v for v in values if v < 0 or v >= info.num_classes)
            raise InputError(f"data: {f}: label {bad} outside [0, {info.num_classes}) of {info.name}'s classes")
        rows += len(values)
    return rows


@torch.no_grad()
def check_models(models, par) -> None:
    """One forward of each frozen teacher (and of a replicated student, in eval mode) on a
    zero batch of the dataset's shape: it must run and give (2, num_classes) finite logits."""
    info = models.info
    shape = (2, info.channels, info.image_size, info.image_size)
    x = torch.zeros(shape, device=par.accelerator.device)
    checks = [("teachers.natural", models.natural_teacher), ("teachers.robust", models.robust_teacher)]
    if not any(a.sharded for a in par.adapters.values()):  # a sharded forward is a collective: left to the first step
        checks.append(("student", par.student.unwrapped))
    from .models.factory import unwrap_normalized

    for key, model in checks:
        try:
            norm = unwrap_normalized(model)
        except TypeError:
            norm = None
        if norm is not None and norm.has_norm and norm.mean.shape[1] not in (1, info.channels):
            # (x - mean) would silently broadcast the data's channels to the model's.
            raise InputError(
                f"{key}: normalises {norm.mean.shape[1]} input channels, {info.name} images have {info.channels}: a model for other data?"
            )
        was = model.training
        model.eval()
        try:
            with par.autocast():
                out = model(x)
        except Exception as err:  # noqa: BLE001 — shape errors come as RuntimeError/AssertionError/ValueError
            raise InputError(
                f"{key}: fails on a batch of {info.name}'s shape {'x'.join(map(str, shape[1:]))} ({type(err).__name__}: {one_line(err, 300)})"
            ) from None
        finally:
            model.train(was)
        if not torch.is_tensor(out) or tuple(out.shape) != (2, info.num_classes):
            got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise InputError(
                f"{key}: outputs {got} on a batch of 2 {info.name} images; expected (2, {info.num_classes}): {info.num_classes} classes"
            )
        if not torch.isfinite(out).all():
            raise InputError(f"{key}: non-finite logits on a zero batch (corrupt weights?)")
