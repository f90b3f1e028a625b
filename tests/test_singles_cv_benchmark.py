"""benchmarks/singles_cv.py: folds of single held-out shots, an estimator fitted per fold."""

import json
import sys

import pytest
from conftest import load_script, make_run_folder

from lldiff_cli.checkpoints import save_checkpoint
from lldiff_cli.errors import LldiffError

singles_cv = load_script("benchmarks/singles_cv.py")


def test_folds_are_disjoint_spread_and_keep_blocks_and_the_benchmarks_scenes_out():
    names = [str(i) for i in range(2, 62) if i not in (22, 23, 55)]  # LOL's numbering lacks its test names
    blocks = {str(i) for i in range(40, 50)}
    folds = singles_cv.folds(names, blocks, 2, count=6)
    assert len(folds) == 2 and all(len(f) == 6 for f in folds)
    assert not set(folds[0]) & set(folds[1])
    taken = set(folds[0]) | set(folds[1])
    assert not taken & blocks and not taken & {"2", "21", "24", "54", "56"}
    assert max(int(n) for n in folds[0]) > 50 and min(int(n) for n in folds[0]) < 15  # spread over the numbering
    with pytest.raises(LldiffError, match="3 folds of 6 singles need 36 candidate pairs"):
        singles_cv.folds(names[:30], set(), 3, count=6)


def test_the_benchmark_scores_each_fold_and_pools_them(tmp_path, monkeypatch, capsys, exposure_aware_model):
    names = [str(i) for i in range(1, 15)]
    run = make_run_folder(tmp_path, names, {"val": ["13", "14"]}, size=(32, 32), dim=10)
    save_checkpoint(exposure_aware_model, run / "default.pt")
    monkeypatch.setattr(sys, "argv", ["singles_cv.py", str(run), "--folds", "2", "--count", "2", "--members", "2",
                                      "--shrink", "0.5", "--iterations", "2"])
    singles_cv.main()
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    per_fold = [r for r in rows if "fold" in r]
    assert [(r["fold"], r["setting"], r["n"]) for r in per_fold] == [
        (0, "constant", 2), (0, "members 2 shrink 0.5", 2), (1, "constant", 2), (1, "members 2 shrink 0.5", 2)]
    pooled = {r["setting"]: r for r in rows if "fold" not in r}
    assert pooled["constant"]["images"] == 4
    mean = (per_fold[0]["psnr"] + per_fold[2]["psnr"]) / 2
    assert abs(pooled["constant"]["psnr"] - mean) < 1e-3


def test_several_spreads_are_scored_on_one_fit(tmp_path, monkeypatch, capsys, exposure_aware_model):
    run = make_run_folder(tmp_path, [str(i) for i in range(1, 9)], {"val": []}, size=(32, 32), dim=10)
    save_checkpoint(exposure_aware_model, run / "default.pt")
    monkeypatch.setattr(sys, "argv", ["singles_cv.py", str(run), "--folds", "1", "--count", "2", "--members", "1",
                                      "--shrink", "1", "--spread", "0,0.5", "--iterations", "2"])
    singles_cv.main()
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"fold"' in line]
    assert [r["setting"] for r in rows] == ["constant", "members 1 shrink 1.0 spread 0.0",
                                            "members 1 shrink 1.0 spread 0.5"]
    assert rows[1]["fit_s"] == rows[2]["fit_s"] and rows[1]["psnr"] != rows[2]["psnr"]


def test_maps_join_the_estimator_and_only_the_chosen_folds_are_scored(tmp_path, monkeypatch, capsys,
                                                                      exposure_aware_model):
    names = [str(i) for i in range(1, 15)]
    run = make_run_folder(tmp_path, names, {"val": ["13", "14"]}, size=(32, 32), dim=10)
    save_checkpoint(exposure_aware_model, run / "default.pt")
    monkeypatch.setattr(sys, "argv", ["singles_cv.py", str(run), "--folds", "2", "--count", "2", "--members", "1",
                                      "--maps", "0,1", "--shrink", "1", "--iterations", "2", "--map-iterations", "2",
                                      "--only", "1"])
    singles_cv.main()
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"fold"' in line]
    assert [(r["fold"], r["setting"]) for r in rows] == [(1, "constant"), (1, "members 1 shrink 1.0"),
                                                          (1, "members 1 maps 1 shrink 1.0")]
    assert rows[1]["psnr"] != rows[2]["psnr"]
    monkeypatch.setattr(sys, "argv", ["singles_cv.py", str(run), "--folds", "2", "--only", "2"])
    with pytest.raises(LldiffError, match="--only names folds outside 0..1: 2"):
        singles_cv.main()
    monkeypatch.setattr(sys, "argv", ["singles_cv.py", str(run), "--maps", "0,x"])
    with pytest.raises(LldiffError, match="--maps takes comma-separated whole numbers, got '0,x'"):
        singles_cv.main()
