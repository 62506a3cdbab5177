"""Plots (PNG, matplotlib, no display needed): training curves, results bars and the clean-vs-robust
Pareto plot of a table.

plot_training_curves("runs/x/metrics.jsonl", "runs/x/curves.png")
plot_results_bars({"full DERD": {"clean": .8, "pgd_s": .5}, ...}, "bench/out/x/results.png")
plot_pareto({"rslad": {"attacks": {"clean": .8, "aa": .4}, "std": {"clean": .01, "aa": .02}}, ...},
            "bench/out/x/pareto.png", groups={"rslad": "data-driven bound"})
"""

from __future__ import annotations

from pathlib import Path

from derd_scale.run_dir import read_jsonl

ATTACK_LABELS = {"clean": "Clean", "fgsm": "FGSM", "pgd_s": "PGD_S", "pgd_t": "PGD_T", "cw": "CW", "aa": "AA"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(
    metrics_path: str | Path, out_png: str | Path, stage1_metrics: str | Path | None = None
) -> Path:
    """Per stage: losses; Stage II also τ1/τ2, cos(g1, g2) (the paper's Fig. 5), ‖g1‖/‖g2‖;
    and the robust-accuracy probe on real test images over steps.

    ``stage1_metrics``: the metrics of the run this one resumed its Stage I from (the
    benchmark rows share one Stage I); its Stage-I records are drawn when this run has none.
    """
    plt = _plt()
    records = read_jsonl(metrics_path)
    s1 = [r for r in records if r["stage"] == "stage1"]
    if not s1 and stage1_metrics is not None:
        s1 = [r for r in read_jsonl(stage1_metrics) if r["stage"] == "stage1"]
    s2 = [r for r in records if r["stage"] == "stage2"]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))

    def series(rows, key):
        pts = [(r["step"], r[key]) for r in rows if key in r and isinstance(r[key], (int, float))]
        return [p[0] for p in pts], [p[1] for p in pts]

    ax = axes[0, 0]
    for key in ("l_g", "l_oh", "l_a", "l_bn", "l_ie", "l_s"):
        ax.plot(*series(s1, key), label=key)
    # symlog: L_BN starts in the hundreds for deep CNN teachers, the others are O(1) and L_a, L_ie < 0
    (
        ax.set_yscale("symlog", linthresh=1e-1),
        ax.set_title("Stage I losses"),
        ax.set_xlabel("step"),
        ax.legend(fontsize=8),
    )
    ax = axes[0, 1]
    for key in ("l_1", "l_2", "l_dis", "l_g"):
        ax.plot(*series(s2, key), label=key)
    # symlog: the generator's L_G (≈ L_BN, tens on CIFAR teachers) would flatten the O(1) KD terms
    (
        ax.set_yscale("symlog", linthresh=1e-1),
        ax.set_title("Stage II losses"),
        ax.set_xlabel("step"),
        ax.legend(fontsize=8),
    )
    ax = axes[0, 2]
    ax.plot(*series(s2, "cos_g1_g2"), label="cos(g1, g2)")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_title("Gradient conflict (paper Fig. 5)"), ax.set_xlabel("step"), ax.legend(fontsize=8)
    ax = axes[1, 0]
    ax.plot(*series(s2, "tau1"), label="τ1")
    ax.plot(*series(s2, "tau2"), label="τ2")
    ax.set_title("GA weights"), ax.set_xlabel("step"), ax.legend(fontsize=8)
    ax = axes[1, 1]
    ax.plot(*series(s2, "g1_norm"), label="‖g1‖ (natural)")
    ax.plot(*series(s2, "g2_norm"), label="‖g2‖ (robust)")
    ax.plot(*series(s2, "sga_norm"), label="‖SGA term‖")
    ax.plot(*series(s2, "flip_rate"), label="T_nat flip rate")
    # log (zeros masked: GA without SGA logs ‖SGA‖ = 0); norms span ~1e-2…1e1. Linear when nothing is
    # positive: a single-teacher row (rslad_gz) logs only flip_rate = 0, and a log axis of it warns.
    positive = any(y > 0 for line in ax.get_lines() for y in line.get_ydata())
    (
        ax.set_yscale("log", nonpositive="mask") if positive else None,
        ax.set_title("Which teacher dominates"),
        ax.set_xlabel("step"),
        ax.legend(fontsize=8),
    )
    ax = axes[1, 2]
    offset = max([r["step"] for r in s1], default=0)
    for key in ("probe_clean", "probe_pgd_s"):
        x1, y1 = series(s1, key)
        x2, y2 = series(s2, key)
        ax.plot(x1 + [offset + x for x in x2], y1 + y2, marker="o", label=key)
    if offset:
        ax.axvline(offset, color="grey", ls="--", lw=0.8)
    (
        ax.set_title("Probe accuracy on real test images"),
        ax.set_xlabel("student step (Stage I | Stage II)"),
        ax.legend(fontsize=8),
    )
    empty = {(0, 0): "no Stage I in this run", (1, 2): "no probe (eval.every_steps = 0)"}
    empty.update({pos: "no Stage II in this run" for pos in ((0, 1), (0, 2), (1, 0), (1, 1))} if not s2 else {})
    empty.update(
        {pos: "no aggregation (SA only)" for pos in ((0, 2), (1, 0))} if s2 and not series(s2, "cos_g1_g2")[0] else {}
    )
    for (i, j), note in empty.items():
        if not any(
            len(line.get_xdata()) for line in axes[i, j].get_lines() if not line.get_label().startswith("_")
        ):  # "_…": axhline/axvline
            ax = axes[i, j]
            if ax.get_legend() is not None:
                ax.get_legend().remove()
            ax.set_yscale("linear"), ax.set_xticks([]), ax.set_yticks([])
            ax.text(0.5, 0.5, note, transform=ax.transAxes, ha="center", va="center", color="grey")
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_results_bars(rows: dict[str, dict[str, float]], out_png: str | Path, title: str = "") -> Path:
    """Grouped bars: one group per attack column, one bar per method row (accuracy %)."""
    plt = _plt()
    attacks = [a for a in ATTACK_LABELS if any(a in r for r in rows.values())]
    n = len(rows)
    width = 0.8 / max(n, 1)
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(attacks) + 2), 4.5))
    for i, (name, accs) in enumerate(rows.items()):
        xs = [j + (i - (n - 1) / 2) * width for j in range(len(attacks))]
        ax.bar(xs, [100 * accs.get(a, float("nan")) for a in attacks], width, label=name)
    ax.set_xticks(range(len(attacks)), [ATTACK_LABELS[a] for a in attacks])
    ax.set_ylabel("accuracy (%)"), ax.set_ylim(0, 100), ax.set_title(title)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


PARETO_STYLES = {  # group → (marker, colour); groups not listed get a marker of their own
    "DERD rows": ("*", "tab:red"),
    "data-free baseline": ("o", "tab:blue"),
    "data-driven bound": ("s", "tab:grey"),
}


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """The names of the points no other point beats on both axes (≥ on both, > on one), by x."""
    front = [
        name
        for name, (x, y) in points.items()
        if not any((ox >= x and oy >= y) and (ox > x or oy > y) for ox, oy in points.values())
    ]
    return sorted(front, key=lambda n: points[n][0])


LABEL_LINE = 9
"""Points of font-size-7 text per label line on the Pareto plot."""


def label_offsets(pts: dict[str, tuple[float, float]], near: float = 0.03) -> dict[str, tuple[int, int]]:
    """Text offsets (points) for each point's label so that labels of points that (nearly) coincide
    stack downwards instead of printing over each other: a point whose x and y both lie within
    ``near`` of the axis spans of an earlier point (in ``pts`` order) drops its label one more line
    per such neighbour. E.g. two collapsed students both at (9.95, 10.30) get (5, 4) and (5, −5)."""
    if not pts:
        return {}
    xs, ys = [p[0] for p in pts.values()], [p[1] for p in pts.values()]
    span_x, span_y = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    offsets, seen = {}, []
    for row, (px, py) in pts.items():
        below = sum(abs(px - qx) <= near * span_x and abs(py - qy) <= near * span_y for qx, qy in seen)
        offsets[row] = (5, 4 - LABEL_LINE * below)
        seen.append((px, py))
    return offsets


def plot_pareto(
    results: dict[str, dict],
    out_png: str | Path,
    title: str = "",
    groups: dict[str, str] | None = None,
    x: str = "clean",
    y: str = "aa",
) -> Path:
    """Clean (``x``) against robust (``y``, AA by default) accuracy, one point per row with the seed
    standard deviations as error bars, marker and colour by group (DERD, data-free baseline,
    data-driven bound, …), the rows' Pareto front as a dashed line. ``results``: the tables' rows
    (``{"attacks": {k: mean}, "std": {k: std}}``); rows without both columns are left out."""
    plt = _plt()
    groups = groups or {}
    pts = {
        row: (100 * r["attacks"][x], 100 * r["attacks"][y])
        for row, r in results.items()
        if r.get("attacks", {}).get(x) is not None and r["attacks"].get(y) is not None
    }
    fig, ax = plt.subplots(figsize=(8, 6))
    extra = iter(("^", "D", "v", "P", "X"))
    styles = dict(PARETO_STYLES)
    labelled = set()
    offsets = label_offsets(pts)
    for row, (px, py) in pts.items():
        group = groups.get(row, "other")
        if group not in styles:
            styles[group] = (next(extra, "o"), None)
        marker, colour = styles[group]
        std = results[row].get("std", {})
        ax.errorbar(
            px,
            py,
            xerr=100 * std.get(x, 0.0),
            yerr=100 * std.get(y, 0.0),
            fmt=marker,
            color=colour,
            markersize=10 if marker == "*" else 7,
            capsize=3,
            label=group if group not in labelled else None,
        )
        labelled.add(group)
        ax.annotate(row, (px, py), textcoords="offset points", xytext=offsets[row], fontsize=7)
    front = pareto_front(pts)
    if len(front) > 1:
        ax.plot([pts[n][0] for n in front], [pts[n][1] for n in front], ls="--", color="black", lw=0.8, zorder=0)
    if not pts:
        ax.text(0.5, 0.5, f"no row has both {x} and {y} yet", transform=ax.transAxes, ha="center", color="grey")
    ax.set_xlabel(f"{ATTACK_LABELS.get(x, x)} accuracy (%)")
    ax.set_ylabel(f"{ATTACK_LABELS.get(y, y)} accuracy (%)")
    ax.set_title(title or f"{ATTACK_LABELS.get(x, x)} vs {ATTACK_LABELS.get(y, y)}: mean ± std over seeds")
    ax.grid(alpha=0.3)
    if labelled:
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
