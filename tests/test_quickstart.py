"""The quickstart pipeline at the CI budget: real teachers, data-free DERD, real test data."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HANG_GUARD_S = 2700  # each run; the CI budget is 90 min for the whole suite


@pytest.mark.slow
def test_quickstart_tiny_budget_beats_an_untrained_network(tmp_path, shared_data):
    out = tmp_path / "qs"
    cmd = [
        sys.executable,
        str(REPO / "launch" / "quickstart.py"),
        "--data-path",
        str(shared_data),
        "--budget",
        "tiny",
        "--out",
        str(out),
        "--no-progress",
    ]
    # The timeouts guard against a hang, they time nothing: the tiny pipeline takes ~10 min alone on a
    # 2-core AVX2 machine, and went past 20 beside three one-thread processes (2026-12-07).
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_GUARD_S, cwd=REPO)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["rows"]
    derd, untrained = rows["DERD student"], rows["untrained student"]
    assert derd["pgd_s"] > untrained["pgd_s"], rows
    assert derd["clean"] > 0.3  # well above the 10 % of chance on 10 classes
    assert set(derd) >= {"clean", "fgsm", "pgd_s", "pgd_t", "cw", "aa"}
    assert "| Clean | FGSM | PGD_S | PGD_T | CW | AA | Ave |" in first.stdout  # the six columns, printed
    for png in (out / "results.png", out / "derd" / "curves.png"):
        assert png.stat().st_size > 10_000
    # a second run reuses the cached teachers and, its config unchanged, the finished DERD run
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_GUARD_S, cwd=REPO)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("reusing cached") == 2
    assert "reusing the finished DERD run" in second.stdout
    assert json.loads((out / "summary.json").read_text())["rows"] == rows  # the same student, re-tabulated


def test_a_finished_derd_run_is_reused_only_under_the_same_config(tmp_path):
    """The quickstart's second run skips training only when the finished run's saved config equals
    the new one (keys a resume ignores aside); another budget, a killed run or no evaluation retrain."""
    from derd_scale.commands.quickstart import QUICKSTART_CONFIG, finished_with
    from derd_scale.config import load_config, save_config
    from derd_scale.run_dir import RunDir

    cfg = load_config(QUICKSTART_CONFIG, ["stage2.steps=60", "output.overwrite=true"])
    run = RunDir(tmp_path / "derd")
    run.path.mkdir()
    save_config(cfg, run.config_path)
    assert not finished_with(run, cfg)  # not finished
    run.mark_finished({"train_seconds": 1.0})
    assert not finished_with(run, cfg)  # finished, but its evaluation is missing
    (run.path / "eval").mkdir()
    (run.path / "eval" / "report.json").write_text("{}")
    assert finished_with(run, cfg)
    assert finished_with(run, load_config(QUICKSTART_CONFIG, ["stage2.steps=60", "logging.progress_bar=false"]))
    assert not finished_with(run, load_config(QUICKSTART_CONFIG, ["stage2.steps=61"]))
