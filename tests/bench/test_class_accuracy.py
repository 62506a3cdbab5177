"""bench/class_accuracy.py: per-class accuracy and prediction counts (the sink-class table)."""

import json

import pytest
import torch
import torch.nn as nn
from conftest import load_bench


class _Fixed(nn.Module):
    """Answers a fixed class per input, read from the input's first pixel."""

    def forward(self, x):
        return nn.functional.one_hot(x[:, 0].long(), 3).float()


def test_hand_values_and_the_sink_column():
    ca = load_bench("class_accuracy")
    # labels 0 0 1 1 2; predictions 0 1 1 1 1: class 1 is a sink (4 of 5 filed there)
    x = torch.tensor([[0.0], [1.0], [1.0], [1.0], [1.0]])
    y = torch.tensor([0, 0, 1, 1, 2])
    r = ca.class_accuracy(_Fixed(), x, y, 3, batch_size=2)
    assert r["clean"] == pytest.approx(3 / 5)
    assert r["per_class"] == [0.5, 1.0, 0.0] and r["n"] == [2, 2, 1] and r["predicted"] == [1, 4, 0]
    r0 = ca.class_accuracy(_Fixed(), x[:2], y[:2], 3)
    assert r0["per_class"][1:] == [None, None]  # no example of classes 1 and 2
    md = ca.markdown({"m": r}, ["a", "b", "c"])
    assert "| m | 60.0 | 50 | 100 | 0 | 1 / 4 / 0 |" in md


def test_cli_on_an_archived_cifar10_student(tmp_path, shared_data, capsys):
    ca = load_bench("class_accuracy")
    student = ca.REPO / "docs" / "results" / "cifar10" / "runs" / "derd_recommended" / "student"
    out = tmp_path / "r.json"
    assert ca.main([str(student), "--data-path", str(shared_data), "--n", "40", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    r = data["models"]["derd_recommended"]
    assert data["n"] == 40 and sum(r["n"]) == 40 and sum(r["predicted"]) == 40
    assert data["classes"][3] == "cat" and "| derd_recommended |" in capsys.readouterr().out


def test_nothing_to_evaluate_is_refused(capsys):
    ca = load_bench("class_accuracy")
    assert ca.main(["--data-path", "x"]) == 2 and "nothing to evaluate" in capsys.readouterr().err
    assert ca.main(["--data-path", "x", "--n", "0", "s"]) == 2 and "--n must be" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="NAME=ARCH"):
        ca._parse_model("resnet4b")
    name, mc = ca._parse_model("T_rob=resnet4b:/w/resnet4b.pth")
    assert (name, mc.arch, mc.checkpoint) == ("T_rob", "resnet4b", "/w/resnet4b.pth")
    assert ca._parse_model("S=local-dir:/runs/x/student")[1].arch == "local-dir:/runs/x/student"


def test_students_of_two_runs_with_one_row_name_keep_both_labels(tmp_path, capsys):
    ca = load_bench("class_accuracy")
    a, b, c = (
        tmp_path / "c10_p_a" / "derd_recommended" / "student",
        tmp_path / "c10_p_b" / "derd_recommended" / "student",
        tmp_path / "c10_p_b" / "rslad" / "student",
    )
    assert ca.student_labels([a, c]) == ["derd_recommended", "rslad"]
    assert ca.student_labels([a, b, c]) == ["c10_p_a/derd_recommended", "c10_p_b/derd_recommended", "rslad"]
    # the same folder twice cannot be told apart: refused with one line, before any model loads
    assert ca.main([str(a), str(a), "--data-path", "x"]) == 2
    assert "two models named" in capsys.readouterr().err
    assert ca.main([str(c), "--model", "rslad=resnet20", "--data-path", "x"]) == 2
