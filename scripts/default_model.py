"""Choose the default model's sampler settings on the held-out split, and ship it to models/.

    python scripts/default_model.py calibrate runs/default              # -> runs/default/calibrated.pt
    python scripts/default_model.py sweep runs/default --checkpoint calibrated.pt --steps 1,2,4,8 --start-noise 0,1
    python scripts/default_model.py ship runs/default --checkpoint calibrated.pt --steps 4 --eta 0
    python scripts/default_model.py keep runs/default                     # -> models/train-state/default (the run's name)
    python scripts/default_model.py merge runs/ft --checkpoint last.pt --base runs/default/best.pt \
        --mix hfrms=1,refiner=1,unet=0.3                                   # -> runs/ft/merged.pt

`calibrate` refits only the exposure estimator (``--exposure auto``) of the EMA weights on whole
training images (training sees 128-pixel crops, inference whole images), with a squared error
of log brightness, and records the mean estimate over the training images as the model's
``exposure_prior``; `sweep --exposure-shrink 0,0.5,1` then measures how far to trust the
per-image estimate against that prior. The held-out images are not used for fitting. A prior
chosen for the score rather than as the mean estimate, and the ensemble's exposure spread, are
swept on training pairs, so that the held-out figures stay honest:

    python scripts/default_model.py sweep runs/default --exposure-prior 0.42,0.44 --exposure-spread 0,0.27 \
        --on training --every 5
`calibrate`, `sweep` and `ship` read the run's config.yaml (data layout and root) and
split.json (the held-out names); `sweep` and `ship` enhance every held-out image with the
checkpoint's EMA weights exactly as `lldiff enhance` does, and score it with lldiff_cli.metrics
(PSNR / SSIM, plain and GT-mean). `ship` writes
models/lldiff-default.pt (EMA weights and config only) and its card models/lldiff-default.yaml.
`keep` copies what `lldiff train --resume` needs (last.pt, config.yaml, split.json, log.jsonl,
curve.png) to models/train-state/default, with the optimiser's moments stored in bfloat16 so
the repository stays small (the optimiser loads them back as float32; a resumed run then
differs from an uninterrupted one by that rounding only).
`merge` averages a fine-tune's EMA weights with the weights it started from, module by module
(`--mix module=w`: w of the fine-tune, 0 for a module not named), so that a fine-tune can lend
what it learned to some modules only; `ship` then takes the merged file like any checkpoint.
A merge trains nothing, so the file records 0 steps and the card's stages count none for it.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional

import torch
import yaml

from lldiff_cli import metrics as M
from lldiff_cli.calibrate import fit_exposure, fit_exposure_map
from lldiff_cli.atomic import atomic_write
from lldiff_cli.checkpoints import (DEFAULT_MODEL_NAME, SAMPLER_KEYS, load_checkpoint, model_from_checkpoint,
                                    save_checkpoint, sha256_of)
from lldiff_cli.config import load_yaml
from lldiff_cli.data import layout_dirs
from lldiff_cli.data import run_pairs as data_run_pairs
from lldiff_cli.device import pick_precision
from lldiff_cli.enhance import EnhanceSettings, enhance_image
from lldiff_cli.errors import LldiffError, run_script
from lldiff_cli.images import read_image
from lldiff_cli.model import WaveletDiffusion
from lldiff_cli.networks import ExposureMap, estimators

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("singles", "blocks")  # --on's held-out parts, named as data.run_split names them


def run_pairs(run: Path, held_out: bool = True, every: int = 1, limit: int = 0,
              part: str = "val") -> tuple[list, dict]:
    """(name, low, high) tensors of the run's held-out pairs (or of its training pairs): every
    ``every``-th, the first ``limit`` of those (0: all); only those are read. ``part``: all the
    held-out pairs ("val"), or those held out in blocks ("blocks") or as singles ("singles")."""
    cfg = load_yaml(run / "config.yaml", "run's config.yaml")  # an LldiffError naming it when missing
    pairs = data_run_pairs(run, held_out, part)[::every][: limit or None]
    loaded = [(p.name, read_image(p.low).rgb, read_image(p.high).rgb) for p in pairs]
    return loaded, cfg


def calibrate(model: WaveletDiffusion, pairs, *, grid: Optional[tuple[int, int]] = None, members: Optional[int] = None,
              maps: Optional[int] = None, iterations: int = 300, map_iterations: int = 3000, jitter: float = 0.0,
              seed: int = 0) -> WaveletDiffusion:
    """The model with its exposure estimator refitted on whole images (the ground truth's mean grey,
    :func:`lldiff_cli.calibrate.fit_exposure`; an ExposureMap member to the ground truth's band,
    :func:`lldiff_cli.calibrate.fit_exposure_map`, for ``map_iterations``); with a ``grid``, a number
    of ``members`` or of ``maps``, a fresh estimator of that kind (a grid one can recognise the
    training scenes; members are fitted one by one, from seeds ``seed``, ``seed + 1``, ...)
    replaces the one it had. The rest of the weights are kept."""
    from lldiff_cli.tiling import pad_to_multiple

    if grid is not None or members is not None or maps is not None:
        exposure = dict(model.config.exposure)
        if grid is not None:
            exposure["grid"] = list(grid)
        if members is not None:
            exposure["members"] = members
        if maps is not None:
            exposure["maps"] = maps
        config = replace(model.config, exposure=exposure)
        torch.manual_seed(seed)
        fresh = WaveletDiffusion(config)
        kept = {k: v for k, v in model.state_dict().items() if not k.startswith("exposure_net.")}
        fresh.load_state_dict({**fresh.state_dict(), **kept}, strict=True)
        model = fresh

    def band(image):
        return model.decompose(pad_to_multiple(image, 2 ** model.levels)[0])[0]

    with torch.no_grad():
        bands = [band(low) for _, low, _ in pairs]
        truths = [(band(high) + 1) / 2 for _, _, high in pairs] if model.config.exposure.get("maps") else []
    targets = torch.tensor([float(high.mean()) for _, _, high in pairs])
    grid_net = model.config.exposure.get("grid") is not None
    for k, net in enumerate(estimators(model.exposure_net)):  # members: each its own draws
        if isinstance(net, ExposureMap):
            fit_exposure_map(net, bands, truths, iterations=map_iterations, seed=seed + k)
        else:
            fit_exposure(net, bands, targets, iterations=iterations, jitter=jitter, seed=seed + k,
                         lr=2e-3 if grid_net else 1e-3)
    return model


def score(model: WaveletDiffusion, pairs, settings: EnhanceSettings) -> dict:
    device = torch.device("cpu")
    rows = {"psnr": [], "ssim": [], "psnr_gtmean": [], "ssim_gtmean": [], "seconds": []}
    for _, low, high in pairs:
        start = time.perf_counter()
        out = enhance_image(model, low, settings, device)
        rows["seconds"].append(time.perf_counter() - start)
        out8, high8 = M.as_array255(out), M.as_array255(high)
        rows["psnr"].append(M.psnr(out8, high8))
        rows["ssim"].append(M.ssim(out8, high8))
        rows["psnr_gtmean"].append(M.psnr_gtmean(out8, high8))
        rows["ssim_gtmean"].append(M.ssim_gtmean(out8, high8))
    return {k: sum(v) / len(v) for k, v in rows.items()} | {"n": len(pairs)}


def same_payload(path: Path, ship: dict) -> bool:
    """Whether ``path`` already holds ``ship`` (format, config, every tensor): torch.save writes
    different bytes for the same tensors, and each rewrite would add the whole file to git."""
    if not path.is_file():
        return False
    old = torch.load(path, map_location="cpu", weights_only=True)
    mine, theirs = ship["state_dict"], old.get("state_dict", {})
    return (old.get("format") == ship["format"] and old.get("config") == ship["config"]
            and mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine))


def sampler_model(payload: dict, **sampler) -> WaveletDiffusion:
    model = model_from_checkpoint(payload)
    model.config = replace(model.config, **{k: v for k, v in sampler.items() if v is not None}).validate()
    return model


def keep(run: Path, dest: Path) -> None:
    """Copy a run's resumable state to ``dest`` (see the module doc); out_dir becomes runs/NAME
    (NAME: ``dest``'s name).

    Built in a folder beside ``dest`` and swapped in at the end, so an interrupted copy never
    leaves a half-written state where a later session would resume from it."""
    import shutil
    import tempfile

    state = load_checkpoint(run / "last.pt")
    for moments in state["optimizer"]["state"].values():
        for key in ("exp_avg", "exp_avg_sq"):
            if key in moments:
                moments[key] = moments[key].to(torch.bfloat16)
    config = load_yaml(run / "config.yaml", "run's config.yaml")
    config["out_dir"] = f"runs/{dest.name}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        torch.save(state, building / "last.pt")
        for name in ("split.json", "log.jsonl", "curve.png"):
            shutil.copy2(run / name, building / name)
        (building / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        if dest.exists():
            shutil.rmtree(dest)
        building.rename(dest)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    size = sum(f.stat().st_size for f in dest.iterdir()) / 2 ** 20
    shown = dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest
    print(f"wrote {dest} ({size:.1f} MB); resume: mkdir -p runs && cp -r {shown} runs/{dest.name} && "
          f"lldiff train -c runs/{dest.name}/config.yaml --resume")


def merge(base: WaveletDiffusion, tuned: WaveletDiffusion, mix: dict[str, float]) -> dict:
    """The state dict whose tensors in each top-level module are (1 - w) * base + w * tuned,
    w = ``mix``'s weight for the module (0 when not named). The two models share an architecture."""
    modules = sorted(name for name, _ in base.named_children())
    for name, w in mix.items():
        if name not in modules:
            raise LldiffError(f"--mix: the model has no module {name!r} (it has {', '.join(modules)})")
        if not 0 <= w <= 1:
            raise LldiffError(f"--mix: {name}={w} is not a weight in [0, 1]")
    mine, theirs = base.state_dict(), tuned.state_dict()
    if {k: v.shape for k, v in mine.items()} != {k: v.shape for k, v in theirs.items()}:
        raise LldiffError("--base and the run's checkpoint are not the same architecture")
    return {k: torch.lerp(v, theirs[k], mix.get(k.split(".")[0], 0.0)) if v.is_floating_point() else v
            for k, v in mine.items()}


def parse_mix(text: str) -> dict[str, float]:
    """'hfrms=1,unet=0.3' -> {'hfrms': 1.0, 'unet': 0.3}."""
    try:
        pairs = [item.split("=") for item in text.split(",")]
        return {name.strip(): float(w) for name, w in pairs}
    except ValueError:
        raise LldiffError(f"--mix takes module=weight pairs separated by commas, got {text!r}") from None


def stage(run: str, steps, train_config: dict) -> dict:
    """One entry of the card's training.stages: a run, its steps, and what it started from."""
    return {"run": run, "steps": steps, "init": train_config.get("init") or None,
            "train_only": list(train_config.get("train_only") or []) or None}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["calibrate", "sweep", "ship", "keep", "merge"])
    parser.add_argument("run", type=Path)
    parser.add_argument("--checkpoint", default="best.pt")
    parser.add_argument("--steps", default=None)
    parser.add_argument("--eta", default=None)
    parser.add_argument("--start-noise", default=None)
    parser.add_argument("--spacing", default=None)
    parser.add_argument("--ensemble", default=None, help="mirrored copies averaged: 1, 2 or 4")
    parser.add_argument("--exposure-shrink", default=None, help="auto exposure = prior + shrink * (estimate - prior)")
    parser.add_argument("--exposure-prior", default=None, help="the mean grey that auto exposure aims at")
    parser.add_argument("--exposure-spread", default=None,
                        help="the ensemble's copies render at exposure x (1 +- spread)")
    parser.add_argument("--keep-highlights", choices=["on", "off"], default=None,
                        help="tone.keep_highlights after the model (default: ship keeps the previous card's choice, "
                             "else the checkpoint's)")
    parser.add_argument("--on", choices=["held-out", *PARTS, "training"], default="held-out",
                        help="sweep: score the held-out pairs (all, or one part: singles, LOL's protocol; "
                             "blocks, new scenes) or the training pairs")
    parser.add_argument("--grid", default="", help="calibrate: a grid estimator of RxC cells (e.g. 6x8) in place "
                                                   "of the model's own")
    parser.add_argument("--members", type=int, default=None,
                        help="calibrate: an estimator of this many members fitted from their own seeds, their "
                             "estimates' geometric mean (default: the model's own estimator)")
    parser.add_argument("--maps", type=int, default=None,
                        help="calibrate: this many ExposureMaps (the ground truth's brightness pixel by pixel) "
                             "beside the members, in one geometric mean (default: the model's own)")
    parser.add_argument("--iterations", type=int, default=300, help="calibrate: fitting iterations")
    parser.add_argument("--map-iterations", type=int, default=3000,
                        help="calibrate: an ExposureMap's fitting iterations "
                        "(its crop jitter is fit_exposure_map's 0.1, whatever --jitter)")
    parser.add_argument("--jitter", type=float, default=0.0, help="calibrate: crop jitter while fitting")
    parser.add_argument("--every", type=int, default=1, help="score every N-th pair")
    parser.add_argument("--limit", type=int, default=0, help="score only the first N pairs")
    parser.add_argument("--precision", default="auto",
                        help="auto (as lldiff enhance: bfloat16 on a CPU that has it), float32 or bfloat16")
    parser.add_argument("--notes", default="", help="ship: free text for the card (what was tried)")
    parser.add_argument("--name", default=DEFAULT_MODEL_NAME, help="ship: the model's name (MODELS/NAME.pt, NAME.yaml)")
    parser.add_argument("--license", default="MIT (as lldiff); trained on LOL (Wei et al. 2018), a research dataset",
                        help="ship: the weights' licence, for the card")
    parser.add_argument("--intended-use", default="", help="ship: what the model is for (default: the previous card's)")
    parser.add_argument("--limitations", default="", help="ship: where it fails (default: the previous card's)")
    parser.add_argument("--wall-hours", type=float, default=None,
                        help="ship: training wall time in hours, all stages (the log does not record pauses)")
    parser.add_argument("--stage", default=None, help="ship: this run's entry in the card's stages (default: its folder)")
    parser.add_argument("--hardware", default=None, help="ship: where it was trained (default: this machine)")
    parser.add_argument("--base", type=Path, default=None, help="merge: the weights the run started from")
    parser.add_argument("--mix", default="", help="merge: module=w pairs, w the run's share (e.g. hfrms=1,unet=0.3)")
    return parser.parse_args(argv)


def main(argv=None, models: Path = ROOT / "models") -> None:
    """Run one action (see the module doc); ``ship`` and ``keep`` write under ``models``."""
    args = parse_args(argv)
    torch.set_flush_denormal(True)
    if args.action == "keep":
        keep(args.run, models / "train-state" / args.run.name)
        return
    if args.action == "merge" and args.base is None:
        sys.exit("merge needs --base, the weights the run started from")
    payload = load_checkpoint(args.run / args.checkpoint)
    if args.action == "merge":
        write_merged(args, payload)
    elif args.action == "calibrate":
        write_calibrated(args, payload)
    else:
        card = models / f"{args.name}.yaml"
        if args.action == "ship" and args.keep_highlights is None and card.is_file():  # a re-ship keeps it
            kept = (yaml.safe_load(card.read_text()).get("sampler") or {}).get("keep_highlights")
            args.keep_highlights = None if kept is None else "on" if kept else "off"
        model, result, cfg = sweep(args, payload)
        if args.action == "ship":
            ship(args, payload, model, result, cfg, models)


def write_merged(args: argparse.Namespace, payload: dict) -> None:
    """RUN/merged.pt: the run's checkpoint merged into --base by --mix (see :func:`merge`)."""
    ckpt = args.run / args.checkpoint
    tuned = model_from_checkpoint(payload, source=str(ckpt))
    merged = merge(model_from_checkpoint(load_checkpoint(args.base), source=str(args.base)), tuned,
                   parse_mix(args.mix))
    tuned.load_state_dict(merged, strict=True)
    out = args.run / "merged.pt"
    save_checkpoint(tuned, out, {"step": 0, "merged": {"base": str(args.base), "checkpoint": args.checkpoint,
                                                       "mix": args.mix}})
    print(f"wrote {out}")


def write_calibrated(args: argparse.Namespace, payload: dict) -> None:
    """RUN/calibrated.pt: the exposure estimator refitted on the training images (:func:`calibrate`),
    with their mean estimate as the model's exposure_prior."""
    train_pairs, _ = run_pairs(args.run, held_out=False)
    grid = tuple(int(v) for v in args.grid.split("x")) if args.grid else None
    model = calibrate(model_from_checkpoint(payload), train_pairs, grid=grid, members=args.members, maps=args.maps,
                      iterations=args.iterations, map_iterations=args.map_iterations, jitter=args.jitter)
    with torch.no_grad():  # the prior: the mean estimate over the training images
        estimates = [float(model.auto_exposure(low)) for _, low, _ in train_pairs]
    model.config = replace(model.config, exposure_prior=round(sum(estimates) / len(estimates), 4))
    out = args.run / "calibrated.pt"
    save_checkpoint(model, out, {"step": payload.get("step"), "history": payload.get("history", []),
                                 "calibrated_from": args.checkpoint})
    print(f"wrote {out}")


def sweep(args: argparse.Namespace, payload: dict) -> tuple[WaveletDiffusion, dict, dict]:
    """Score every combination of the sampler options given (one JSON line each); returns the
    last combination's model and scores, and the run's config."""
    if args.every < 1 or args.limit < 0:
        sys.exit("--every must be at least 1 and --limit at least 0")
    if args.action == "ship" and args.on != "held-out":
        sys.exit("ship scores the held-out pairs: the card's validation is measured on them")
    pairs, cfg = run_pairs(args.run, args.on != "training", args.every, args.limit,
                           args.on if args.on in PARTS else "val")

    def values(text, cast):
        try:
            return [None] if text is None else [cast(v) for v in text.split(",")]
        except ValueError:
            sys.exit(f"not a comma-separated list of {cast.__name__} values: {text!r}")

    grid = list(itertools.product(values(args.steps, int), values(args.eta, float),
                                  values(args.start_noise, float), values(args.spacing, str),
                                  values(args.exposure_shrink, float), values(args.exposure_prior, float),
                                  values(args.exposure_spread, float), values(args.ensemble, int)))
    if args.action == "ship" and len(grid) != 1:
        sys.exit("ship takes one value per sampler option")
    precision = pick_precision(args.precision, torch.device("cpu"))
    for steps, eta, start_noise, spacing, shrink, prior, spread, ensemble in grid:
        model = sampler_model(payload, steps=steps, eta=eta, start_noise=start_noise, spacing=spacing,
                              exposure_shrink=shrink, exposure_prior=prior, exposure_spread=spread,
                              ensemble=ensemble,
                              keep_highlights=None if args.keep_highlights is None else args.keep_highlights == "on")
        c = model.config
        result = {"steps": c.steps, "eta": c.eta, "start_noise": c.start_noise, "spacing": c.spacing,
                  "ensemble": c.ensemble,
                  "exposure_shrink": c.exposure_shrink, "exposure_prior": c.exposure_prior,
                  "exposure_spread": c.exposure_spread, "keep_highlights": c.keep_highlights,
                  "precision": precision, **score(model, pairs, EnhanceSettings(precision=precision))}
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}), flush=True)
    return model, result, cfg


def ship(args: argparse.Namespace, payload: dict, model: WaveletDiffusion, result: dict, cfg: dict,
         models: Path) -> None:
    """Write MODELS/NAME.pt (EMA weights and config) and its card, MODELS/NAME.yaml (NAME: --name).

    The card's ``validation`` holds the figures on every held-out pair; ``evaluation`` lists them
    per held-out part of the run's split (blocks: new scenes; singles: LOL's own protocol)."""
    name = args.name
    short = name.removeprefix("lldiff-")  # --model's name for it (checkpoints.resolve_model)
    weights = models / f"{name}.pt"
    card_path = models / f"{name}.yaml"
    # Read before it is replaced: a run grown from the shipped weights inherits their stages.
    previous = yaml.safe_load(card_path.read_text()) if card_path.is_file() else {}
    shipped = {"format": payload["format"], "config": asdict(model.config), "state_dict": model.state_dict()}
    models.mkdir(parents=True, exist_ok=True)
    if same_payload(weights, shipped):  # re-shipped for the card alone: keep the file and its sha256
        print(f"{weights}: the same weights and config; left as is")
    else:
        save_checkpoint(model, weights)  # the same record as ``shipped``
    stages = training_stages(args.stage or str(args.run), payload, cfg, weights, previous)
    counted = [s.get("steps") for s in stages]
    data = cfg["data"]
    split = json.loads((args.run / "split.json").read_text())
    held_out, singles = len(split["val"]), len(split.get("singles", []))
    held = f"{held_out - singles} pairs held out in blocks of {data.get('val_block')} consecutive names"
    if singles:
        held += f" and {singles} single pairs spread over the numbering"
    card = {
        "name": name,
        "weights": weights.name,
        "sha256": sha256_of(weights),
        "size_mb": round(weights.stat().st_size / 2 ** 20, 2),
        "parameters": sum(p.numel() for p in model.parameters()),
        "license": args.license,
        "intended_use": args.intended_use or previous.get("intended_use", ""),
        "limitations": args.limitations or previous.get("limitations", ""),
        "usage": previous.get("usage") or [f"lldiff enhance IN_DIR OUT_DIR --model {short}",
                                           f"lldiff eval --dataset LOL -m {short}"],
        "architecture": {k: v for k, v in asdict(model.config).items()
                         if k in ("levels", "unet", "hfrm", "anchor", "refiner", "prediction")},
        "schedule": model.config.schedule,
        "sampler": {k: getattr(model.config, k) for k in SAMPLER_KEYS},
        "auto_exposure": {"prior": model.config.exposure_prior, "shrink": model.config.exposure_shrink},
        "training": {
            "data": f"{data_description(data)}, {held}",
            "config": f"{args.run.name}/config.yaml (models/train-state/{args.run.name} when kept)",
            # every stage's steps: the weights' whole training
            "steps": sum(counted) if all(isinstance(n, int) for n in counted) else payload.get("step"),
            "stages": stages,
            "checkpoint": args.checkpoint,
            "weights": "EMA",
            "hardware": args.hardware or f"{platform.machine()} CPU, {torch.get_num_threads()} threads, "
                                         f"torch {torch.__version__}",
            "wall_time_hours": args.wall_hours,
            "curve": [h for h in payload.get("history", []) if "val_psnr" in h],
        },
        "validation": {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()},
        "evaluation": evaluation(args.run, model, result["precision"], data_description(data), split),
        "protocol": "lldiff eval protocol (README): 8-bit RGB PSNR, Gaussian SSIM; GT-mean columns separate",
        "notes": args.notes,
        "date": datetime.date.today().isoformat(),
    }
    with atomic_write(card_path) as tmp:
        # Short lists and mappings on one line each (flow style for leaf collections): a card to read.
        tmp.write_text(yaml.safe_dump(card, sort_keys=False, default_flow_style=None, width=100))
    print(f"wrote {weights} ({card['size_mb']} MB) and its card")


def evaluation(run: Path, model: WaveletDiffusion, precision: str, dataset: str, split: dict) -> list[dict]:
    """The card's evaluation: the model at its shipped settings on each held-out part of the run."""
    parts = [("blocks", "whole scenes held out in blocks of consecutive names (new scenes, as users' photos)"),
             ("singles", "single pairs spread over the numbering, their neighbours in training "
                         "(LOL's own test protocol, as eval15)")]
    rows = []
    for part, what in parts:
        if part == "singles" and not split.get("singles"):
            continue
        pairs, _ = run_pairs(run, part=part)
        if not pairs:
            continue
        figures = score(model, pairs, EnhanceSettings(precision=precision))
        rows.append({"dataset": dataset, "split": part, "held_out": what,
                     "protocol": "plain and GT-mean (README: lldiff eval)", "precision": precision,
                     **{k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}})
    return rows


def training_stages(name: str, payload: dict, cfg: dict, weights: Path, previous: dict) -> list[dict]:
    """The card's training.stages, first to last: this run's, after the runs it started from
    (``init``) or, when it started from the weights shipped before, after their card's stages."""
    stages = [stage(name, payload.get("step"), cfg)]
    init, inherited = cfg.get("init"), []
    while init and Path(init).is_file():  # a run that started from another's weights: name the chain
        if Path(init).resolve() == weights.resolve():  # the model shipped before: its card holds its stages
            # (shipping this run again: that card already lists it)
            inherited = [s for s in previous.get("training", {}).get("stages", []) if s != stages[0]]
            break
        parent = load_checkpoint(Path(init))
        parent_cfg = parent.get("train_config", {})
        stages.append(stage(str(Path(init).parent), parent.get("step"), parent_cfg))
        init = parent_cfg.get("init")
    return inherited + list(reversed(stages))


def data_description(data: dict) -> str:
    """The training pairs of a run's config, as the card says them: 'LOL train split (data/LOL/our485)'."""
    if data["layout"].lower() == "paired":
        return f"paired folders {data['low']} and {data['high']}"
    split = data.get("split", "train")
    low_dir, _ = layout_dirs(data["layout"], Path(data["root"]), split)
    return f"{data['layout']} {split} split ({low_dir.parent})"


if __name__ == "__main__":
    run_script(main)
