"""A model on disk: the checkpoint format, model cards, and the shipped models.

A checkpoint (.pt, ``format: lldiff-checkpoint-1``) carries the model's own arguments (``config``)
beside its weights, so :func:`model_from_checkpoint` rebuilds it from the file alone; it loads with
``weights_only=True``. A training run's checkpoints add its state (train.py). A model card (.yaml)
names a checkpoint beside it with its sha256, and may set the sampler; the shipped models are the
cards ``lldiff-NAME.yaml`` in :func:`model_dirs`. :func:`load_model` takes any of the three.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch

from lldiff_cli.errors import LldiffError
from lldiff_cli.model import ModelConfig, WaveletDiffusion, build_model


def save_checkpoint(model: WaveletDiffusion, path: Path, extra: Optional[dict] = None) -> None:
    """Write weights + config atomically to ``path`` (.pt); loadable with weights_only=True."""
    from lldiff_cli.atomic import atomic_write

    payload = {"format": "lldiff-checkpoint-1", "config": asdict(model.config),
               "state_dict": model.state_dict(), **(extra or {})}
    with atomic_write(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """The record ``save_checkpoint`` wrote (weights_only=True); LldiffError naming ``path``
    otherwise, in one line: a missing file, a file torch.save did not write (a text file, an
    image), a damaged one, or one that is not an lldiff checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise LldiffError(f"model file not found: {path}")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head != b"PK\x03\x04":  # torch.save writes a zip archive (its legacy format is not ours)
        raise LldiffError(f"{path}: not an lldiff checkpoint (not a file torch.save wrote)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        text = str(exc)
        if "Weights only load failed" in text:
            # torch's page of advice ends in the reason, e.g. "Unsupported global: GLOBAL x.Y".
            reason = next((line.split("error:", 1)[1].strip().split(". ")[0] for line in text.splitlines()
                           if "WeightsUnpickler error:" in line), "")
            raise LldiffError(f"{path}: not an lldiff checkpoint (it holds Python objects, not only "
                              f"weights{': ' + reason if reason else ''})") from None
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        raise LldiffError(f"{path}: not a readable lldiff checkpoint, damaged or cut short "
                          f"({type(exc).__name__}: {first})") from None
    if not isinstance(payload, dict) or payload.get("format") != "lldiff-checkpoint-1":
        raise LldiffError(f"{path}: not an lldiff checkpoint (no 'format: lldiff-checkpoint-1' record)")
    return payload



def model_from_checkpoint(payload: dict, *, weights: str = "ema", source: str = "checkpoint") -> WaveletDiffusion:
    """Rebuild the model from a checkpoint dict (``weights``: 'ema' when present, else 'model')."""
    from lldiff_cli.config import from_dict

    try:  # the record's keys and types are checked as a config file's are
        model = build_model(from_dict(ModelConfig, payload.get("config"), "config"), "config")
    except LldiffError as exc:
        raise LldiffError(f"{source}: model config does not match this lldiff version ({exc})") from None
    key = "ema_state_dict" if weights == "ema" and "ema_state_dict" in payload else "state_dict"
    if key not in payload:
        raise LldiffError(f"{source}: holds no weights (no {key!r} record)")
    state = payload[key]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        # PyTorch lists every missing, unexpected and mis-shaped tensor; name the first few.
        details = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]
        summary = "; ".join(d[:160] for d in details[:3])
        raise LldiffError(f"{source}: weights do not fit the model the config describes ({summary})") from None
    return model.eval()


# --- shipped models and cards -----------------------------------------------------------

DEFAULT_MODEL_NAME = "lldiff-default"


def model_dirs() -> list[Path]:
    """Where shipped models are looked for: $LLDIFF_MODELS alone when set; else the checkout's
    models/ and the copy ``pip install .`` puts in <prefix>/share/lldiff/models."""
    import os
    import sys

    if os.environ.get("LLDIFF_MODELS"):
        return [Path(os.environ["LLDIFF_MODELS"])]
    return [Path(__file__).resolve().parent.parent / "models", Path(sys.prefix) / "share" / "lldiff" / "models"]


MODEL_SUFFIXES = (".pt", ".pth", ".yaml", ".yml")  # a --model value with one of these is a file


def shipped_models() -> dict[str, Path]:
    """The installed models by short name ("default", "lol", ...): the cards lldiff-NAME.yaml
    in :func:`model_dirs`, the first folder that has a name winning."""
    found: dict[str, Path] = {}
    for d in model_dirs():
        for card in sorted(d.glob("lldiff-*.yaml")) if d.is_dir() else []:
            found.setdefault(card.stem[len("lldiff-"):], card)
    return found


def resolve_model(spec: str | Path | None = None) -> Path:
    """The file a --model value names: None is the default model; a value with no model-file
    suffix that is not a file is a shipped model's short name (``lol`` -> models/lldiff-lol.yaml);
    anything else is a path, returned as it is."""
    name = "default" if spec is None else str(spec)
    if spec is not None and (Path(name).suffix.lower() in MODEL_SUFFIXES or Path(name).is_file()):
        return Path(spec)
    shipped = shipped_models()
    if name in shipped:
        return shipped[name]
    searched = ", ".join(str(d) for d in model_dirs())
    if spec is None:
        raise LldiffError(f"no default model is installed (looked for {DEFAULT_MODEL_NAME}.yaml in {searched}); "
                          "pass --model CARD.yaml or CHECKPOINT.pt")
    raise LldiffError(f"no model named {name!r}: the shipped models are {', '.join(sorted(shipped)) or 'none'} "
                      f"(in {searched}); or give a card (.yaml) or checkpoint (.pt) file")


def sha256_of(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def card_weights(card: Path) -> Path:
    """The checkpoint a model card (.yaml) names, once checked: the card reads as YAML with a
    ``weights`` file name inside the card's own folder (symlinks resolved) and a ``sha256`` of
    64 hex digits that the file matches. Anything else is one LldiffError naming the card."""
    import re

    from lldiff_cli.config import load_yaml

    card = Path(card)
    record = load_yaml(card, what="model card")
    if "weights" not in record:
        raise LldiffError(f"{card}: a model card needs a 'weights' entry naming the checkpoint file")
    name = record["weights"]
    if not isinstance(name, str) or not name.strip():
        raise LldiffError(f"{card}: 'weights' must be the checkpoint's file name, got {name!r}")
    # A card describes the file beside it: a path out of its folder would load any file on the disk.
    folder = card.parent.resolve()
    weights = card.parent / name
    if Path(name).is_absolute() or folder not in weights.resolve().parents:
        raise LldiffError(f"{card}: weights {name!r} must be a file inside the card's folder {card.parent}")
    if not weights.is_file():
        raise LldiffError(f"{card}: weights file {weights} not found")
    digest = record.get("sha256")
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
        raise LldiffError(f"{card}: sha256 must be the 64 hex digits of the weights file's SHA-256, "
                          f"got {digest!r}")
    if sha256_of(weights) != digest.lower():
        raise LldiffError(f"{weights}: sha256 does not match the card {card} (corrupt or replaced file)")
    return weights


# The settings of a card's ``sampler`` block: how enhance runs the model, not what it is.
SAMPLER_KEYS = ("steps", "eta", "spacing", "start_noise", "clip", "ensemble", "exposure_spread", "keep_highlights")


def card_sampler(card: Path, config: ModelConfig) -> ModelConfig:
    """``config`` with the card's ``sampler`` block applied: a card is what enhance runs, so a
    shipped model's settings can change (e.g. keep_highlights) without new weights. A key
    outside SAMPLER_KEYS or a bad value is an LldiffError naming the card."""
    from lldiff_cli.config import from_dict, load_yaml

    sampler = load_yaml(card, what="model card").get("sampler") or {}
    if not isinstance(sampler, dict):
        raise LldiffError(f"{card}: 'sampler' must be a mapping of {', '.join(SAMPLER_KEYS)}")
    unknown = sorted(set(sampler) - set(SAMPLER_KEYS))
    if unknown:
        raise LldiffError(f"{card}: unknown sampler setting {', '.join(unknown)}; allowed: {', '.join(SAMPLER_KEYS)}")
    return from_dict(ModelConfig, {**asdict(config), **sampler}, f"{card}: sampler").validate()


def load_model(path: Optional[Path | str] = None, map_location="cpu") -> WaveletDiffusion:
    """Load a model from a card (.yaml naming its weights), a checkpoint (.pt) or a shipped
    model's short name (:func:`resolve_model`); None: the default.

    A card's sha256 is always checked against the weights (see :func:`card_weights`), so a
    truncated download or a replaced file is a clear error; its ``sampler`` block is applied
    (:func:`card_sampler`).
    """
    path = resolve_model(path)
    card = None
    if path.suffix.lower() in (".yaml", ".yml"):
        card, path = path, card_weights(path)
    model = model_from_checkpoint(load_checkpoint(path, map_location), source=str(path))
    if card is not None:
        model.config = card_sampler(card, model.config)
    return model
