"""Bad input fails early, in one line, and writes nothing: a matrix of configs, CLI flags,
files and data, each run through launch/train.py's ``main`` in a temporary working
directory (``output.root=runs`` inside it), checking the exit status, that stderr is one
line saying what is wrong, and that no file appeared, vanished or changed outside the run
folder (for these cases: anywhere). A few go through a real subprocess.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch
from conftest import TINY  # the toy run

REPO = Path(__file__).resolve().parent.parent
SHARED = (REPO.parent / "shared" / "data").resolve()

BASE = TINY + ["output.root=runs", "output.name=x"]
EVAL = ["eval.final=true", "eval.attacks=[clean]", "eval.n_examples=10"]


def _sets(*items: str) -> list[str]:
    out = []
    for item in items:
        out += ["--set", item]
    return out


def _train_main():
    spec = importlib.util.spec_from_file_location("derd_launch_train", REPO / "launch" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


# ---- what each case sets up in the working directory; returns extra argv -------------


def _file(name: str, content: bytes | str) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return []

    return setup


def _small_cnn(width: int = 4, in_chans: int = 1):
    from derd_scale.models import create_model

    return create_model("small_cnn", 10, in_chans=in_chans, width=width)


def _weights(
    name: str, *, width: int = 4, in_chans: int = 1, nan: bool = False, truncate: bool = False
) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        sd = {k: v.clone() for k, v in _small_cnn(width, in_chans).model.state_dict().items()}
        if nan:
            sd = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in sd.items()}
        path = tmp / name
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(sd, str(path))
        else:
            torch.save(sd, path)
        if truncate:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return []

    return setup


def _export(name: str, in_chans: int) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        from derd_scale.export import export_model

        export_model(_small_cnn(4, in_chans), tmp / name, "small_cnn", 10, in_chans, 28, model_kwargs={"width": 4})
        return []

    return setup


def _parquet(
    columns: dict, name: str = "data/fashion_mnist/fashion_mnist/test-00000-of-00001.parquet"
) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(columns), path)
        return []

    return setup


def _run_folder(
    *, done: bool = False, config: list[str] | None = None, checkpoint: bytes | None = None
) -> Callable[[Path], list[str]]:
    """runs/x as a derd_scale run folder: config.yaml (the case's config unless ``config``), DONE, a checkpoint."""

    def setup(tmp: Path) -> list[str]:
        from derd_scale.config import config_from_dict, save_config

        run = tmp / "runs" / "x"
        run.mkdir(parents=True)
        save_config(config_from_dict({}, BASE + (config or [])), run / "config.yaml")
        if done:
            (run / "DONE").write_text("{}")
        if checkpoint is not None:
            (run / "checkpoints" / "stage2-00000002").mkdir(parents=True)
            (run / "checkpoints" / "stage2-00000002" / "state.pt").write_bytes(checkpoint)
        return []

    return setup


def _symlinked_run(tmp: Path) -> list[str]:
    (tmp / "outside").mkdir()
    (tmp / "runs").mkdir()
    (tmp / "runs" / "x").symlink_to(tmp / "outside")
    return []


def _plain_folder(tmp: Path) -> list[str]:
    (tmp / "runs" / "x").mkdir(parents=True)
    (tmp / "runs" / "x" / "notes.txt").write_text("mine")
    return []


def _imagefolder(tmp: Path) -> list[str]:
    (tmp / "imgs" / "test").mkdir(parents=True)  # a split without class folders
    return []


def _none(tmp: Path) -> list[str]:
    return []


# ---- the matrix: (id, setup, argv, exit status, regex the one stderr line must match) -----

CASES: list[tuple[str, Callable, list[str], int, str]] = [
    # configs and flags
    (
        "unknown_key",
        _none,
        _sets("stage2.sa.stepz=3"),
        2,
        r"^config error: stage2\.sa\.stepz: unknown key; allowed: enabled, steps",
    ),
    (
        "bad_choice",
        _none,
        _sets("stage2.aggregation.method=mean"),
        2,
        r"^config error: stage2\.aggregation\.method: invalid value 'mean'; allowed: sum, ga, sga$",
    ),
    (
        "not_an_integer",
        _none,
        _sets("stage1.steps=many"),
        2,
        r"^config error: stage1\.steps: expected an integer, got 'many'$",
    ),
    ("zero_batch", _none, _sets("stage1.batch_size=0"), 2, r"^config error: stage1\.batch_size: must be > 0, got 0$"),
    (
        "override_without_value",
        _none,
        _sets("stage1.steps"),
        2,
        r"^config error: stage1\.steps: override must look like key\.sub=value$",
    ),
    ("missing_config_file", _none, ["--config", "nope.yaml"], 2, r"^config error: config file not found: nope\.yaml$"),
    (
        "config_not_a_mapping",
        _file("c.yaml", "- a\n- b\n"),
        ["--config", "c.yaml"],
        2,
        r"^config error: c\.yaml: top level must be a mapping$",
    ),
    (
        "config_bad_yaml",
        _file("c.yaml", "stage1: [1, 2\n"),
        ["--config", "c.yaml"],
        2,
        r"^config error: c\.yaml: not valid YAML",
    ),
    (
        "config_unknown_section",
        _file("c.yaml", "stage3: {steps: 1}\n"),
        ["--config", "c.yaml"],
        2,
        r"^config error: stage3: unknown key; allowed: preset, method, seed",
    ),
    (
        "unknown_preset",
        _none,
        _sets("preset=derd_best"),
        2,
        r"^config error: preset: unknown 'derd_best'; allowed: derd_paper, derd_recommended$",
    ),
    (
        "name_dotdot",
        _none,
        _sets("output.name=.."),
        2,
        r"^config error: output\.name: '\.\.' must stay inside output\.root",
    ),
    (
        "name_escapes",
        _none,
        _sets("output.name=a/../../x"),
        2,
        r"^config error: output\.name: 'a/\.\./\.\./x' must stay inside output\.root",
    ),
    (
        "name_absolute",
        _none,
        _sets("output.name=/tmp/x"),
        2,
        r"^config error: output\.name: '/tmp/x' must be a folder name relative to output\.root",
    ),
    ("name_dot", _none, _sets("output.name=."), 2, r"^config error: output\.name: '\.' must stay inside output\.root"),
    (
        "name_empty",
        _none,
        _sets("output.name="),
        2,
        r"^config error: output\.name: must be a non-empty folder name, got ''$",
    ),
    ("eval_eps_out_of_range", _none, _sets("eval.eps=2"), 2, r"^config error: eval\.eps: must be in \(0, 1\]"),
    ("unknown_attack", _none, _sets("eval.attacks=[pgd]"), 2, r"^config error: eval\.attacks: unknown attack 'pgd'"),
    (
        "no_stage",
        _none,
        _sets("stage1.enabled=false", "stage2.enabled=false"),
        2,
        r"^config error: stage1\.enabled / stage2\.enabled: at least one stage must run$",
    ),
    (
        "accumulation_split",
        _none,
        _sets("distributed.gradient_accumulation_steps=3"),
        2,
        r"^config error: stage1\.batch_size: 8 is not divisible by distributed\.gradient_accumulation_steps=3$",
    ),
    (
        "mean_without_std",
        _none,
        _sets("teachers.natural.mean=[0.5]"),
        2,
        r"^config error: teachers\.natural\.mean / teachers\.natural\.std: give both or neither$",
    ),
    (
        "clean_weight_range",
        _none,
        _sets("stage2.eg.robust_clean_weight=2"),
        2,
        r"^config error: stage2\.eg\.robust_clean_weight: must be in \[0, 1\], got 2\.0$",
    ),
    (
        "self_weight_negative",
        _none,
        _sets("stage2.eg.robust_self_weight=-1"),
        2,
        r"^config error: stage2\.eg\.robust_self_weight: must be >= 0, got -1\.0$",
    ),
    (
        "balance_with_zero_lambda",
        _none,
        _sets("stage2.aggregation.balance=norm", "stage2.eg.lambda_nat=0"),
        2,
        r"^config error: stage2\.aggregation\.balance: norm sets ‖g1‖ : ‖g2‖ = λ_nat : λ_rob and needs both > 0, got 0\.0 : 1\.0$",
    ),
    (
        "self_objective_without_sa",
        _none,
        _sets("stage2.adv.objective=self", "stage2.sa.enabled=false"),
        2,
        r"^config error: stage2\.adv\.objective: self starting at x_d needs the self-adversary \(x_d = G\(z\) without it\); set stage2\.adv\.start=anchor$",
    ),
    ("zero_lr", _none, _sets("optim.student.lr=0"), 2, r"^config error: optim\.student\.lr: must be > 0, got 0\.0$"),
    (
        "kwargs_not_a_mapping",
        _none,
        _sets("student.kwargs=5"),
        2,
        r"^config error: student\.kwargs: expected a mapping, got 5$",
    ),
    (
        "unknown_flag",
        _none,
        ["--frobnicate"],
        2,
        r"^derd-scale train: error: unrecognized arguments: --frobnicate \(--help lists the options\)$",
    ),
    # names, protocols and model files
    (
        "unknown_dataset",
        _none,
        _sets("data.name=svhn"),
        2,
        r"^input error: data\.name: unknown dataset 'svhn'; known: cifar10",
    ),
    (
        "unknown_protocol",
        _none,
        _sets("eval.protocol=mnist_strong"),
        2,
        r"^input error: eval\.protocol: unknown 'mnist_strong'; allowed: ",
    ),
    (
        "teacher_checkpoint_missing",
        _none,
        _sets("teachers.natural.checkpoint=nat.safetensors"),
        2,
        r"^input error: teachers\.natural\.checkpoint: nat\.safetensors: file not found$",
    ),
    (
        "teacher_checkpoint_garbage_pth",
        _file("nat.pth", b"\x00garbage, not a checkpoint"),
        _sets("teachers.natural.checkpoint=nat.pth"),
        2,
        r"^input error: teachers\.natural\.checkpoint: nat\.pth: not a readable checkpoint \(UnpicklingError: ",
    ),
    (
        "teacher_checkpoint_garbage_safetensors",
        _file("rob.safetensors", b"garbage"),
        _sets("teachers.robust.checkpoint=rob.safetensors"),
        2,
        r"^input error: teachers\.robust\.checkpoint: rob\.safetensors: not a readable checkpoint \(",
    ),
    (
        "teacher_checkpoint_truncated",
        _weights("nat.pt", truncate=True),
        _sets("teachers.natural.checkpoint=nat.pt"),
        2,
        r"^input error: teachers\.natural\.checkpoint: nat\.pt: not a readable checkpoint \(a truncated or damaged zip archive",
    ),
    (
        "teacher_checkpoint_is_a_folder",
        lambda tmp: (tmp / "w").mkdir() or [],
        _sets("teachers.natural.checkpoint=w"),
        2,
        r"^input error: teachers\.natural\.checkpoint: w: not a file$",
    ),
    (
        "teacher_checkpoint_wrong_shapes",
        _weights("wide.pt", width=8),
        _sets("teachers.robust.checkpoint=wide.pt"),
        2,
        r"^input error: setup failed \(CheckpointError\): wide\.pt: state_dict does not fit SmallCNN: .*size mismatch",
    ),
    (
        "teacher_weights_nan",
        _weights("nan.safetensors", nan=True),
        _sets("teachers.robust.checkpoint=nan.safetensors"),
        2,
        r"^input error: teachers\.robust: non-finite logits on a zero batch \(corrupt weights\?\)$",
    ),
    (
        "local_dir_missing",
        _none,
        _sets("teachers.robust.arch=local-dir:teachers/rob", "teachers.robust.kwargs={}"),
        2,
        r"^input error: teachers\.robust\.arch: local-dir:teachers/rob: folder not found$",
    ),
    (
        "local_dir_without_config",
        lambda tmp: (tmp / "t").mkdir() or [],
        _sets("teachers.natural.arch=local-dir:t", "teachers.natural.kwargs={}"),
        2,
        r"^input error: teachers\.natural\.arch: local-dir:t: no config\.json in t ",
    ),
    (
        "local_dir_without_weights",
        _file("t/config.json", "{}"),
        _sets("teachers.natural.arch=local-dir:t", "teachers.natural.kwargs={}"),
        2,
        r"^input error: teachers\.natural\.arch: local-dir:t: no model\.safetensors or pytorch_model\.bin in t$",
    ),
    (
        "class_subset_missing",
        _none,
        _sets("teachers.natural.class_subset=classes.txt"),
        2,
        r"^input error: teachers\.natural\.class_subset: classes\.txt: file not found$",
    ),
    (
        "surrogate_checkpoint_missing",
        _none,
        _sets("eval.surrogate=small_cnn", "eval.surrogate_checkpoint=s.pt"),
        2,
        r"^input error: eval\.surrogate_checkpoint: s\.pt: file not found$",
    ),
    (
        "deepspeed_json_missing",
        _none,
        _sets("distributed.deepspeed_config=ds.json"),
        2,
        r"^input error: distributed\.deepspeed_config: ds\.json: file not found$",
    ),
    (
        "unknown_architecture",
        _none,
        _sets("teachers.natural.arch=resnet9000"),
        2,
        r"^input error: setup failed \(ValueError\): .*resnet9000",
    ),
    (
        "bad_student_kwargs",
        _none,
        _sets("student.kwargs={depth: 3}"),
        2,
        r"^input error: setup failed \(TypeError\): .*unexpected keyword argument 'depth'",
    ),
    # teachers against the data
    (
        "teacher_class_count",
        _none,
        _sets("teachers.natural.num_classes=5"),
        2,
        r"^input error: teachers\.natural: outputs \(2, 5\) on a batch of 2 fashion_mnist images; expected \(2, 10\): 10 classes$",
    ),
    (
        "teacher_channels",
        _export("rgb_teacher", 3),
        _sets("teachers.natural.arch=local-dir:rgb_teacher", "teachers.natural.kwargs={}"),
        2,
        r"^input error: teachers\.natural: normalises 3 input channels, fashion_mnist images have 1: a model for other data\?$",
    ),
    (
        "teacher_channels_bare",
        _weights("rgb.safetensors", in_chans=3),
        _sets("teachers.natural.checkpoint=rgb.safetensors"),
        2,
        r"^input error: setup failed \(CheckpointError\): rgb\.safetensors: state_dict does not fit SmallCNN: .*size mismatch",
    ),
    (
        "teacher_input_size",
        _none,
        _sets(
            "teachers.robust.arch=vit_tiny_patch16_224",
            "teachers.robust.kwargs={img_size: 32, patch_size: 8, depth: 1, embed_dim: 24, num_heads: 1}",
        ),
        2,
        r"^input error: teachers\.robust: fails on a batch of fashion_mnist's shape 1x28x28 \(\w+: .*28",
    ),
    (
        "student_class_count",
        _none,
        _sets("student.num_classes=7"),
        2,
        r"^input error: student: outputs \(2, 7\) on a batch of 2 fashion_mnist images",
    ),
    # real data for the evaluation
    (
        "parquet_without_path",
        _none,
        _sets(*EVAL, "data.source=parquet"),
        2,
        r"^input error: data\.path: required when data\.source is parquet",
    ),
    (
        "parquet_path_missing",
        _none,
        _sets(*EVAL, "data.source=parquet", "data.path=nowhere"),
        2,
        r"^input error: data\.path: nowhere: folder not found$",
    ),
    (
        "parquet_split_missing",
        _none,
        _sets(*EVAL, "data.source=parquet", f"data.path={SHARED}", "data.eval_split=validation"),
        2,
        r"^input error: data\.eval_split=validation: data\.path: no parquet files for split 'validation' under ",
    ),
    (
        "parquet_wrong_columns",
        _parquet({"img": [b"x"], "lbl": [1]}),
        _sets(*EVAL, "data.source=parquet", "data.path=data"),
        2,
        r"^input error: data: .*test-00000-of-00001\.parquet: no column 'image', 'label' \(fashion_mnist reads 'image' and 'label'; the file has img, lbl\)$",
    ),
    (
        "parquet_label_out_of_range",
        _parquet({"image": [b"x", b"y"], "label": [3, 12]}),
        _sets(*EVAL, "data.source=parquet", "data.path=data"),
        2,
        r"^input error: data: .*\.parquet: label 12 outside \[0, 10\) of fashion_mnist's classes$",
    ),
    (
        "parquet_labels_not_integers",
        _parquet({"image": [b"x"], "label": ["shirt"]}),
        _sets(*EVAL, "data.source=parquet", "data.path=data"),
        2,
        r"^input error: data: .*\.parquet: column 'label' must hold integer class indices$",
    ),
    (
        "parquet_garbage_file",
        _file("data/fashion_mnist/fashion_mnist/test-00000-of-00001.parquet", b"not parquet"),
        _sets(*EVAL, "data.source=parquet", "data.path=data"),
        2,
        r"^input error: data: .*\.parquet: not a readable parquet file \(",
    ),
    (
        "n_examples_beyond_split",
        _none,
        _sets(*EVAL, "data.source=parquet", f"data.path={SHARED}", "eval.n_examples=100000"),
        2,
        r"^input error: eval\.n_examples: 100000 exceeds the 10000 examples of split 'test'$",
    ),
    (
        "probe_data_missing",
        _none,
        _sets("eval.probe_attacks=[clean]", "data.source=parquet", "data.path=nowhere"),
        2,
        r"^input error: data\.path: nowhere: folder not found$",
    ),
    (
        "imagefolder_missing_classes",
        _imagefolder,
        _sets(*EVAL, "data.source=imagefolder", "data.path=imgs"),
        2,
        r"^input error: data\.eval_split=test: data\.path: no class folders in imgs/test$",
    ),
    # run folders and resume
    ("root_is_a_file", _file("runs", "x"), [], 2, r"^run folder: output\.root: runs exists and is not a folder$"),
    (
        "run_is_a_file",
        _file("runs/x", "x"),
        [],
        2,
        r"^run folder: runs/x exists and is not a folder; pick another output\.name$",
    ),
    (
        "finished_run",
        _run_folder(done=True),
        [],
        2,
        r"^run folder: runs/x holds a finished run; pick another output\.name or set output\.overwrite=true$",
    ),
    (
        "unfinished_without_resume",
        _run_folder(),
        _sets("output.resume=false"),
        2,
        r"^run folder: runs/x exists \(unfinished\) and output\.resume=false; set output\.overwrite=true to start over$",
    ),
    (
        "foreign_folder",
        _plain_folder,
        [],
        2,
        r"^run folder: runs/x exists and is not a derd_scale run folder .*never written into or deleted",
    ),
    (
        "foreign_folder_overwrite",
        _plain_folder,
        _sets("output.overwrite=true"),
        2,
        r"^run folder: runs/x exists and is not a derd_scale run folder",
    ),
    (
        "symlink_out_of_root",
        _symlinked_run,
        _sets("output.overwrite=true"),
        2,
        r"^run folder: output\.name: runs/x resolves to .*outside, outside output\.root ",
    ),
    (
        "changed_config",
        _run_folder(config=["stage2.sa.steps=3", "seed=1"], checkpoint=b"x"),
        [],
        2,
        r"^resume: runs/x: the config changed since the run started: seed \(1 -> 0\), stage2\.sa\.steps \(3 -> 2\); .*output\.allow_config_change=true",
    ),
    (
        "unreadable_checkpoints",
        _run_folder(checkpoint=b"garbage"),
        [],
        2,
        r"^resume: no readable checkpoint in runs/x/checkpoints: runs/x/checkpoints/stage2-00000002/state\.pt: unreadable \(.*\); move the folder away",
    ),
]


def _listing(root: Path) -> dict[str, tuple]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (
                st.st_mode,
                None if p.is_dir() else st.st_size,
                None if p.is_dir() else st.st_mtime_ns,
            )
    return out


def test_the_matrix_is_large_and_unique():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(case, tmp_path, monkeypatch, capsys):
    name, setup, argv, code, pattern = case
    monkeypatch.chdir(tmp_path)
    setup(tmp_path)
    before = _listing(tmp_path)
    main = _train_main()
    capsys.readouterr()
    try:
        rc = main(_sets(*BASE) + argv)
    except SystemExit as stop:  # argparse
        rc = stop.code
    out = capsys.readouterr()
    lines = [line for line in out.err.splitlines() if line.strip()]
    assert rc == code, (rc, out.err[-2000:])
    assert len(lines) == 1, out.err[-2000:]
    import re

    assert re.search(pattern, lines[0]), lines[0]
    after = _listing(tmp_path)
    if (
        name == "unreadable_checkpoints"
    ):  # the run folder's config.yaml is rewritten (same content) before the resume fails
        before.pop("runs/x/config.yaml"), after.pop("runs/x/config.yaml")
    assert after == before, sorted(set(after) ^ set(before))


def _cli(tmp_path: Path, *argv: str):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, str(REPO / "launch" / "train.py"), *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_errors_are_one_line_in_a_real_process(tmp_path):
    out = _cli(tmp_path, *_sets(*BASE, "teachers.natural.checkpoint=nat.safetensors"))
    assert (
        out.returncode == 2
        and out.stderr.strip() == "input error: teachers.natural.checkpoint: nat.safetensors: file not found"
    )
    out = _cli(tmp_path, "--frobnicate")
    assert (
        out.returncode == 2
        and out.stderr.strip()
        == "derd-scale train: error: unrecognized arguments: --frobnicate (--help lists the options)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_debug_shows_the_traceback(tmp_path):
    out = _cli(tmp_path, *_sets(*BASE, "teachers.natural.checkpoint=nat.safetensors"), "--debug")
    assert (
        out.returncode != 0
        and "Traceback" in out.stderr
        and "InputError: teachers.natural.checkpoint: nat.safetensors: file not found" in out.stderr
    )
