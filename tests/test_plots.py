import json

from derd_scale.plots import plot_results_bars, plot_training_curves


def test_plots_write_pngs(tmp_path):
    rows = [{"stage": "stage1", "step": s, "l_g": 1.0 / s, "l_s": 0.5, "probe_clean": 0.1 * s} for s in (1, 2, 3)]
    rows += [
        {
            "stage": "stage2",
            "step": s,
            "l_1": 1.0,
            "l_2": 0.5,
            "cos_g1_g2": -0.5,
            "tau1": 1.5,
            "tau2": 2.0,
            "g1_norm": 3.0,
            "g2_norm": 1.0,
            "sga_norm": 0.01,
            "flip_rate": 0.4,
            "probe_pgd_s": 0.2,
        }
        for s in (1, 2)
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    a = plot_training_curves(path, tmp_path / "c.png")
    b = plot_results_bars(
        {"x": {"clean": 0.8, "pgd_s": 0.4}, "y": {"clean": 0.7, "pgd_s": 0.5, "aa": 0.3}}, tmp_path / "b.png", "t"
    )
    assert a.read_bytes()[:4] == b"\x89PNG" and b.stat().st_size > 5000


def test_stage1_comes_from_the_run_it_resumed(tmp_path):
    """A benchmark row resumed from a shared Stage I draws that Stage I (not an empty panel)."""
    stage1 = tmp_path / "stage1.jsonl"
    stage1.write_text(
        "\n".join(json.dumps({"stage": "stage1", "step": s, "l_g": 1.0 / s, "l_bn": 100.0 / s}) for s in (1, 2, 3))
    )
    row = tmp_path / "row.jsonl"
    row.write_text("\n".join(json.dumps({"stage": "stage2", "step": s, "l_1": 1.0, "l_2": 0.5}) for s in (1, 2)))
    alone = plot_training_curves(row, tmp_path / "alone.png").read_bytes()
    merged = plot_training_curves(row, tmp_path / "merged.png", stage1_metrics=stage1).read_bytes()
    same_input = plot_training_curves(row, tmp_path / "again.png").read_bytes()
    assert alone == same_input  # deterministic, so a difference below is the Stage-I panel
    assert merged != alone
