"""bench/throughput.py's bookkeeping: the ratios issue 16 targets, computed from measured rows."""

import pytest
from conftest import load_bench


def _load():
    return load_bench("throughput")


def _row(stage: str, variant: str, seconds: float, threads: int = 1, precision: str = "fp32") -> dict:
    return dict(
        recipe="cifar10", stage=stage, variant=variant, threads=threads, precision=precision, seconds_per_step=seconds
    )


def test_ratios_pair_each_variant_with_the_default_step_of_the_same_threads_and_precision():
    throughput = _load()
    rows = [
        _row("stage2", "default", 4.4),
        _row("stage2", "ga", 4.0),
        _row("stage1", "default", 1.5),
        _row("stage1", "bare", 1.2),
        _row("stage2", "ga", 2.0, threads=2),  # no default at 2 threads: no ratio
    ]
    got = {(r["name"], r["threads"]): r for r in throughput.ratios(rows)}
    assert set(got) == {("sga_over_ga", 1), ("prepared_over_bare_stage1", 1)}
    assert got["sga_over_ga", 1]["value"] == pytest.approx(1.1)
    assert got["sga_over_ga", 1]["target"] == "<= 1.10"
    assert got["prepared_over_bare_stage1", 1]["value"] == pytest.approx(1.25)
    assert got["prepared_over_bare_stage1", 1]["target"] == "<= 1.05"
