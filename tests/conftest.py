import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from lldiff_cli.model import ModelConfig, WaveletDiffusion

TINY = dict(
    unet={"width": 8, "channel_mults": [1, 2], "blocks_per_level": 1, "attention_levels": [1], "dropout": 0.0},
    hfrm={"width": 8, "dilations": [1, 2, 1], "heads": 2},
    anchor={"width": 8, "channel_mults": [1, 2]},
    schedule={"kind": "linear", "timesteps": 100, "beta_start": 1e-4, "beta_end": 0.02},
    steps=2,
)


def tiny_config(**overrides) -> ModelConfig:
    return ModelConfig(**{**TINY, **overrides})


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return WaveletDiffusion(tiny_config()).eval()


@pytest.fixture
def exposure_aware_model(tiny_model):
    """tiny_model with every weight nudged: an untrained model's output does not yet depend on
    the exposure it is asked for (its conditioning starts at zero)."""
    with torch.no_grad():
        for param in tiny_model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return tiny_model


def load_script(relative: str):
    """A script of the repository that is not part of the package (benchmarks/, scripts/) as a module."""
    path = Path(__file__).resolve().parent.parent / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))  # as when run: the script's folder comes first on the path
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def pil_open(path):
    """The image at ``path``, decoded by Pillow with its file closed again (``Image.open`` alone
    leaves it open until garbage collection, and Python warns)."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        loaded = im.copy()
    loaded.format = im.format
    return loaded


def make_run_folder(root, names: list[str], split: dict, size: tuple[int, int] = (24, 32), dim: int = 8):
    """A `lldiff train` run folder over generated pairs ROOT/{low,high}/NAME.png (each low image
    the high one divided by ``dim``): config.yaml (paired layout) and split.json = ``split``."""
    import json

    import numpy as np
    import yaml
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in names:
        high = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        for folder, image in (("low", high // dim), ("high", high)):
            (root / folder).mkdir(exist_ok=True)
            Image.fromarray(image).save(root / folder / f"{name}.png")
    run = root / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(
        {"data": {"layout": "paired", "low": str(root / "low"), "high": str(root / "high"), "val_block": 1}}))
    (run / "split.json").write_text(json.dumps(split))
    return run
