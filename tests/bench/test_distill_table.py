"""bench/distill_table.py's bookkeeping: the table always covers every finished row of the folder."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import load_bench

from derd_scale.run_dir import is_derd_run_folder

REPO = Path(__file__).resolve().parents[2]


def _load():
    return load_bench("distill_table")


def _row(out: Path, name: str, pgd: float, aa: float | None = None, seed: int = 0) -> dict:
    result = {
        "row": name.split("-seed")[0],
        "seed": seed,
        "attacks": {"clean": 0.8, "fgsm": 0.5, "pgd_s": pgd, "pgd_t": 0.6, "cw": 0.4},
        "n": {},
        "warnings": [],
        "seconds": 60.0,
    }
    (out / name).mkdir(parents=True)
    (out / name / "row.json").write_text(json.dumps(result))
    if aa is not None:
        (out / name / "aa.json").write_text(json.dumps({"aa": aa, "n": 1000, "seconds": 1.0}))
    return result


def test_a_run_over_some_rows_keeps_the_others_in_the_table(tmp_path):
    dt = _load()
    _row(tmp_path, "sa_only", 0.44, aa=0.405)
    _row(tmp_path, "rslad", 0.69)
    _row(tmp_path, "derd_paper", 0.0587)  # the row this run just finished
    dt.write_tables(tmp_path, {"aa_examples": 1000}, "t")
    table = (tmp_path / "results.md").read_text()
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ") and "---" not in line][
        1:
    ]
    assert rows[:3] == ["sa_only", "derd_paper", "rslad"]  # the recipe's row order, not the run's
    assert "| sa_only | 1 | 80.00 | 50.00 | 44.00 | 60.00 | 40.00 | 40.50 |" in table  # its cached AutoAttack too
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved) == {"sa_only", "derd_paper", "rslad"} and saved["derd_paper"]["attacks"]["pgd_s"] == 0.0587
    assert (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG"  # beside results.png
    assert [dt.row_group(r) for r in ("derd_paper", "rslad_gz", "dfad_rslad", "cmi_kd", "rslad", "mtard")] == [
        "DERD rows",
        "DERD rows",
        "data-free baseline",
        "data-free baseline",
        "data-driven bound",
        "data-driven bound",
    ]


def test_a_column_only_some_seeds_have_is_shown_per_seed_not_averaged(tmp_path):
    """AutoAttack on seed 0 of a two-seed row: the cell names seed 0's value; the row's mean
    (results.json 'attacks') leaves AA out until every seed has it, and 'seeds' keeps it."""
    dt = _load()
    _row(tmp_path, "derd_recommended", 0.40, aa=0.38)
    _row(tmp_path, "derd_recommended-seed1", 0.38, seed=1)
    dt.write_tables(tmp_path, {"aa_examples": 1000}, "t")
    table = (tmp_path / "results.md").read_text()
    assert "| 40.00 ± 0.00 | 38.00 (seed 0 only) | — |" in table
    saved = json.loads((tmp_path / "results.json").read_text())["derd_recommended"]
    assert "aa" not in saved["attacks"] and saved["seeds"]["0"]["aa"] == 0.38


def test_the_table_reports_the_evaluations_share_of_each_rows_time(tmp_path):
    """Rows that recorded their white-box seconds (and AutoAttack's in aa.json) get a time-share
    line: training = seconds − eval_seconds; share = (white-box + AA) / (seconds + AA)."""
    dt = _load()
    for seed, name in enumerate(["derd_recommended", "derd_recommended-seed1"]):
        _row(tmp_path, name, 0.5, aa=0.45, seed=seed)  # 60 s each, AA 1 s each
        row = json.loads((tmp_path / name / "row.json").read_text())
        row["eval_seconds"] = 15.0
        (tmp_path / name / "row.json").write_text(json.dumps(row))
    _row(tmp_path, "rslad", 0.69)  # tabled before eval_seconds existed: no share line
    _row(tmp_path, "stage1_only", 0.01)
    # an aa.json rebuilt from an older table: its AutoAttack time is unknown (null), not zero
    (tmp_path / "stage1_only" / "aa.json").write_text(json.dumps({"aa": 0.003, "n": 1000, "seconds": None}))
    dt.write_tables(tmp_path, {"aa_examples": 1000}, "t")
    table = (tmp_path / "results.md").read_text()
    # 120 s in all, 30 s of it white-box evaluation; AA 2 s: (30 + 2) / (120 + 2) = 26 %
    assert "| derd_recommended | 1.5 | 0.5 | 0.0 | 26 % |" in table
    assert "| rslad | " not in table.split("Evaluation's share")[1]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["derd_recommended"]["eval_seconds"] == 30.0 and saved["derd_recommended"]["aa_seconds"] == 2.0
    assert "eval_seconds" not in saved["rslad"]
    assert saved["stage1_only"]["attacks"]["aa"] == 0.003 and "aa_seconds" not in saved["stage1_only"]


def test_the_archive_keeps_results_logs_and_students_but_not_checkpoints_and_restores_them(tmp_path):
    dt = _load()
    out, archive, fresh = tmp_path / "out", tmp_path / "archive", tmp_path / "fresh"
    _row(out, "sa_only-seed1", 0.44, aa=0.405, seed=1)
    (out / "sa_only-seed1" / "student").mkdir()
    (out / "sa_only-seed1" / "student" / "model.safetensors").write_bytes(b"weights")
    (out / "sa_only-seed1" / "metrics.jsonl").write_text('{"step": 1}\n')
    (out / "sa_only-seed1" / "checkpoints").mkdir()  # large: never archived
    (out / "stage1_only").mkdir()  # unfinished (no row.json): never archived
    assert dt.archive_runs(out, archive, restore=False) == ["sa_only-seed1"]
    kept = archive / "runs" / "sa_only-seed1"
    assert sorted(p.name for p in kept.iterdir()) == ["aa.json", "metrics.jsonl", "row.json", "student"]
    assert not (archive / "runs" / "stage1_only").exists()
    # A new machine: restored into an empty --out, then tabled and attackable without retraining.
    assert dt.archive_runs(fresh, archive, restore=True) == ["sa_only-seed1"]
    assert (fresh / "sa_only-seed1" / "student" / "model.safetensors").read_bytes() == b"weights"
    assert dt.finished_rows(fresh)["sa_only"]["seeds"]["1"]["aa"] == 0.405
    # A live run folder is never overwritten by the archive.
    (fresh / "sa_only-seed1" / "row.json").write_text((fresh / "sa_only-seed1" / "row.json").read_text() + " ")
    live = (fresh / "sa_only-seed1" / "row.json").read_text()
    assert (
        dt.archive_runs(fresh, archive, restore=True) == []
        and (fresh / "sa_only-seed1" / "row.json").read_text() == live
    )


def test_stage2_diagnostics_are_cached_beside_the_run_and_read_back_without_the_log(tmp_path):
    dt = _load()
    run = tmp_path / "derd_paper"
    run.mkdir()
    lines = [{"stage": "stage1", "step": 4, "cos_g1_g2": 9.0}] + [
        {"stage": "stage2", "step": s, "cos_g1_g2": c} for s, c in ((1, 0.0), (2, 0.0), (3, -0.5), (4, -0.7))
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    # the second half of Stage II (steps 3 and 4): (-0.5 - 0.7) / 2; Stage I never counts
    assert dt.row_diagnostics(run, ("cos_g1_g2", "tau1")) == {"cos_g1_g2": pytest.approx(-0.6), "tau1": None}
    (run / "metrics.jsonl").unlink()  # e.g. a run restored from an archive without its log
    assert dt.row_diagnostics(run, ("cos_g1_g2", "tau1"))["cos_g1_g2"] == pytest.approx(-0.6)
    assert dt.row_diagnostics(tmp_path / "rslad", ("cos_g1_g2",)) == {}


def test_seeds_are_one_row_with_mean_std_and_per_seed_values(tmp_path):
    dt = _load()
    _row(tmp_path, "sa_only", 0.40, aa=0.30)
    _row(tmp_path, "sa_only-seed1", 0.44, aa=0.36, seed=1)
    _row(tmp_path, "sa_only-seed2", 0.48, seed=2)  # AutoAttack not run yet on this seed
    dt.write_tables(tmp_path, {"aa_examples": 1000}, "t")
    saved = json.loads((tmp_path / "results.json").read_text())["sa_only"]
    assert saved["attacks"]["pgd_s"] == pytest.approx(0.44) and saved["std"]["pgd_s"] == pytest.approx(0.04)
    assert set(saved["seeds"]) == {"0", "1", "2"} and saved["seeds"]["1"]["pgd_s"] == 0.44
    assert "aa" not in saved["attacks"]  # a mean over the seeds that have it would mislead
    assert saved["seconds"] == 180.0
    assert "| sa_only | 3 | 80.00 ± 0.00 | 50.00 ± 0.00 | 44.00 ± 4.00 |" in (tmp_path / "results.md").read_text()


@pytest.mark.parametrize("recipe", ["fmnist", "cifar10", "cifar10_2", "cifar10_8"])
def test_every_baseline_row_is_a_valid_config_with_the_derd_rows_student_budget(recipe):
    from derd_scale.config import config_from_dict

    dt = _load()
    r = dt.recipe(recipe, "../shared/data")
    base = config_from_dict({}, r["config"])
    budget = dt.student_budget(base)
    for row in dt.TABLE2_ROWS:
        cfg = config_from_dict({}, r["config"] + dt.row_overrides(row, base))
        if row in dt.METHOD_ROWS:
            g, s = dt.step_counts(cfg)
            assert cfg.method != "derd" and not cfg.stage1.enabled
            assert cfg.stage2.steps * s == budget, (row, cfg.stage2.steps, s)
            assert f"{budget} student steps" in dt.row_budget(row, r)
        else:
            assert cfg.method == "derd"
    assert set(dt.BASELINE_ROWS) <= set(dt.ALL_ROWS) and {"dfad_rslad", "ferd_recon", "mtard"} <= set(dt.TABLE2_ROWS)


def test_a_changed_generator_student_ratio_keeps_the_student_budget():
    """--set baselines.student_steps=1 (ZSKT's ratio 1 : 10 → 1 : 1): 800 steps of one student
    step each, not ZSKT's 80 steps of one."""
    from derd_scale.config import config_from_dict

    dt = _load()
    r = dt.recipe("fmnist", "../shared/data")
    config = r["config"] + ["baselines.student_steps=1"]
    base = config_from_dict({}, config)
    cfg = config_from_dict({}, config + dt.row_overrides("zskt_kd", base))
    assert dt.step_counts(cfg) == (1, 1)
    assert cfg.stage2.steps == dt.student_budget(base) == 800


def test_a_method_row_trains_through_train_writes_the_same_row_schema_and_is_resumable(tmp_path, monkeypatch):
    dt = _load()
    r = dt.recipe("fmnist", str(tmp_path / "data"))
    seen = []

    def fake_train(cfg, stem):
        seen.append(cfg)
        run = tmp_path / cfg.output.name
        (run / "eval").mkdir(parents=True)
        report = {
            "attacks": {"clean": {"accuracy": 0.7, "n": 10}, "pgd_s": {"accuracy": 0.4, "n": 10}},
            "per_class": {
                "clean": {"accuracy": [0.9, 0.5], "n": [5, 5]},
                "pgd_s": {"accuracy": [0.6, 0.2], "n": [5, 5]},
            },
        }
        (run / "eval" / "report.json").write_text(json.dumps(report))
        (run / "metrics.jsonl").write_text(json.dumps({"stage": "stage2", "step": 1, "l_s": 1.0}) + "\n")
        (run / "DONE").write_text(json.dumps({"train_seconds": 5.0, "mixed_precision": "no"}))

    monkeypatch.setattr("derd_scale.trainer.train", fake_train)
    result = dt.run_row("dfad_rslad", r, tmp_path, progress=False, seed=1)
    (cfg,) = seen
    assert (cfg.method, cfg.baselines.variant, cfg.seed, cfg.output.name) == ("dfad", "rslad", 1, "dfad_rslad-seed1")
    assert cfg.stage2.steps == 160  # 800 student steps at 5 per step
    assert set(result) == {
        "row",
        "seed",
        "attacks",
        "n",
        "warnings",
        "seconds",
        "precision",
        "eval_seconds",
        "per_class",
    }  # the DERD rows' schema
    assert result["precision"] == "fp32"  # from its DONE: what it trained in, not what this machine would
    assert result["attacks"] == {"clean": 0.7, "pgd_s": 0.4}
    assert result["per_class"] == {"clean": [0.9, 0.5], "pgd_s": [0.6, 0.2]}
    assert dt.run_row("dfad_rslad", r, tmp_path, progress=False, seed=1) == result and len(seen) == 1  # cached
    dt.write_tables(tmp_path, r, "t")
    table = (tmp_path / "results.md").read_text()
    assert "| dfad_rslad | 1 | 70.00 |" in table and "- dfad_rslad: 800 student steps (160 × 5), 160 G steps" in table


def test_rows_table2_expands_and_an_unknown_row_is_refused(tmp_path, monkeypatch, capsys):
    dt = _load()
    ran = []
    monkeypatch.setattr(dt, "run_row", lambda row, r, out, progress, seed=0: ran.append(row))
    monkeypatch.setattr(dt, "write_tables", lambda *a: (tmp_path / "results.md").write_text(""))
    assert dt.main(["--recipe", "cifar10", "--out", str(tmp_path), "--rows", "table2", "--no-aa"]) == 0
    assert ran == sorted(dt.TABLE2_ROWS + ("stage1_only",), key=dt.ALL_ROWS.index)
    assert dt.main(["--recipe", "cifar10", "--out", str(tmp_path), "--rows", "dfad_kd,nope"]) == 2
    assert "unknown ['nope']" in capsys.readouterr().err


def test_the_budget_line_states_what_the_rows_trained_in_naming_the_exceptions(tmp_path):
    """mixed_precision=auto resolves per machine, so a table of rows trained on several machines
    reads each row's precision (row.json, from its DONE) instead of the machine writing the table."""
    dt = _load()
    rows = [("rslad", "bf16 autocast"), ("sat", "bf16 autocast"), ("iad", "fp32"), ("ard", None)]
    rows += [("trades", "bf16 autocast"), ("sat-seed1", "fp32")]  # a seed trained on another machine
    for name, precision in rows:
        result = _row(tmp_path, name, 0.3, seed=1 if name.endswith("seed1") else 0)
        if precision is not None:
            result["precision"] = precision
        (tmp_path / name / "row.json").write_text(json.dumps(result))
    dt.write_tables(tmp_path, {"aa_examples": 1000, "budget": "2000 steps"}, "t")
    table = (tmp_path / "results.md").read_text()
    assert "training in bf16 autocast (fp32: sat seed 1, iad; not recorded: ard), evaluation in fp32." in table
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["iad"]["precision"] == "fp32" and "precision" not in saved["ard"]
    assert saved["sat"]["precision"] == {"0": "bf16 autocast", "1": "fp32"}
    assert dt.precision_text({"a": {"precision": "fp32"}, "b": {"precision": "fp32"}}) == "fp32"
    mixed = {"sat": {"precision": {"0": "bf16 autocast", "1": "bf16 autocast", "2": "fp32"}}, "rslad": {}}
    assert dt.precision_text(mixed) == "bf16 autocast (fp32: sat seed 2; not recorded: rslad)"  # in row order
    both = {"sat": {"precision": {"0": "fp32", "1": "fp32"}}, "trades": {"precision": "bf16 autocast"}}
    assert dt.precision_text(both) == "fp32 (bf16 autocast: trades)"  # the most common (row, seed) leads
    two = {"sat": {"precision": {"0": "fp32", "1": "fp32"}}, "a": {"precision": "bf16 autocast"}}
    two["b"] = two["c"] = {"precision": "bf16 autocast"}
    assert dt.precision_text(two) == "bf16 autocast (fp32: sat)"
    assert dt.precision_text({}) == "not recorded"
    done = tmp_path / "run"
    done.mkdir()
    assert dt.run_precision(done) is None  # no DONE
    (done / "DONE").write_text(json.dumps({"train_seconds": 1.0}))
    assert dt.run_precision(done) is None  # a DONE from before the record
    (done / "DONE").write_text(json.dumps({"mixed_precision": "bf16"}))
    assert dt.run_precision(done) == "bf16 autocast"


def test_a_set_override_is_named_in_the_stated_budget(tmp_path, monkeypatch):
    """The budget line is the recipe's text: a --set (e.g. a pilot's stage2.batch_size=128, or a reduced
    stage1.steps) must be named in it, first, so the recipe's step counts are not read as the table's."""
    dt = _load()
    budgets = []
    monkeypatch.setattr(dt, "run_row", lambda row, r, out, progress, seed=0: budgets.append(r["budget"]))
    monkeypatch.setattr(dt, "write_tables", lambda *a: (tmp_path / "results.md").write_text(""))
    argv = ["--recipe", "cifar10", "--out", str(tmp_path), "--rows", "rslad", "--no-aa"]
    assert dt.main(argv) == 0 and "--set" not in budgets[-1]
    assert dt.main(argv + ["--set", "stage2.batch_size=128"]) == 0
    assert budgets[-1].startswith("the recipe's, with every row changed by --set `stage2.batch_size=128` (")


@pytest.mark.parametrize("recipe", ["cifar10_2", "cifar10_8"])
def test_the_cifar10_derd_rows_train_stage2_at_128_and_the_method_rows_keep_64(recipe):
    """stage2.batch_size is DERD's Stage-II batch and every registered method's batch: the recipe moves
    DERD's to 128 and pins the methods (RSLAD's bound among them) at the 64 they were measured at,
    and a --set of that key reaches every row."""
    from derd_scale.config import config_from_dict

    dt = _load()

    def batch(r, row):
        base = config_from_dict({}, r["config"])
        return config_from_dict({}, dt.row_config(row, r) + dt.row_overrides(row, base)).stage2.batch_size

    r = dt.recipe(recipe, "D")
    assert [batch(r, row) for row in ("derd_recommended", "derd_paper", "sa_only", "rslad_gz")] == [128] * 4
    assert {batch(r, row) for row in dt.METHOD_ROWS} == {64}
    assert config_from_dict({}, dt.row_config("rslad", r)).stage1.batch_size == 64
    assert "Stage II 1000 at batch 128" in r["budget"] and "7400 at batch 64" in r["budget"]
    wide = dt.with_overrides(r, ["stage2.batch_size=256"])
    assert {batch(wide, row) for row in ("derd_recommended", "rslad", "dfad_kd")} == {256}
    spaced = dt.with_overrides(r, [" stage2.batch_size = 256"])  # read as the config reads it
    assert {batch(spaced, row) for row in ("derd_recommended", "rslad")} == {256}
    assert dt.with_overrides(r, ["seed=1"])["method_config"] == r["method_config"]
    assert r["config"] == dt.recipe(recipe, "D")["config"]  # with_overrides copies, never edits the recipe
    fm = dt.recipe("fmnist", "D")  # one batch for every row there
    assert batch(fm, "derd_recommended") == batch(fm, "rslad") == 128


def test_cifar10_is_cifar10_2_and_cifar10_8_is_the_papers_protocol_on_the_projects_teacher():
    from derd_scale.config import config_from_dict

    dt = _load()
    assert dt.recipe("cifar10", "D") == dt.recipe("cifar10_2", "D")  # the old name keeps working
    two = config_from_dict({}, dt.recipe("cifar10_2", "D")["config"])
    r8 = dt.recipe("cifar10_8", "D")
    eight = config_from_dict({}, r8["config"])
    assert two.eval.eps == pytest.approx(2 / 255) and eight.eval.eps == pytest.approx(8 / 255)
    assert eight.eval.alpha == pytest.approx(2 / 255) and two.eval.alpha == pytest.approx(0.5 / 255)
    assert eight.teachers.robust.arch == f"local-dir:{REPO / 'bench' / 'teachers' / 'cifar10_8' / 'fgsm_rs'}"
    assert two.teachers.robust.arch == "resnet4b" and eight.teachers.natural == two.teachers.natural
    assert dt.student_budget(eight) == dt.student_budget(two)
    assert f"every row {dt.student_budget(two)} student steps" in r8["budget"]  # the stated budget is the real one
    assert "ε = 8/255" in r8["budget"] and "FGSM-RS ResNet-20" in r8["budget"]
    assert r8["ensure_teachers"] is dt.ensure_cifar10_8_teacher and dt.recipe("cifar10", "D")["ensure_teachers"] is None
    teacher = dt.cifar10_8_teacher_config(Path("t"), "D")
    teacher.validate()
    assert (teacher.method, teacher.model.arch, teacher.eps, teacher.alpha) == (
        "fgsm_rs",
        "resnet20",
        8 / 255,
        10 / 255,
    )
    assert teacher.val_examples == 1000 and teacher.patience == 3 and teacher.optim.warmup_steps == 2 * 382


def test_main_ensures_the_recipes_teacher_and_names_the_folder_as_asked(tmp_path, monkeypatch):
    dt = _load()
    ensured = []
    monkeypatch.setattr(dt, "ensure_cifar10_8_teacher", lambda folder, data_path: ensured.append(folder))
    monkeypatch.setattr(dt, "run_row", lambda *a, **k: None)
    monkeypatch.setattr(dt, "write_tables", lambda out, r, title: (out / "results.md").write_text(title))
    monkeypatch.chdir(tmp_path)
    assert dt.main(["--recipe", "cifar10_8", "--rows", "sat", "--no-aa"]) == 0
    assert ensured == [REPO / "bench" / "teachers" / "cifar10_8"]
    assert dt.main(["--recipe", "cifar10", "--rows", "sat", "--no-aa"]) == 0 and len(ensured) == 1
    assert (tmp_path / "bench/out/cifar10/results.md").read_text().startswith("cifar10_2:")


@pytest.mark.slow
def test_the_cifar10_8_teacher_recipe_trains_resumably_loads_as_local_dir_and_gets_six_columns(
    tmp_path, shared_data, monkeypatch
):
    """The real recipe (ResNet-20, FGSM-RS, held-out early stopping) for one short epoch on 192
    images, then the six columns on 4 test images; a second call trains and evaluates nothing."""
    from derd_scale.config import ModelConfig
    from derd_scale.data import dataset_info
    from derd_scale.teachers import model_from_config

    dt = _load()
    few = dict(max_train_examples=192, val_examples=64, batch_size=64, epochs=1, eval_examples=8, eval_steps=1)
    teacher = dt.ensure_cifar10_8_teacher(tmp_path, str(shared_data), aa_examples=4, **few)
    assert teacher == tmp_path / "fgsm_rs"
    metrics = json.loads((teacher / "metrics.json").read_text())
    assert metrics["best_epoch"] == 1 and metrics["n"] == 8 and metrics["eps"] == pytest.approx(8 / 255)
    report = json.loads((teacher / "eval" / "report.json").read_text())
    assert set(report["attacks"]) == set(dt.TEACHER_COLUMNS) and report["attacks"]["aa"]["n"] == 4
    assert not (teacher / "eval_partial").exists()  # the resume batches go once the report is saved
    model = model_from_config(ModelConfig(arch=f"local-dir:{teacher}"), dataset_info("cifar10"))
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    import derd_scale.teacher_training as tt

    monkeypatch.setattr(tt, "train_teacher", lambda cfg: pytest.fail("trained again"))
    monkeypatch.setattr(dt, "evaluate_teacher_columns", lambda *a: pytest.fail("evaluated again"))
    assert dt.ensure_cifar10_8_teacher(tmp_path, str(shared_data), aa_examples=4, **few) == teacher


def test_after_a_row_only_that_run_is_archived(tmp_path):
    dt = _load()
    out, archive = tmp_path / "out", tmp_path / "archive"
    _row(out, "sa_only", 0.44)
    _row(out, "rslad", 0.69)
    assert dt.archive_runs(out, archive, restore=False, runs=["rslad"]) == ["rslad"]
    assert sorted(p.name for p in (archive / "runs").iterdir()) == ["rslad"]


def test_a_derd_row_retrains_a_restored_stage1_and_counts_only_its_own_seconds(tmp_path, monkeypatch):
    dt = _load()
    r = dt.recipe("fmnist", str(tmp_path / "data"))
    out = tmp_path / "out"
    restored = _row(out, "stage1_only-seed1", 0.7, aa=0.001, seed=1)  # from an archive: results, no checkpoints
    trained = []
    clock = type("Clock", (), {"now": 0.0, "time": lambda self: self.now})()
    monkeypatch.setattr(dt, "time", clock)

    def fake_train(cfg, stem):
        run = out / cfg.output.name
        trained.append(cfg.output.name)
        clock.now += 1000.0 if cfg.output.name.startswith("stage1_only") else 7.0  # wall seconds of each
        if cfg.output.name.startswith("stage1_only"):
            (run / "checkpoints" / "stage1-00000400").mkdir(parents=True)
            (run / "checkpoints" / "stage1-00000400" / "state.pt").write_bytes(b"stage I")
            seconds = 100.0
        else:  # resumed from the copied Stage I: its DONE counts the Stage I's seconds too
            assert (run / "checkpoints" / "stage1-00000400" / "state.pt").read_bytes() == b"stage I"
            assert is_derd_run_folder(run)  # nothing else in it yet, or train() refuses the folder
            seconds = 130.0
        (run / "DONE").write_text(json.dumps({"train_seconds": seconds}))
        (run / "eval").mkdir(parents=True, exist_ok=True)
        columns = restored["attacks"] if cfg.output.name.startswith("stage1_only") else {"clean": 0.7}
        report = {"attacks": {k: {"accuracy": v, "n": 10} for k, v in columns.items()}}
        (run / "eval" / "report.json").write_text(json.dumps(report))
        (run / "metrics.jsonl").write_text("")

    monkeypatch.setattr("derd_scale.trainer.train", fake_train)
    first = dt.run_row("derd_recommended", r, out, progress=False, seed=1)
    assert trained == ["stage1_only-seed1", "derd_recommended-seed1"]
    assert first["seconds"] == 7.0  # the Stage I retrained on the way is its own row's time
    assert json.loads((out / ".restored" / "stage1_only-seed1" / "row.json").read_text()) == restored
    # the retrained Stage I is tabled again, with the archived AutoAttack cell: every column matched
    assert dt.finished_rows(out)["stage1_only"]["seeds"]["1"]["aa"] == 0.001
    row_dir = out / "derd_recommended-seed1"
    assert json.loads((row_dir / dt.STAGE1_SOURCE).read_text())["train_seconds"] == 100.0
    assert dt.own_train_seconds(row_dir, None) == 30.0  # recorded when it finished: no Stage I needed
    # Re-tabled later from its exported student (the DONE path): 30 s of training, not 130.
    (row_dir / "row.json").unlink()
    monkeypatch.setattr(dt, "evaluate_exported", lambda *a: {"attacks": {"clean": {"accuracy": 0.7, "n": 10}}})
    assert dt.run_row("derd_recommended", r, out, progress=False, seed=1)["seconds"] == 30.0
    # The Stage I re-tabled the same way counts all of its own 100 s (it is nobody's Stage II).
    (out / "stage1_only-seed1" / "row.json").unlink()
    assert dt.run_row("stage1_only", r, out, progress=False, seed=1)["seconds"] == 100.0


def test_a_row_killed_and_resumed_counts_the_training_before_the_kill(tmp_path, monkeypatch):
    dt = _load()
    r = dt.recipe("fmnist", str(tmp_path / "data"))
    out = tmp_path / "out"
    stage1 = out / "stage1_only"
    stage1.mkdir(parents=True)
    (stage1 / "DONE").write_text(json.dumps({"train_seconds": 100.0}))
    row_dir = out / "derd_recommended"

    def checkpoint(name, seconds, stage="stage2"):
        blob = {"stage": stage, "step": 1, "models": {}, "schedulers": {}, "torch_rng": torch.get_rng_state()}
        (row_dir / "checkpoints" / name).mkdir(parents=True)
        torch.save({**blob, "train_seconds": seconds}, row_dir / "checkpoints" / name / "state.pt")

    checkpoint("stage1-00000400", 100.0, stage="stage1")  # the copied Stage I
    shutil.copytree(row_dir / "checkpoints", stage1 / "checkpoints")
    assert dt.trained_before_resume(row_dir, stage1) == 0.0  # a fresh Stage-II row
    checkpoint("stage2-00000600", 160.0)
    checkpoint("stage2-00000700", 170.0)
    (row_dir / "checkpoints" / "stage2-00000800").mkdir()
    (row_dir / "checkpoints" / "stage2-00000800" / "state.pt").write_bytes(b"torn by the kill")
    assert dt.trained_before_resume(row_dir, stage1) == 70.0  # the newest readable one, less its Stage I
    assert dt.trained_before_resume(row_dir, None) == 170.0

    clock = type("Clock", (), {"now": 0.0, "time": lambda self: self.now})()
    monkeypatch.setattr(dt, "time", clock)

    def fake_train(cfg, stem):  # the resumed process trains 5 s more, then evaluates
        clock.now += 5.0
        (row_dir / "DONE").write_text(json.dumps({"train_seconds": 175.0}))
        (row_dir / "eval").mkdir(exist_ok=True)
        (row_dir / "eval" / "report.json").write_text(json.dumps({"attacks": {"clean": {"accuracy": 0.7, "n": 10}}}))
        (row_dir / "metrics.jsonl").write_text("")

    monkeypatch.setattr("derd_scale.trainer.train", fake_train)
    assert dt.run_row("derd_recommended", r, out, progress=False, seed=0)["seconds"] == 75.0


def test_autoattack_on_a_run_without_its_student_says_so_and_leaves_the_cell_empty(tmp_path, capsys):
    dt = _load()
    _row(tmp_path, "sa_only", 0.44)  # e.g. restored from an archive that predates kept students
    r = dt.recipe("fmnist", str(tmp_path / "data"))
    assert dt.autoattack_row("sa_only", r, tmp_path, progress=False) is None
    assert "sa_only: no exported student" in capsys.readouterr().out
    assert not (tmp_path / "sa_only" / "aa.json").exists()


def test_a_retrained_stage1_that_differs_from_the_archived_one_stops_the_row(tmp_path, monkeypatch):
    dt = _load()
    r = dt.recipe("fmnist", str(tmp_path / "data"))
    _row(tmp_path, "stage1_only", 0.01, aa=0.001)  # restored: results only

    def fake_train(cfg, stem):  # a Stage I that comes out different (e.g. trained by older code)
        run = tmp_path / cfg.output.name
        (run / "checkpoints" / "stage1-00000400").mkdir(parents=True)
        (run / "checkpoints" / "stage1-00000400" / "state.pt").write_bytes(b"stage I")
        (run / "DONE").write_text(json.dumps({"train_seconds": 1.0}))
        (run / "eval").mkdir()
        (run / "eval" / "report.json").write_text(json.dumps({"attacks": {"clean": {"accuracy": 0.75, "n": 10}}}))
        (run / "metrics.jsonl").write_text("")

    monkeypatch.setattr("derd_scale.trainer.train", fake_train)
    with pytest.raises(
        RuntimeError, match=r"^stage1_only: the retrained Stage I differs from the archived one \(clean 0\.75 vs 0\.8\)"
    ):
        dt.run_row("sa_only", r, tmp_path, progress=False)
    assert not (tmp_path / "sa_only").exists() and not (tmp_path / "stage1_only" / "aa.json").exists()


def test_a_derd_rows_budget_counts_stage2_student_steps_per_step():
    """stage2.student_steps=k: a DERD row's budget is Stage I + k × Stage-II steps, with G stepping
    once per Stage-II step, and the string says so."""
    from derd_scale.config import config_from_dict

    dt = _load()
    r = dt.recipe("fmnist", "../shared/data")
    r["config"] = r["config"] + ["stage2.steps=200", "stage2.student_steps=2"]
    cfg = config_from_dict({}, r["config"])
    assert dt.student_budget(cfg) == cfg.stage1.steps + 400
    assert dt.row_budget("derd_recommended", r) == (
        f"{cfg.stage1.steps + 400} student steps (Stage I {cfg.stage1.steps} + Stage II 400 (200 × 2)), "
        f"{cfg.stage1.steps * cfg.stage1.generator_steps + 200} G steps, data-free"  # the recipe's Stage I: 4 per step
    )
    assert cfg.stage1.generator_steps == 4
    assert dt.row_budget("stage1_only", r).startswith(f"{cfg.stage1.steps} student steps")


def test_an_unfinished_autoattack_travels_with_the_archive_and_leaves_with_its_result(tmp_path):
    """aa_partial (the finished AutoAttack batches) is archived while the run has it, restored on a
    new machine so the attack resumes there, and dropped from the archive once aa.json exists."""
    dt = _load()
    out, archive, fresh = tmp_path / "out", tmp_path / "archive", tmp_path / "fresh"
    _row(out, "rslad_gz", 0.44)
    (out / "rslad_gz" / "aa_partial").mkdir()
    (out / "rslad_gz" / "aa_partial" / "eval-batches-rank0.jsonl").write_text('{"batch": 0}\n')
    dt.archive_runs(out, archive, restore=False, runs=["rslad_gz"])
    assert dt.archive_runs(fresh, archive, restore=True) == ["rslad_gz"]
    assert (fresh / "rslad_gz" / "aa_partial" / "eval-batches-rank0.jsonl").read_text() == '{"batch": 0}\n'
    # the attack finishes on the new machine: aa.json written, its partial folder removed
    shutil.rmtree(fresh / "rslad_gz" / "aa_partial")
    (fresh / "rslad_gz" / "aa.json").write_text(json.dumps({"aa": 0.4}))
    dt.archive_runs(fresh, archive, restore=False, runs=["rslad_gz"])
    kept = archive / "runs" / "rslad_gz"
    assert (kept / "aa.json").exists() and not (kept / "aa_partial").exists()


def test_restoring_never_touches_a_run_that_is_still_training(tmp_path):
    """A second process started with --archive while a row trains must not copy the archived
    row.json into the live folder (the row would then read as finished and be skipped, and the
    Stage-II diagnostics cached from a partial log)."""
    dt = _load()
    out, archive = tmp_path / "out", tmp_path / "archive"
    _row(archive / "runs", "derd_recommended", 0.30)
    (out / "derd_recommended" / "checkpoints").mkdir(parents=True)  # training: no row.json yet
    assert dt.archive_runs(out, archive, restore=True) == []
    assert not (out / "derd_recommended" / "row.json").exists()


def test_the_shipped_cifar10_config_carries_the_cifar10_recipes_method_switches():
    """configs/cifar10_local.yaml is the recipe at a GPU's batch and step budget: every switch that
    decides *what* is trained (students' start, Stage I's terms, Stage II's views, the preset, the
    teachers, the ε) is the measured recipe's, so a user running the shipped config gets the method
    the tables measured. Only budgets, evaluation size and output may differ."""
    from derd_scale.config import config_from_dict, load_config, to_dict
    from derd_scale.run_dir import _flatten  # the dotted view resume uses to name changed keys

    dt = _load()
    shipped = _flatten(to_dict(load_config(REPO / "configs" / "cifar10_local.yaml")))
    measured = _flatten(
        to_dict(
            config_from_dict(
                {}, dt.recipe("cifar10_2", "../shared/data")["config"] + dt.ROW_OVERRIDES["derd_recommended"]
            )
        )
    )
    budget = {
        "stage1.steps",
        "stage1.batch_size",
        "stage2.steps",
        "stage2.batch_size",
        "eval.n_examples",
        "eval.attacks",
        "eval.every_steps",
        "eval.probe_examples",
        "eval.masking_check",
        "eval.alpha",  # the recipe's white-box step; the shipped config keeps the protocol's
        "baselines.augment",  # the data-driven rows' views; no baseline runs from this config
    }
    differ = [
        (key, value, measured[key])
        for key, value in shipped.items()
        if value != measured[key] and key not in budget and not key.startswith(("output.", "logging."))
    ]
    assert not differ, differ


def test_rows_shared_from_another_table_are_restored_but_archived_only_once_they_change(tmp_path, monkeypatch):
    """--restore-from: the cifar10_2 Table 2 shares the DERD rows and RSLAD of the issue-15 table
    (docs/results/cifar10). They are restored into --out and tabled, but --archive gets no second copy
    of a run until it changes in --out (here: its AutoAttack cell), and a new row is archived as usual."""
    dt = _load()
    out, own, shared = tmp_path / "out", tmp_path / "table2", tmp_path / "cifar10"
    _row(shared / "runs", "rslad", 0.63, aa=0.631)
    _row(shared / "runs", "derd_recommended", 0.47)  # no AA cell yet
    (shared / "runs" / "derd_recommended" / "student").mkdir()
    (shared / "runs" / "derd_recommended" / "student" / "model.safetensors").write_bytes(b"weights")

    def fake_run_row(row, r, out_dir, progress, seed=0):
        if not (out_dir / row / "row.json").exists():
            _row(out_dir, row, 0.2)

    def fake_aa(row, r, out_dir, progress, seed=0):
        if not (out_dir / row / "aa.json").exists():
            (out_dir / row / "aa.json").write_text(json.dumps({"aa": 0.44, "n": 1000, "seconds": 1.0}))

    monkeypatch.setattr(dt, "run_row", fake_run_row)
    monkeypatch.setattr(dt, "autoattack_row", fake_aa)
    argv = ["--recipe", "cifar10_2", "--out", str(out), "--archive", str(own), "--restore-from", str(shared)]
    assert dt.main(argv + ["--rows", "rslad,deepinv_rslad", "--no-aa"]) == 0
    assert (out / "rslad" / "aa.json").exists()  # restored, and tabled with its AA cell
    assert json.loads((out / "results.json").read_text())["rslad"]["attacks"]["aa"] == 0.631
    assert sorted(p.name for p in (own / "runs").iterdir()) == ["deepinv_rslad"]  # not rslad: unchanged
    # derd_recommended gains its AA cell here: from then on this table keeps its own copy
    assert dt.main(argv + ["--rows", "derd_recommended"]) == 0
    assert json.loads((own / "runs" / "derd_recommended" / "aa.json").read_text())["aa"] == 0.44
    # every table rewrite of a training or attacking run also lands beside --archive's runs
    assert json.loads((own / "results.json").read_text())["derd_recommended"]["attacks"]["aa"] == 0.44
    assert (own / "results.md").read_bytes() == (out / "results.md").read_bytes()
    assert (own / "runs" / "derd_recommended" / "student" / "model.safetensors").read_bytes() == b"weights"
    assert not (own / "runs" / "rslad").exists() and not (shared / "runs" / "derd_recommended" / "aa.json").exists()
    assert dt.main(argv[:-1] + [str(tmp_path / "nowhere"), "--rows", "rslad", "--no-aa"]) == 2


def test_autoattack_is_read_against_the_data_driven_bound_with_the_masking_gap(tmp_path):
    dt = _load()
    _row(tmp_path, "derd_recommended", 0.4712, aa=0.4435)
    _row(tmp_path, "rslad", 0.6377, aa=0.631)
    _row(tmp_path, "deepinv_rslad", 0.2185, aa=0.156)
    _row(tmp_path, "sa_only", 0.40)  # no AA cell yet: not in the block
    bound = dt.against_the_bound(dt.finished_rows(tmp_path))
    assert set(bound) == {"derd_recommended", "rslad", "deepinv_rslad"}
    # 0.4435 / 0.631 = 0.70285…; 0.4712 − 0.4435 = 0.0277; 0.2185 − 0.156 = 0.0625 (> the 5-point bound)
    assert bound["derd_recommended"]["ratio"] == pytest.approx(0.70285, abs=1e-5)
    assert bound["derd_recommended"]["pgd_s_minus_aa"] == pytest.approx(0.0277)
    assert bound["rslad"]["ratio"] == pytest.approx(1.0)
    dt.write_tables(tmp_path, {"aa_examples": 1000}, "t")
    table = (tmp_path / "results.md").read_text()
    assert "| derd_recommended | 44.35 | 0.70 | 2.77 |" in table
    assert "| deepinv_rslad | 15.60 | 0.25 | 6.25 (> 5) |" in table
    # without the bound's AA there is no ratio, but the gap is still shown
    shutil.rmtree(tmp_path / "rslad")
    assert dt.against_the_bound(dt.finished_rows(tmp_path))["derd_recommended"]["ratio"] is None


def test_table_only_rewrites_a_committed_table_without_training_attacking_or_ensuring_teachers(tmp_path, monkeypatch):
    dt = _load()
    archive, out = tmp_path / "archive", tmp_path / "out"
    _row(archive / "runs", "rslad", 0.63, aa=0.631)
    _row(archive / "runs", "sa_only", 0.40)  # no AA cell: --table-only must not run it

    def refuse(*a, **k):
        raise AssertionError("--table-only trained, attacked or ensured a teacher")

    monkeypatch.setattr(dt, "run_row", refuse)
    monkeypatch.setattr(dt, "autoattack_row", refuse)
    monkeypatch.setattr(dt, "ensure_cifar10_8_teacher", refuse)
    argv = ["--recipe", "cifar10_8", "--out", str(out), "--archive", str(archive), "--rows", "table2"]
    assert dt.main(argv + ["--table-only"]) == 0
    assert set(json.loads((out / "results.json").read_text())) == {"sa_only", "rslad"}
    assert "| rslad | 63.10 | 1.00 |" in (out / "results.md").read_text()
    # the committed copy beside the archived runs is the table just written, file for file
    for name in dt.TABLE_FILES:
        assert (archive / name).read_bytes() == (out / name).read_bytes()
