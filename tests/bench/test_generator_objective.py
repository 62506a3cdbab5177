"""bench/generator_objective.py: what G reaches on its own Stage-I terms, without the student."""

import json

import pytest
import torch
from conftest import load_bench


def test_follow_shares_against_hand_values():
    go = load_bench("generator_objective")
    labels = torch.tensor([0, 0, 1, 2])
    natural = torch.eye(3)[[0, 1, 1, 2]] * 5  # T_nat: 0 1 1 2 → follows y on 3 of 4
    robust = torch.eye(3)[[0, 0, 2, 2]] * 5  # T_rob: 0 0 2 2 → follows y on 3 of 4 (not the same ones)
    s = go.follow_shares(labels, natural, robust, 3)
    assert s["natural_follows_y"] == 0.75 and s["robust_follows_y"] == 0.75
    assert s["both_follow_y"] == 0.5  # samples 0 and 3
    assert s["teacher_agreement"] == 0.5  # samples 0 and 3 again
    assert s["robust_max_prob"] == pytest.approx(torch.softmax(torch.tensor([5.0, 0, 0]), 0)[0].item())
    assert s["by_label"]["natural_follows_y"] == [0.5, 1.0, 1.0]
    assert s["by_label"]["both_follow_y"] == [0.5, 0.0, 1.0]


def test_a_few_steps_on_the_fmnist_recipe(tmp_path, shared_data):
    go = load_bench("generator_objective")
    out = tmp_path / "g.json"
    base = ["--recipe", "fmnist", "--data-path", str(shared_data), "--out", str(out)]
    base += ["--set", "generator.pseudo_labels=sampled", "--set", "stage1.batch_size=16"]
    assert go.main([*base, "--steps", "4", "--samples", "20", "--log-every", "2", "--real", "30"]) == 0
    result = json.loads(out.read_text())
    assert [row["step"] for row in result["history"]] == [2, 4]
    assert result["samples"] == 20 and result["set"][0] == "generator.pseudo_labels=sampled"
    final = result["final"]
    assert final["both_follow_y"] <= min(final["natural_follows_y"], final["robust_follows_y"])
    assert 0.1 <= final["robust_max_prob"] <= 1.0 and len(final["by_label"]["robust_follows_y"]) == 10
    assert all(row["l_oh"] > 0 and row["l_bn"] >= 0 for row in result["history"])
    real = result["real_test_images"]  # the committed teachers on real images: far above chance
    assert real["images"] == 30 and real["natural_accuracy"] > 0.6 and real["teacher_agreement"] > 0.5
    # --steps 0: the untrained G (and the yardstick when asked) only
    assert go.main([*base, "--steps", "0", "--samples", "8", "--real", "0"]) == 0
    result = json.loads(out.read_text())
    assert result["history"] == [] and result["real_test_images"] is None and result["samples"] == 8


def test_bad_inputs_are_refused_in_one_line(shared_data, capsys):
    go = load_bench("generator_objective")
    base = ["--recipe", "fmnist", "--data-path", str(shared_data)]
    assert go.main([*base, "--steps", "-1"]) == 2 and "--steps must be ≥ 0" in capsys.readouterr().err
    assert go.main([*base, "--set", "stage1.lambda_bm=0.1"]) == 2 and "lambda_bm" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="pseudo_labels must be sampled"):
        go.main([*base, "--steps", "1"])  # the fmnist recipe's G takes T_nat's argmax: no labels to follow
