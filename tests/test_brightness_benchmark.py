"""benchmarks/brightness.py: estimators fitted on a run's training pairs, scored per held-out part."""

import json
import sys

import numpy as np
import torch
from conftest import load_script, make_run_folder

brightness = load_script("benchmarks/brightness.py")


def test_scores_are_the_log_error_and_the_rescaled_ground_truths_psnr():
    high = torch.full((1, 3, 8, 8), 0.5)
    high[..., :4] = 0.2  # mean 0.35
    items = [("a", None, high)]
    exact = brightness.scores(torch.tensor([0.35]), items)
    assert exact == {"log_error": 0.0, "psnr_bound": brightness.PSNR_CAP}  # capped, not inf
    double = brightness.scores(torch.tensor([0.7]), items)
    assert abs(double["log_error"] - float(np.log(2))) < 1e-3 and double["psnr_bound"] < 20


def test_the_benchmark_reports_the_prior_and_each_estimator_on_both_parts(tmp_path, monkeypatch, capsys):
    run = make_run_folder(tmp_path, [str(i) for i in range(1, 13)],
                          {"val": ["11", "12", "3", "7"], "singles": ["3", "7"]}, size=(32, 32), dim=10)
    monkeypatch.setattr(sys, "argv", ["brightness.py", str(run), "--grids", "none,2x2", "--jitter", "0.1",
                                      "--iterations", "3", "--width", "4", "--seeds", "2"])
    brightness.main()
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["estimator"].split()[0] for r in rows] == ["constant", "grid", "grid"]
    for row in rows:
        assert row["singles"]["log_error"] >= 0 and row["blocks"]["log_error"] >= 0
    assert "x2" in rows[1]["estimator"] and rows[1]["train"]["log_error"] >= 0


def test_maps_are_scored_alone_and_joined_to_each_grid_row(tmp_path, monkeypatch, capsys):
    run = make_run_folder(tmp_path, [str(i) for i in range(1, 9)],
                          {"val": ["7", "8", "3"], "singles": ["3"]}, size=(32, 32), dim=10)
    monkeypatch.setattr(sys, "argv", ["brightness.py", str(run), "--grids", "2x2", "--jitter", "0",
                                      "--iterations", "3", "--width", "4", "--maps", "2", "--map-iterations", "3"])
    brightness.main()
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["estimator"] for r in rows] == ["constant " + rows[0]["estimator"].split()[1], "maps x2",
                                              "grid (2, 2) jitter 0.0 x1", "grid (2, 2) jitter 0.0 x1 + maps x2"]
    for part in ("train", "singles", "blocks"):  # the joint estimate lies between its groups' (geometric mean)
        assert rows[3][part]["log_error"] <= max(rows[1][part]["log_error"], rows[2][part]["log_error"]) + 1e-4
