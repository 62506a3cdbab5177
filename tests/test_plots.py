import json
import warnings

from derd_scale.plots import label_offsets, pareto_front, plot_pareto, plot_results_bars, plot_training_curves


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


def test_pareto_front_by_hand():
    pts = {"a": (80.0, 30.0), "b": (70.0, 40.0), "c": (60.0, 35.0), "d": (80.0, 20.0), "e": (50.0, 40.0)}
    # c is beaten by b on both axes, d by a, e by b (same AA, less clean)
    assert pareto_front(pts) == ["b", "a"]
    assert pareto_front({"x": (1.0, 1.0), "y": (1.0, 1.0)}) == ["x", "y"]  # ties beat nobody


def test_pareto_plot_writes_a_png_with_error_bars_and_groups(tmp_path):
    results = {
        "derd_recommended": {"attacks": {"clean": 0.6, "aa": 0.45}, "std": {"clean": 0.05, "aa": 0.03}},
        "dfad_rslad": {"attacks": {"clean": 0.5, "aa": 0.3}, "std": {}},
        "rslad": {"attacks": {"clean": 0.78, "aa": 0.67}, "std": {"clean": 0.01, "aa": 0.01}},
        "sat": {"attacks": {"clean": 0.7}, "std": {}},  # AutoAttack not run yet: left out
    }
    groups = {"derd_recommended": "DERD rows", "dfad_rslad": "data-free baseline", "rslad": "data-driven bound"}
    out = plot_pareto(results, tmp_path / "p" / "pareto.png", "t", groups)
    assert out.read_bytes()[:4] == b"\x89PNG" and out.stat().st_size > 5000
    without_sat = plot_pareto({k: v for k, v in results.items() if k != "sat"}, tmp_path / "q.png", "t", groups)
    assert without_sat.read_bytes() == out.read_bytes()  # the row without AA draws nothing
    other = plot_pareto(results, tmp_path / "r.png", "t", {})  # no groups: one marker for all
    assert other.read_bytes() != out.read_bytes()
    empty = plot_pareto({"sat": results["sat"]}, tmp_path / "e.png")
    assert empty.read_bytes()[:4] == b"\x89PNG"


def test_label_offsets_stack_the_labels_of_coinciding_points():
    # spans: x 10 → 90 (80), y 0 → 24 (24); within 3 %: |dx| ≤ 2.4, |dy| ≤ 0.72
    pts = {
        "dfad_kd": (9.95, 10.30),
        "zskt_kd": (9.95, 10.30),
        "other": (11.0, 10.0),
        "far": (90.0, 0.0),
        "top": (50.0, 24.0),
    }
    off = label_offsets(pts)
    assert off["dfad_kd"] == (5, 4)
    assert off["zskt_kd"] == (5, 4 - 9)  # one earlier neighbour
    assert off["other"] == (5, 4 - 18)  # within 1.05 and 0.30 of both earlier points
    assert off["far"] == (5, 4) and off["top"] == (5, 4)
    assert label_offsets({}) == {}


def test_a_row_with_only_zero_flip_rates_plots_without_a_log_scale_warning(tmp_path):
    """RSLAD on G(z) (one teacher) logs flip_rate = 0 and no norms: the panel stays linear, no warning."""
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps({"stage": "stage2", "step": s, "l_2": 0.5, "flip_rate": 0.0}) for s in (1, 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = plot_training_curves(path, tmp_path / "c.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
