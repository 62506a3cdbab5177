"""bench/throughput.py's bookkeeping: the ratios issue 16 targets, computed from measured rows."""

import pytest
from conftest import load_bench


def _load():
    return load_bench("throughput")


def _row(
    stage: str, variant: str, seconds: float, threads: int = 1, precision: str = "fp32", gflop: float = 100.0
) -> dict:
    return dict(
        recipe="cifar10",
        stage=stage,
        variant=variant,
        threads=threads,
        precision=precision,
        seconds_per_step=seconds,
        gflop_per_step=gflop,
    )


def test_ratios_pair_each_variant_with_its_reference_step_of_the_same_threads_and_precision():
    throughput = _load()
    rows = [
        _row("stage2", "default", 4.4),
        _row("stage2", "ga", 4.0),
        _row("stage1", "default", 6.0, gflop=400.0),  # the recipe's Stage I: not the bare loop's reference
        _row("stage1", "plain", 1.5),
        _row("stage1", "bare", 1.2),
        _row("stage2", "ga", 2.0, threads=2),  # no default at 2 threads: no ratio
    ]
    got = {(r["name"], r["threads"]): r for r in throughput.ratios(rows)}
    assert set(got) == {("sga_over_ga", 1), ("prepared_over_bare_stage1", 1)}
    assert got["sga_over_ga", 1]["value"] == pytest.approx(1.1)
    assert got["sga_over_ga", 1]["target"] == "<= 1.10"
    assert got["prepared_over_bare_stage1", 1]["value"] == pytest.approx(1.25)
    assert got["prepared_over_bare_stage1", 1]["target"] == "<= 1.05"
    assert got["prepared_over_bare_stage1", 1]["flop_ratio"] == pytest.approx(1.0)


def test_the_bare_loop_is_compared_with_the_prepared_step_on_the_same_plain_stage1():
    throughput = _load()
    specs = [s for s in throughput.plan(["cifar10"], [1], ["fp32"], 3) if s["stage"] == "stage1"]
    by = {s.get("variant", "default"): s for s in specs}
    assert by["bare"]["bare"] and not by["plain"]["bare"]
    assert by["bare"]["variant_overrides"] == by["plain"]["variant_overrides"] == throughput.PLAIN_STAGE1


def test_compile_modes_add_one_variant_per_stage_paired_with_the_eager_step():
    throughput = _load()
    specs = throughput.plan(
        ["vit_real"], [16], ["bf16"], 5, True, ["default", "max-autotune-no-cudagraphs"], ("stage2",)
    )
    assert [(s["stage"], s.get("variant", "default")) for s in specs] == [
        ("stage2", "default"),
        ("stage2", "compile_default"),
        ("stage2", "compile_max-autotune-no-cudagraphs"),
    ]
    assert specs[2]["variant_overrides"] == ["distributed.compile=max-autotune-no-cudagraphs"]
    rows = [_row("stage2", "default", 1.0), _row("stage2", "compile_default", 0.5)]
    (ratio,) = throughput.ratios(rows)
    assert ratio["name"] == "compiled_speedup_default" and ratio["stage"] == "stage2"
    assert ratio["value"] == pytest.approx(2.0)


def test_a_named_variant_measures_the_plain_steps_under_its_overrides(tmp_path, monkeypatch):
    throughput = _load()
    seen = []

    def fake_worker(spec):
        seen.append(spec)
        row = _row(spec["stage"], spec["variant"], 2.0)
        return {**row, "batch": spec["batch"], "fraction_of_peak": 0.5, "peak_gflops": 100.0}

    monkeypatch.setattr(throughput, "run_worker", fake_worker)
    monkeypatch.setattr(throughput, "markdown", lambda result: "")
    sets = ["--set", "stage2.generator_batch_size=64", "--set", "stage2.sa.steps=1"]
    argv = ["--recipes", "cifar10", "--threads", "1", "--precisions", "bf16", "--stages", "stage1,stage2"]
    out = ["--out", str(tmp_path / "t.json"), "--batch", "256"]
    assert throughput.main(argv + out + sets + ["--variant", "g64"]) == 0
    # the plain stage steps only (no ga / bare / plain ratio variants), each under the variant's name
    assert [(s["stage"], s["variant"], s["batch"]) for s in seen] == [("stage1", "g64", 256), ("stage2", "g64", 256)]
    assert all(s["variant_overrides"] == ["stage2.generator_batch_size=64", "stage2.sa.steps=1"] for s in seen)
    assert throughput.main(argv + out + sets) == 2  # overrides without a name would pass as the default rows
