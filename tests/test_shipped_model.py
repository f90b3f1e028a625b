"""The model every `lldiff enhance` user gets: models/lldiff-default.{pt,yaml} as committed."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image as PILImage
from typer.testing import CliRunner

from lldiff_cli.checkpoints import DEFAULT_MODEL_NAME, load_model
from lldiff_cli.cli import app
from conftest import pil_open

MODELS = Path(__file__).resolve().parent.parent / "models"


@pytest.mark.parametrize("name", sorted(card.stem for card in MODELS.glob("lldiff-*.yaml")))
def test_card_describes_the_weights(name):
    card = yaml.safe_load((MODELS / f"{name}.yaml").read_text())
    weights = MODELS / card["weights"]
    assert weights.stat().st_size < 20 * 2 ** 20
    for key in ("sha256", "architecture", "schedule", "sampler", "training", "validation", "parameters"):
        assert card.get(key) is not None, key
    assert {"psnr", "ssim", "n"} <= card["validation"].keys()
    for key in ("data", "config", "steps", "hardware", "wall_time_hours"):
        assert card["training"].get(key) is not None, key
    model = load_model(MODELS / f"{name}.yaml")  # checks the sha256 and loads strictly
    assert sum(p.numel() for p in model.parameters()) == card["parameters"]
    for key, value in card["sampler"].items():  # the card's settings are the ones enhance uses
        assert getattr(model.config, key) == value, key
    assert card["auto_exposure"] == {"prior": model.config.exposure_prior, "shrink": model.config.exposure_shrink}


# An absolute path is the training machine's, not the reader's: a value that is one, or a
# word in a sentence that starts like one ("photos: /work/scratch/...").
ABSOLUTE_PATH = re.compile(r"(?:^|[\s(=:'\"])/[A-Za-z_.~]|/tmp/|/work/")


def card_strings(value):
    """Every string in a card, keys included, however deep."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from card_strings(key)
            yield from card_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from card_strings(item)
    elif isinstance(value, str):
        yield value


@pytest.mark.parametrize("name", sorted(card.stem for card in MODELS.glob("lldiff-*.yaml")))
def test_card_reads_as_a_model_card(name):
    """A card a user reads (as on a model hub): short, licensed, with its limits and its figures
    named by dataset and split, and no path of the machine it was trained on."""
    text = (MODELS / f"{name}.yaml").read_text()
    assert len(text.splitlines()) <= 150, "the training history belongs in docs/, not the card"
    card = yaml.safe_load(text)
    for key in ("license", "intended_use", "limitations", "evaluation"):
        assert card.get(key), key
    assert isinstance(card["evaluation"], list) and card["evaluation"]
    for entry in card["evaluation"]:
        assert entry.get("dataset") and entry.get("split"), entry
        assert {"psnr", "ssim", "n"} <= entry.keys(), entry
    assert not [s for s in card_strings(card) if ABSOLUTE_PATH.search(s)]


def test_default_model_brightens_a_dark_photo_from_the_cli(tmp_path, monkeypatch):
    monkeypatch.delenv("LLDIFF_MODELS", raising=False)
    rng = np.random.default_rng(0)
    scene = np.clip(rng.uniform(0.3, 0.9, (3, 12, 16)).repeat(8, 1).repeat(8, 2), 0, 1)
    dark = (scene.transpose(1, 2, 0) * 0.08 * 255).round().astype(np.uint8)
    (tmp_path / "in").mkdir()
    PILImage.fromarray(dark).save(tmp_path / "in" / "dark.png")
    result = CliRunner().invoke(app, ["enhance", str(tmp_path / "in"), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    out = np.asarray(pil_open(tmp_path / "out" / "dark.png"), dtype=np.float32) / 255
    assert out.shape == dark.shape and dark.mean() / 255 < 0.07
    assert abs(out.mean() - 0.44) < 0.03  # auto exposure: the card's target brightness
    result = CliRunner().invoke(app, ["enhance", str(tmp_path / "in"), str(tmp_path / "dim"), "--exposure", "0.15"])
    assert result.exit_code == 0, result.output
    assert abs(np.asarray(pil_open(tmp_path / "dim" / "dark.png"), dtype=np.float32).mean() / 255 - 0.15) < 0.03
