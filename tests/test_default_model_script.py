"""scripts/default_model.py sweep: which pairs it scores and the exposure prior it sweeps."""

import json
import sys

import pytest
import torch
import yaml
from conftest import load_script, make_run_folder

from lldiff_cli.checkpoints import save_checkpoint

default_model = load_script("scripts/default_model.py")
NAMES = ["1", "2", "3", "4", "5"]


@pytest.fixture
def run(tmp_path, exposure_aware_model):
    """A run folder over 5 generated pairs: config.yaml, split.json holding out pair 3, best.pt."""
    run = make_run_folder(tmp_path, NAMES, {"val": ["3"]})
    save_checkpoint(exposure_aware_model, run / "best.pt")
    return run


def sweep(monkeypatch, capsys, run, *options):
    monkeypatch.setattr(sys, "argv", ["default_model.py", "sweep", str(run), "--steps", "1", "--ensemble", "1",
                                      *options])
    default_model.main()
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_sweep_scores_held_out_or_training_pairs_at_each_prior(monkeypatch, capsys, run):
    held_out = sweep(monkeypatch, capsys, run)
    assert [r["n"] for r in held_out] == [1]
    rows = sweep(monkeypatch, capsys, run, "--on", "training", "--exposure-prior", "0.2,0.6", "--exposure-shrink", "0")
    assert [(r["n"], r["exposure_prior"]) for r in rows] == [(4, 0.2), (4, 0.6)]
    assert rows[0]["psnr"] != rows[1]["psnr"]  # at shrink 0, auto exposure aims at the prior
    every = sweep(monkeypatch, capsys, run, "--on", "training", "--every", "2", "--exposure-prior", "0.2")
    assert every[0]["n"] == 2
    spread = sweep(monkeypatch, capsys, run, "--ensemble", "2", "--exposure-spread", "0,0.3")
    assert [r["exposure_spread"] for r in spread] == [0.0, 0.3] and spread[0]["psnr"] != spread[1]["psnr"]


def test_ship_refuses_training_pairs_and_bad_values_are_one_line(monkeypatch, capsys, run):
    monkeypatch.setattr(sys, "argv", ["default_model.py", "ship", str(run), "--on", "training"])
    with pytest.raises(SystemExit, match="ship scores the held-out pairs"):
        default_model.main()
    monkeypatch.setattr(sys, "argv", ["default_model.py", "sweep", str(run), "--every", "0"])
    with pytest.raises(SystemExit, match="--every must be at least 1"):
        default_model.main()
    monkeypatch.setattr(sys, "argv", ["default_model.py", "sweep", str(run), "--exposure-spread", "0,abc"])
    with pytest.raises(SystemExit, match="not a comma-separated list of float values: '0,abc'"):
        default_model.main()


def test_ship_writes_the_weights_and_a_card_that_describes_them(tmp_path, capsys, run):
    from lldiff_cli.checkpoints import load_model, sha256_of

    models = tmp_path / "models"
    argv = ["ship", str(run), "--steps", "1", "--ensemble", "1", "--exposure-prior", "0.4", "--wall-hours", "0.1",
            "--notes", "a test"]
    default_model.main(argv, models=models)
    card = yaml.safe_load((models / "lldiff-default.yaml").read_text())
    weights = models / "lldiff-default.pt"
    assert card["sha256"] == sha256_of(weights) and card["weights"] == "lldiff-default.pt"
    assert card["sampler"]["steps"] == 1 and card["auto_exposure"]["prior"] == 0.4
    assert card["validation"]["n"] == 1 and card["validation"]["psnr"] > 0
    assert [(e["split"], e["n"], e["psnr"]) for e in card["evaluation"]] == [
        ("blocks", 1, card["validation"]["psnr"])]  # no singles in this run's split
    assert card["training"]["data"].startswith("paired folders") and "1 pairs held out" in card["training"]["data"]
    assert card["training"]["stages"] == [{"run": str(run), "steps": None, "init": None, "train_only": None}]
    assert card["notes"] == "a test" and card["training"]["wall_time_hours"] == 0.1
    model = load_model(models / "lldiff-default.yaml")  # the card and weights load as the default would
    assert model.config.steps == 1 and model.config.exposure_prior == 0.4
    before = weights.stat().st_mtime_ns
    default_model.main(argv + ["--notes", "card only"], models=models)  # the same weights: file kept
    assert weights.stat().st_mtime_ns == before
    assert yaml.safe_load((models / "lldiff-default.yaml").read_text())["notes"] == "card only"


def test_ship_names_the_model_and_scores_each_held_out_part(tmp_path, run):
    (run / "split.json").write_text(json.dumps({"val": ["3", "4"], "singles": ["4"]}))
    models = tmp_path / "models"
    default_model.main(["ship", str(run), "--steps", "1", "--ensemble", "1", "--name", "lldiff-lol"], models=models)
    card = yaml.safe_load((models / "lldiff-lol.yaml").read_text())
    assert card["name"] == "lldiff-lol" and (models / "lldiff-lol.pt").is_file()
    assert card["usage"][0] == "lldiff enhance IN_DIR OUT_DIR --model lol"
    assert len((models / "lldiff-lol.yaml").read_text().splitlines()) <= 100  # a card, not a lab notebook
    assert not (models / "lldiff-default.yaml").exists()
    assert "1 pairs held out in blocks of 1 consecutive names and 1 single pairs" in card["training"]["data"]
    parts = {e["split"]: e for e in card["evaluation"]}
    assert parts.keys() == {"blocks", "singles"} and parts["blocks"]["n"] == parts["singles"]["n"] == 1
    assert card["validation"]["n"] == 2
    assert abs((parts["blocks"]["psnr"] + parts["singles"]["psnr"]) / 2 - card["validation"]["psnr"]) < 1e-3


def test_ship_keeps_a_weights_file_that_holds_the_same_payload(tmp_path, exposure_aware_model):
    import torch

    ship = {"format": 1, "config": {"levels": 2}, "state_dict": exposure_aware_model.state_dict()}
    path = tmp_path / "w.pt"
    assert not default_model.same_payload(path, ship)
    torch.save(ship, path)
    assert default_model.same_payload(path, ship)
    assert not default_model.same_payload(path, ship | {"config": {"levels": 1}})
    changed = {k: v.clone() for k, v in ship["state_dict"].items()}
    next(iter(changed.values())).add_(1)
    assert not default_model.same_payload(path, ship | {"state_dict": changed})


def test_merge_takes_each_module_from_its_mix_and_writes_a_checkpoint(monkeypatch, run):
    import torch
    from conftest import tiny_config

    from lldiff_cli.checkpoints import load_checkpoint, model_from_checkpoint
    from lldiff_cli.errors import LldiffError
    from lldiff_cli.model import WaveletDiffusion

    tuned = model_from_checkpoint(load_checkpoint(run / "best.pt"))
    torch.manual_seed(1)
    base_model = WaveletDiffusion(tiny_config())  # other weights, the same architecture
    base = run.parent / "base.pt"
    save_checkpoint(base_model, base)
    monkeypatch.setattr(sys, "argv", ["default_model.py", "merge", str(run), "--base", str(base),
                                      "--mix", "hfrms=1,unet=0.5"])
    default_model.main()
    payload = load_checkpoint(run / "merged.pt")
    assert payload["step"] == 0 and payload["merged"]["mix"] == "hfrms=1,unet=0.5"
    merged = model_from_checkpoint(payload).state_dict()
    mine, theirs = base_model.state_dict(), tuned.state_dict()
    for key, value in merged.items():
        module = key.split(".")[0]
        expected = {"hfrms": theirs[key], "unet": (mine[key] + theirs[key]) / 2}.get(module, mine[key])
        assert torch.allclose(value, expected, atol=1e-6), key
    assert any(not torch.equal(mine[k], theirs[k]) for k in mine if k.startswith(("hfrms.", "unet.")))

    for mix, message in (("bogus=1", "no module 'bogus'"), ("hfrms=1.5", "not a weight in"),
                         ("hfrms", "module=weight pairs")):
        with pytest.raises(LldiffError, match=message):
            default_model.merge(base_model, tuned, default_model.parse_mix(mix))
    monkeypatch.setattr(sys, "argv", ["default_model.py", "merge", str(run), "--mix", "hfrms=1"])
    with pytest.raises(SystemExit, match="merge needs --base"):
        default_model.main()


def test_calibrate_with_a_grid_and_members_swaps_in_that_estimator_and_keeps_the_rest(monkeypatch, capsys, run):
    from lldiff_cli.checkpoints import load_checkpoint, model_from_checkpoint

    monkeypatch.setattr(sys, "argv", ["default_model.py", "calibrate", str(run), "--grid", "2x3", "--members", "2",
                                      "--maps", "1", "--iterations", "5", "--map-iterations", "5", "--jitter", "0.1"])
    default_model.main()
    assert "calibrated.pt" in capsys.readouterr().out
    before = model_from_checkpoint(load_checkpoint(run / "best.pt"))
    after = model_from_checkpoint(load_checkpoint(run / "calibrated.pt"))
    assert after.config.exposure["grid"] == [2, 3] and after.exposure_net.grid == (2, 3)
    assert after.config.exposure["members"] == 2 and after.config.exposure["maps"] == 1
    assert [type(m).__name__ for m in after.exposure_net.members] == ["ExposureNet", "ExposureNet", "ExposureMap"]
    mine = after.state_dict()
    for key, value in before.state_dict().items():
        if not key.startswith("exposure_net."):
            assert torch.equal(mine[key], value), key
    assert 0 < after.config.exposure_prior < 1
    rows = sweep(monkeypatch, capsys, run, "--checkpoint", "calibrated.pt", "--on", "training")
    assert rows[0]["n"] == 4
