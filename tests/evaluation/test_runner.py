"""Evaluation runs, reports and the 1-vs-2-process equivalence."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import free_port, launch_failure, two_cpu_processes

from derd_scale.config import EvalConfig
from derd_scale.evaluation import PRESETS, Protocol, evaluate, protocol_from_config
from derd_scale.models import create_model

REPO = Path(__file__).resolve().parents[2]


def test_protocol_presets_and_overrides():
    assert PRESETS["cifar"].eps == pytest.approx(8 / 255) and PRESETS["cifar"].batch_size == 512
    assert PRESETS["imagenet100"].eps == 0.03 and PRESETS["imagenet100"].alpha == pytest.approx(2 / 255)
    with pytest.warns(UserWarning, match="differs from preset 'cifar'"):
        p = protocol_from_config(EvalConfig(protocol="cifar", eps=2 / 255, steps=20))
    assert p.eps == pytest.approx(2 / 255) and p.steps == 20 and p.alpha == pytest.approx(2 / 255)
    with pytest.raises(ValueError, match="eval.protocol: unknown"):
        protocol_from_config(EvalConfig(protocol="mnist_big"))


@pytest.fixture(scope="module")
def resnet20(weights_dir):
    return create_model(
        "resnet20", 10, checkpoint=weights_dir / "akamaster_resnet_cifar10" / "resnet20-12fca82f.th"
    ).eval()


@pytest.fixture(scope="module")
def resnet4b(weights_dir):
    return create_model("resnet4b", 10, checkpoint=weights_dir / "abcrown_robust_cifar10" / "resnet4b.pth").eval()


def test_clean_accuracy_equals_a_plain_loop(cifar10_test, resnet20):
    ds, _ = cifar10_test
    report = evaluate(resnet20, ds, ["clean"], Protocol("t", 0.0, 0.0, 1, 64), n_examples=150, progress=False)
    x, y = ds.tensors()
    with torch.no_grad():
        plain = (resnet20(x[:150].float() / 255).argmax(1) == y[:150]).sum().item()
    assert report.results["clean"]["correct"] == plain and report.n == 150


def test_non_robust_net_collapses_and_robust_net_holds(cifar10_test, resnet20, resnet4b):
    ds, _ = cifar10_test
    weak = evaluate(resnet20, ds, ["pgd_s"], PRESETS["cifar"], n_examples=100, progress=False)
    assert weak.accuracy("pgd_s") <= 0.02
    strong = evaluate(
        resnet4b, ds, ["pgd_s"], Protocol("eps2", 2 / 255, 0.5 / 255, 10, 100), n_examples=100, progress=False
    )
    assert strong.accuracy("pgd_s") > 0.4


def test_monotone_per_example_and_report_files(tmp_path, cifar10_test, resnet4b):
    # aa_fast (torchattacks' 10-iteration AutoAttack): the standard AA costs ~10× more on a
    # ResNet; its per-example dominance is tested on a tiny model (test_autoattack.py).
    ds, _ = cifar10_test
    p = Protocol("eps2", 2 / 255, 0.5 / 255, 5, 40)
    report = evaluate(resnet4b, ds, ["fgsm", "pgd_s", "aa_fast"], p, n_examples=40, progress=False, masking_check=True)
    c = {a: report.correct[:, report.attacks.index(a)] for a in report.attacks}
    assert bool((c["aa_fast"] <= c["pgd_s"]).all()) and bool((c["pgd_s"] <= c["clean"]).all())
    assert report.monotonicity_violations()["aa_fast>pgd_s"] == 0
    report.save(tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    assert set(data["attacks"]) >= {"clean", "fgsm", "pgd_s", "aa_fast", "pgd_s_2x"} and "aa" not in data["attacks"]
    assert data["attacks"]["pgd_s"]["eps"] == pytest.approx(2 / 255) and data["attacks"]["pgd_s"]["n"] == 40
    assert data["attacks"]["aa_fast"]["autoattack"]["apgd_steps"] == 10
    md = (tmp_path / "report.md").read_text()
    assert md.index("Clean") < md.index("FGSM") < md.index("PGD_S") < md.index("| aa_fast")
    rows = [json.loads(line) for line in (tmp_path / "per_example.jsonl").read_text().splitlines()]
    assert len(rows) == 40
    for row in rows:
        if not row["correct"]["clean"]:
            assert row["first_fooled_by"] == "clean"
        elif row["correct"]["aa_fast"] and row["correct"]["pgd_s"] and row["correct"]["fgsm"]:
            assert row["first_fooled_by"] in (None, "pgd_s_2x")


def test_masking_warnings_fire_on_suspicious_numbers():
    from derd_scale.evaluation.report import EvalReport, masking_warnings

    def rep(acc):
        attacks = list(acc)
        return EvalReport(
            {a: {"accuracy": v, "seconds": 0.0} for a, v in acc.items()},
            {"eps": 0.03, "alpha": 0.01, "steps": 10},
            0,
            [],
            torch.zeros(0, len(attacks), dtype=torch.bool),
            attacks,
        )

    ok = masking_warnings(rep({"clean": 0.8, "fgsm": 0.5, "pgd_s": 0.45, "aa": 0.42, "pgd_s_2x": 0.44}))
    assert ok == []
    bad = masking_warnings(rep({"clean": 0.8, "fgsm": 0.62, "pgd_s": 0.54, "aa": 0.36, "pgd_s_2x": 0.58}))
    assert any("AutoAttack" in w for w in bad) and any("more PGD steps" in w for w in bad)
    fast = masking_warnings(rep({"clean": 0.8, "fgsm": 0.62, "pgd_s": 0.54, "aa_fast": 0.36}))
    assert any("aa_fast" in w and "not the standard AutoAttack" in w for w in fast)
    assert any("weaker than single-step" in w for w in masking_warnings(rep({"fgsm": 0.3, "pgd_s": 0.5})))


@pytest.mark.slow
def test_two_processes_give_exactly_the_one_process_numbers(tmp_path, shared_data, weights_dir):
    common = [
        "--model",
        str(weights_dir / "abcrown_robust_cifar10" / "resnet4b.pth"),
        *("--set", "arch=resnet4b", "--set", "data.name=cifar10", "--set", "data.source=parquet"),
        *("--set", f"data.path={shared_data}", "--set", "eval.protocol=cifar", "--set", f"eval.eps={2 / 255}"),
        *("--set", "eval.attacks=[clean,fgsm,pgd_s,pgd_t,cw]", "--set", "eval.n_examples=37"),
        *("--set", "eval.batch_size=8", "--set", "eval.steps=3", "--set", "eval.masking_check=false"),
    ]
    script = REPO / "launch" / "evaluate.py"
    two_cmd, env = two_cpu_processes(script, *common, "--out", str(tmp_path / "two"))
    one = subprocess.run(
        [sys.executable, str(script), *common, "--out", str(tmp_path / "one")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(two_cmd, capture_output=True, text=True, timeout=600, env=env)
    assert two.returncode == 0, launch_failure(two)
    a = json.loads((tmp_path / "one" / "report.json").read_text())
    b = json.loads((tmp_path / "two" / "report.json").read_text())
    assert b["world_size"] == 2 and a["world_size"] == 1, "the launch did not start two synchronised processes"
    for name in a["attacks"]:
        assert a["attacks"][name]["correct"] == b["attacks"][name]["correct"] and b["attacks"][name]["n"] == 37
    pa = (tmp_path / "one" / "per_example.jsonl").read_text()
    pb = (tmp_path / "two" / "per_example.jsonl").read_text()
    assert pa == pb


def test_a_killed_evaluation_resumes_at_its_next_batch_with_the_same_numbers(tmp_path, cifar10_test, resnet4b):
    """evaluate(resume_dir=): each finished batch is kept; a rerun attacks only the batches that
    are missing, and its report equals an uninterrupted one (a batch's starts depend on its index)."""
    import derd_scale.evaluation.runner as runner

    ds, _ = cifar10_test
    p = Protocol("eps2", 2 / 255, 0.5 / 255, 3, 10)
    whole = evaluate(resnet4b, ds, ["pgd_s"], p, n_examples=30, seed=4, progress=False)

    real, calls = runner._attack_batch, []

    def dies_on_the_third_batch(name, model, x, y, *rest):
        calls.append(len(calls))
        if len(calls) > 4:  # clean + pgd_s of batches 0 and 1 went through
            raise KeyboardInterrupt
        return real(name, model, x, y, *rest)

    runner._attack_batch = dies_on_the_third_batch
    try:
        with pytest.raises(KeyboardInterrupt):
            evaluate(resnet4b, ds, ["pgd_s"], p, n_examples=30, seed=4, progress=False, resume_dir=tmp_path)
        calls.clear()
        runner._attack_batch = lambda *a: calls.append(a[0]) or real(*a)
        resumed = evaluate(resnet4b, ds, ["pgd_s"], p, n_examples=30, seed=4, progress=False, resume_dir=tmp_path)
    finally:
        runner._attack_batch = real
    assert calls == ["clean", "pgd_s"]  # only the third batch ran again
    assert torch.equal(resumed.correct, whole.correct) and resumed.labels == whole.labels
    assert resumed.accuracy("pgd_s") == whole.accuracy("pgd_s")
    # another seed is another evaluation: the cached batches are not reused
    with pytest.warns(UserWarning, match="ignored 3 cached batches of another evaluation"):
        evaluate(resnet4b, ds, ["clean"], p, n_examples=30, seed=5, progress=False, resume_dir=tmp_path)


def test_a_resumed_evaluation_never_reuses_another_models_or_splits_batches(tmp_path, cifar10_test, resnet4b):
    """The cache key carries the weights' and the data's fingerprints: one changed weight, or other
    images, and every cached batch is ignored (with a warning) and attacked again."""
    import copy

    from derd_scale.evaluation.runner import data_fingerprint, model_fingerprint

    ds, _ = cifar10_test
    p = Protocol("eps2", 2 / 255, 0.5 / 255, 1, 10)
    first = evaluate(resnet4b, ds, ["clean"], p, n_examples=20, seed=0, progress=False, resume_dir=tmp_path)
    other = copy.deepcopy(resnet4b)
    assert model_fingerprint(other) == model_fingerprint(resnet4b)
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 1.0
    assert model_fingerprint(other) != model_fingerprint(resnet4b)
    with pytest.warns(UserWarning, match="ignored 2 cached batches"):
        evaluate(other, ds, ["clean"], p, n_examples=20, seed=0, progress=False, resume_dir=tmp_path)
    shifted = [ds[i + 1] for i in range(20)]
    assert data_fingerprint(shifted, 20) != data_fingerprint(ds, 20)
    with pytest.warns(UserWarning, match="ignored 4 cached batches"):
        again = evaluate(resnet4b, shifted, ["clean"], p, n_examples=20, seed=0, progress=False, resume_dir=tmp_path)
    assert again.labels == [int(ds[i + 1][1]) for i in range(20)] and first.labels != again.labels


def test_a_late_rank_never_counts_another_ranks_fresh_batches_as_cached(tmp_path):
    """Every rank must agree on the cached batches before any rank writes one: rank 0 read the
    cache after rank 1 had appended its first batches and counted them twice (CI, 2026-12-03)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port()]
    cmd += [str(Path(__file__).parent / "resume_two_ranks.py"), str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, launch_failure(out)
    assert json.loads((tmp_path / "report.json").read_text())["n"] == 40
