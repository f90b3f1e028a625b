"""The training core on tiny models and generated images: every test runs in seconds on a CPU."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from conftest import load_script, pil_open

from lldiff_cli.checkpoints import load_checkpoint
from lldiff_cli.config import load_config
from lldiff_cli.errors import LldiffError
from lldiff_cli.curve import write_curve
from lldiff_cli.losses import LossStep, sampled_image
from lldiff_cli.model import WaveletDiffusion
from lldiff_cli.train import get_lr, train
from lldiff_cli.train_config import TrainConfig, check_config
from lldiff_cli.train_data import TrainData, load_training_data, make_batch, prefetch

TINY_YAML = Path(__file__).resolve().parent.parent / "lldiff_cli" / "configs" / "tiny.yaml"


def save_rgb(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(array).save(path)


def smooth_image(rng, h: int, w: int) -> np.ndarray:
    """A blurry colour image: something a tiny model can learn a little of in a few steps."""
    small = rng.uniform(0.2, 0.9, (3, h // 8 + 1, w // 8 + 1)).astype(np.float32)
    big = torch.nn.functional.interpolate(torch.from_numpy(small)[None], size=(h, w), mode="bilinear")[0]
    return (big.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def make_photos(root: Path, n: int = 6, size=(40, 48)) -> Path:
    rng = np.random.default_rng(1)
    for i in range(n):
        save_rgb(root / ("sub" if i % 2 else "") / f"photo{i}.png", smooth_image(rng, *size))
    return root


def make_paired(root: Path, n: int = 6, size=(32, 40)) -> tuple[Path, Path]:
    rng = np.random.default_rng(2)
    for i in range(n):
        high = smooth_image(rng, *size)
        save_rgb(root / "high" / f"{i}.png", high)
        save_rgb(root / "low" / f"{i}.png", (high * 0.2).astype(np.uint8))
    return root / "low", root / "high"


def tiny_cfg(tmp_path: Path, *overrides: str) -> TrainConfig:
    """tiny.yaml on generated photos: 32-pixel crops, 2 images a batch, one thread."""
    photos = tmp_path / "photos"
    if not photos.exists():
        make_photos(photos)
    return load_config(TrainConfig, TINY_YAML, [
        f"data.photos={photos}", f"out_dir={tmp_path / 'run'}", "data.crop=32", "data.batch_size=2",
        "optim.max_steps=6", "optim.warmup=2", "log_every=2", "val_every=3", "ckpt_every=3",
        "val_images=1", *overrides])


def test_tiny_yaml_is_a_valid_config():
    cfg = load_config(TrainConfig, TINY_YAML)
    check_config(cfg)
    assert cfg.data.layout == "none" and cfg.data.photos == "sample_images"


@pytest.mark.parametrize("name", ["default.yaml", "photos.yaml"])
def test_shipped_configs_are_valid(name):
    check_config(load_config(TrainConfig, TINY_YAML.parent / name))


def test_overrides_take_exponent_numbers():
    # YAML 1.1 reads "5e-5" as a string; a float field must still take it.
    cfg = load_config(TrainConfig, TINY_YAML, ["optim.lr=5e-5", "optim.min_lr=1E-6"])
    assert cfg.optim.lr == 5e-5 and cfg.optim.min_lr == 1e-6
    with pytest.raises(LldiffError, match="optim.lr: expected a number"):
        load_config(TrainConfig, TINY_YAML, ["optim.lr=5e-5x"])


def test_get_lr_warms_up_then_decays():
    cfg = TrainConfig().optim
    assert get_lr(0, cfg) == pytest.approx(cfg.lr / cfg.warmup)
    assert get_lr(cfg.warmup, cfg) == pytest.approx(cfg.lr)
    assert get_lr(cfg.max_steps, cfg) == pytest.approx(cfg.min_lr)
    quarter = cfg.warmup + (cfg.max_steps - cfg.warmup) // 4  # cosine: (1 + cos(pi / 4)) / 2 of the way up
    expected = cfg.min_lr + (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * (quarter - cfg.warmup)
                                                                 / (cfg.max_steps - cfg.warmup))) / 2
    assert get_lr(quarter, cfg) == pytest.approx(expected) and expected > (cfg.lr + cfg.min_lr) / 2


def test_loss_goes_down_on_a_fixed_batch(tmp_path):
    torch.set_num_threads(1)
    cfg = tiny_cfg(tmp_path)
    data = load_training_data(cfg)
    low, high = make_batch(data, cfg.data, seed=0, step=0)
    torch.manual_seed(0)
    model = WaveletDiffusion(cfg.model)
    step_loss = LossStep(model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    weights = asdict(cfg.loss)

    def weighted() -> torch.Tensor:
        # The same timesteps and noise every time: only the weights change.
        terms = step_loss(low, high, torch.Generator().manual_seed(0))
        return sum(weights[k] * v for k, v in terms.items())

    with torch.no_grad():
        first = float(weighted())
    for _ in range(20):
        loss = weighted()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        assert float(weighted()) < 0.6 * first


def test_batches_are_a_function_of_seed_step_and_rank(tmp_path):
    cfg = tiny_cfg(tmp_path)
    data = load_training_data(cfg)
    a = make_batch(data, cfg.data, 0, 5, rank=0)
    b = make_batch(data, cfg.data, 0, 5, rank=0)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[1], make_batch(data, cfg.data, 0, 5, rank=1)[1])
    assert not torch.equal(a[1], make_batch(data, cfg.data, 0, 6, rank=0)[1])
    low, high = a
    assert low.shape == high.shape == (2, 3, 32, 32)
    assert low.mean() < high.mean()  # darkened
    assert torch.equal(low, (low * 255).round() / 255)  # on 8-bit levels, like a file
    # Threads build the same batches, in order.
    steps = range(3, 9)
    built = list(prefetch(lambda s: make_batch(data, cfg.data, 0, s), steps, workers=2))
    for s, (lo, hi) in zip(steps, built):
        assert torch.equal(hi, make_batch(data, cfg.data, 0, s)[1])


def test_photos_are_split_decoded_and_filtered(tmp_path):
    photos = make_photos(tmp_path / "photos", n=8)
    save_rgb(photos / "tiny.png", np.zeros((20, 50, 3), np.uint8))
    (photos / "broken.png").write_bytes(b"not a png")
    save_rgb(photos / "huge.png", np.full((200, 300, 3), 128, np.uint8))
    cfg = tiny_cfg(tmp_path, "data.max_side=60")
    data = load_training_data(cfg)
    assert len(data.val_pairs) == len(data.val_names) > 0
    assert all(name.startswith("photos/") for name in data.val_names)
    assert {Path(name).name for name, _ in data.skipped} == {"tiny.png", "broken.png"}
    assert max(max(p.shape[1:]) for p in data.photos + [h for _, h in data.val_pairs]) <= 60
    assert any(tuple(p.shape[1:]) == (40, 60) for p in data.photos + [h for _, h in data.val_pairs])
    low, high = data.val_pairs[0]
    assert low.dtype == high.dtype == torch.uint8 and low.shape == high.shape
    # The held-out photos get the same darkening every time.
    again = load_training_data(cfg)
    assert torch.equal(again.val_pairs[0][0], low)


def test_mixing_pairs_and_photos(tmp_path, monkeypatch):
    low_dir, high_dir = make_paired(tmp_path / "pairs")
    cfg = tiny_cfg(tmp_path, "data.layout=paired", f"data.low={low_dir}", f"data.high={high_dir}",
                   "data.batch_size=8", "data.synthetic_ratio=0.25", "data.val_block=1")
    data = load_training_data(cfg)
    assert data.pairs and data.photos
    assert any(not name.startswith("photos/") for name in data.val_names)
    low, _ = make_batch(data, cfg.data, 0, 0)
    assert low.shape == (8, 3, 32, 32)
    import lldiff_cli.train_data as train_data

    darkened = []  # how many of each batch are photos darkened on the fly: a quarter on average
    real_random_pair = train_data.random_pair

    def counting(high, *args, **kwargs):
        darkened.append(len(high))
        return real_random_pair(high, *args, **kwargs)

    monkeypatch.setattr(train_data, "random_pair", counting)
    for step in range(200):
        make_batch(data, cfg.data, 0, step)
    assert abs(sum(darkened) / (8 * 200) - 0.25) < 0.03
    only_pairs = tiny_cfg(tmp_path, "data.layout=paired", f"data.low={low_dir}", f"data.high={high_dir}",
                          "data.photos=null")
    assert not load_training_data(only_pairs).photos


def lolv2_real_tree(root: Path, n: int) -> None:
    """n generated pairs where the LOLv2-real layout keeps its training split (Low/, Normal/)."""
    base = root / "LOL-v2" / "Real_captured" / "Train"
    make_paired(base, n=n)
    (base / "low").rename(base / "Low")
    (base / "high").rename(base / "Normal")


def test_named_layouts_come_from_data_py(tmp_path):
    lolv2_real_tree(tmp_path / "root", n=4)
    cfg = tiny_cfg(tmp_path, "data.layout=LOLv2-real", f"data.root={tmp_path / 'root'}", "data.photos=null",
                   "data.val_block=1", "data.val_fraction=0.25")
    data = load_training_data(cfg)
    assert len(data.pairs) == 3 and data.val_names == ["3"]
    with pytest.raises(LldiffError, match="LOL .*not found"):
        load_training_data(tiny_cfg(tmp_path, "data.layout=LOL", f"data.root={tmp_path}", "data.photos=null"))
    with pytest.raises(LldiffError, match="to train on data.photos alone, set data.layout=none"):
        load_training_data(tiny_cfg(tmp_path, "data.layout=LOL", f"data.root={tmp_path}"))


@pytest.mark.parametrize("override, message", [
    ("data.layout=LOL3", "unknown data.layout 'LOL3'; allowed: LOL, LOLv2-real"),
    ("data.synthetic_ratio=1.5", "data.synthetic_ratio must be in"),
    ("data.darken.gamma=[5, 1]", "data.darken: gamma range"),
    ("data.darken.mode=night", "unknown data.darken.mode 'night'"),
    ("data.photos=null", "no training data"),
    ("data.crop=16", "data.crop (16) must be at least 32 for this model"),
    # values that were accepted (a negative lr, clipping to -1, an EMA that grows) or a traceback
    ("optim.lr=-0.001", "optim.lr must be more than 0, got -0.001"),
    ("optim.lr=0", "optim.lr must be more than 0, got 0.0"),
    ("optim.min_lr=-1", "optim.min_lr must be in [0, optim.lr] = [0, 0.001], got -1.0"),
    ("optim.min_lr=0.01", "optim.min_lr must be in [0, optim.lr] = [0, 0.001], got 0.01"),
    ("optim.weight_decay=-1", "optim.weight_decay must be 0 or more, got -1.0"),
    ("optim.grad_clip=-1", "optim.grad_clip must be more than 0, got -1.0"),
    ("optim.ema_decay=2", "optim.ema_decay must be in [0, 1), got 2.0"),
    ("threads=-1", "threads must be 0 (PyTorch's choice) or more, got -1"),
    ("val_images=-1", "val_images must be 0 (all) or more, got -1"),
    ("loss.tv=-0.5", "loss.tv must be 0 or more, got -0.5"),
    # nan and inf are refused in every float, wherever it is
    ("optim.lr=nan", "optim.lr must be a finite number, got nan"),
    ("optim.grad_clip=inf", "optim.grad_clip must be a finite number, got inf"),
    ("loss.x0=-inf", "loss.x0 must be a finite number, got -inf"),
    ("data.darken.gamma=[1, .nan]", "data.darken.gamma[1] must be a finite number, got nan"),
    ("model.schedule.beta_end=.inf", "model.schedule.beta_end must be a finite number, got inf"),
])
def test_bad_values_are_clear_errors(tmp_path, override, message):
    with pytest.raises(LldiffError, match=re.escape(message)):
        check_config(tiny_cfg(tmp_path, override))


def run_train(cfg: TrainConfig, data: TrainData, **kwargs) -> dict:
    return train(cfg, data, device=torch.device("cpu"), **kwargs)


def flat_state(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint's model, EMA and optimiser state, by a flat name."""
    state = load_checkpoint(path)
    out = {f"model.{k}": v for k, v in state["state_dict"].items()}
    out.update({f"ema.{k}": v for k, v in state["ema_state_dict"].items()})
    for i, s in state["optimizer"]["state"].items():
        out.update({f"opt.{i}.{k}": torch.as_tensor(v) for k, v in s.items()})
    return out


def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    cfg = tiny_cfg(tmp_path, "optim.max_steps=6")
    data = load_training_data(cfg)
    straight = run_train(cfg, data)
    assert straight["step"] == 6

    # The same run stopped after 4 steps (as by Ctrl-C), then resumed with batches built in threads.
    cfg2 = tiny_cfg(tmp_path, "optim.max_steps=6", f"out_dir={tmp_path / 'run2'}", "data.workers=2")
    calls = iter(range(100))
    first = run_train(cfg2, data, stop=lambda: next(calls) >= 4)
    assert first["step"] == 4 and load_checkpoint(tmp_path / "run2" / "last.pt")["step"] == 4
    second = run_train(cfg2, data, resume=True)
    assert second["step"] == 6

    a, b = flat_state(tmp_path / "run" / "last.pt"), flat_state(tmp_path / "run2" / "last.pt")
    # Bit for bit: model, EMA and optimiser; the history too, as the stop fell on a log step.
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    assert load_checkpoint(tmp_path / "run" / "last.pt")["history"] == \
        load_checkpoint(tmp_path / "run2" / "last.pt")["history"]


def test_stop_saves_last_pt_at_that_step_and_resume_accepts_older_checkpoints(tmp_path):
    cfg = tiny_cfg(tmp_path, "optim.max_steps=50")
    data = load_training_data(cfg)
    calls = iter(range(100))
    record = run_train(cfg, data, stop=lambda: next(calls) >= 2)
    last = tmp_path / "run" / "last.pt"
    state = load_checkpoint(last)
    assert record["step"] == state["step"] == 2
    required = {"format", "config", "state_dict", "ema_state_dict", "optimizer", "step", "best_psnr",
                "history", "train_config", "rng"}
    assert required <= state.keys()
    # A checkpoint of the previous version has no scaler / world_size: it still resumes.
    for key in ("scaler", "world_size"):
        state.pop(key)
    state["rng"] = {"data": torch.Generator().get_state(), "torch": torch.get_rng_state()}
    torch.save(state, last)
    calls = iter(range(100))
    assert run_train(cfg, data, resume=True, stop=lambda: next(calls) >= 1)["step"] == 3


def test_out_dir_guards(tmp_path):
    cfg = tiny_cfg(tmp_path, "optim.max_steps=1")
    data = load_training_data(cfg)
    with pytest.raises(LldiffError, match="nothing to resume"):
        run_train(cfg, data, resume=True)
    run_train(cfg, data)
    with pytest.raises(LldiffError, match="already holds a run"):
        run_train(cfg, data)
    other = tiny_cfg(tmp_path, "optim.max_steps=2", "model.unet.width=16")
    with pytest.raises(LldiffError, match=r"holds another model \(model.unet differ"):
        run_train(other, data, resume=True)


def test_a_run_holds_its_out_dir(tmp_path):
    from lldiff_cli.lock import hold
    from lldiff_cli.run_dir import hold_out_dir

    cfg = tiny_cfg(tmp_path, "optim.max_steps=1")
    data = load_training_data(cfg)
    run = tmp_path / "run"
    run.mkdir()
    with hold(run / "train.lock"):  # as another process would (flock: another open file)
        with pytest.raises(LldiffError, match=r"run is in use by another run \(pid \d+ on .*\); wait for it"):
            run_train(cfg, data)
    assert list(run.iterdir()) == []
    # The process's own hold (the CLI's, from before the data loads) is no obstacle to train().
    with hold_out_dir(cfg, resume=False) as held:
        assert (run / "train.lock").is_file()
        run_train(cfg, data)
        assert held.started
    assert "last.pt" in {p.name for p in run.iterdir()} and not (run / "train.lock").exists()


def test_logs_validation_curve_and_best_checkpoint(tmp_path):
    cfg = tiny_cfg(tmp_path)
    records = []
    steps = []
    result = run_train(cfg, load_training_data(cfg), on_log=records.append, on_step=steps.append)
    assert steps == [1, 2, 3, 4, 5, 6]
    losses = [r for r in records if "loss" in r]
    assert [r["step"] for r in losses] == [2, 4, 6]
    assert {"noise", "x0", "anchor", "exposure", "detail", "tv", "content", "dfpl", "it_s", "lr"} <= losses[0].keys()
    assert [r["step"] for r in records if "val_psnr" in r] == [3, 6]
    # GT-mean PSNR beside it: the structure, whatever brightness the model chose (rarely below plain)
    assert all(r["val_psnr_gtmean"] >= r["val_psnr"] - 0.5 for r in records if "val_psnr" in r)
    assert result["best_psnr"] > 0
    run = tmp_path / "run"
    assert (run / "best.pt").is_file()
    # train() writes log.jsonl itself (rank 0), each record before on_log gets it
    import json

    assert [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()] == records
    with PILImage.open(run / "curve.png") as im:
        assert im.format == "PNG" and im.size == (720, 520)


def test_best_pt_holds_the_best_validation_and_validation_uses_the_ema_weights(tmp_path, monkeypatch):
    import lldiff_cli.train as train_mod

    scores, seen = iter([[20.0], [10.0]]), []  # step 3 scores best; step 6 is worse

    def fake_validate(model_cfg, state, pairs, device, limit=0):
        seen.append({k: v.clone() for k, v in state.items()})
        psnrs = next(scores)
        return psnrs, [p + 5 for p in psnrs]

    monkeypatch.setattr(train_mod, "validate", fake_validate)
    cfg = tiny_cfg(tmp_path)
    result = run_train(cfg, load_training_data(cfg))
    best, last = load_checkpoint(tmp_path / "run" / "best.pt"), load_checkpoint(tmp_path / "run" / "last.pt")
    assert best["step"] == 3 and best["best_psnr"] == 20.0 and result["best_psnr"] == 20.0
    assert last["step"] == 6
    for key, value in last["ema_state_dict"].items():  # validated with the EMA weights, not the raw ones
        assert torch.equal(seen[-1][key], value), key
    assert any(not torch.equal(last["ema_state_dict"][k], last["state_dict"][k]) for k in last["state_dict"])


def test_validation_reports_pairs_and_darkened_photos_apart():
    from lldiff_cli.train import val_groups

    names, scores = ["1", "2", "photos/a", "photos/b", "photos/c"], [20.0, 22.0, 10.0, 11.0, 15.0]
    assert val_groups(names, scores) == {"val_psnr_pairs": 21.0, "val_psnr_photos": 12.0}
    assert val_groups(names[:2], scores[:2]) == {}  # one kind alone: val_psnr says it
    assert val_groups(names[2:], scores[2:]) == {}
    assert val_groups(names, scores[:3]) == {"val_psnr_pairs": 21.0, "val_psnr_photos": 10.0}  # val_images cut
    assert val_groups(names[:2], scores[:2], singles=["2"]) == {"val_psnr_pairs": 20.0, "val_psnr_singles": 22.0}


def test_single_pairs_are_held_out_beside_the_blocks(tmp_path):
    import json

    from lldiff_cli.run_dir import start_run

    lolv2_real_tree(tmp_path / "root", n=8)
    cfg = tiny_cfg(tmp_path, "data.layout=LOLv2-real", f"data.root={tmp_path / 'root'}", "data.photos=null",
                   "data.val_block=2", "data.val_fraction=0.25", "data.val_singles=2")
    data = load_training_data(cfg)
    # pairs 0..7: the last block of two (6, 7) held out, then 2 singles spread over 0..5
    assert data.val_names == ["6", "7", "1", "4"] and data.val_singles == ["1", "4"]
    assert len(data.pairs) == 4
    start_run(cfg, data)
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split == {"val": data.val_names, "singles": ["1", "4"]}
    with pytest.raises(LldiffError, match="data.val_singles must be 0 or more"):
        check_config(tiny_cfg(tmp_path, "data.val_singles=-1"))


def test_write_curve_copes_with_little_history(tmp_path):
    for history in ([], [{"step": 1, "loss": 0.5}], [{"step": 3, "val_psnr": 12.0}]):
        write_curve(history, tmp_path / "c.png")
        assert pil_open(tmp_path / "c.png").size == (720, 520)


@pytest.mark.parametrize("refiner", [None, {"width": 4, "blocks": 1}])
def test_sampled_image_is_enhance_with_gradients(tmp_path, refiner):
    torch.manual_seed(0)
    cfg = tiny_cfg(tmp_path)
    model = WaveletDiffusion(replace(cfg.model, refiner=refiner)).eval()
    if refiner:
        torch.nn.init.normal_(model.refiner.head.weight, std=0.1)  # not the identity it starts as
    dark = torch.rand(2, 3, 16, 16) * 0.3
    exposure = torch.tensor([0.4, 0.6])
    expected = model.enhance(dark, exposure=exposure, generator=torch.Generator().manual_seed(3))
    got = sampled_image(model, dark, exposure, torch.Generator().manual_seed(3))
    assert torch.allclose(got.clamp(0, 1), expected, atol=1e-6)
    assert got.requires_grad


def test_train_sampler_every_adds_the_sampled_term(tmp_path):
    cfg = tiny_cfg(tmp_path, "train_sampler_every=2", "optim.max_steps=2", "log_every=1", "val_every=100")
    records = []
    run_train(cfg, load_training_data(cfg), on_log=records.append)
    assert "sampled" in records[0] and "sampled" not in records[1]


def test_bf16_on_the_cpu_trains(tmp_path):
    cfg = tiny_cfg(tmp_path, "bf16=true", "optim.max_steps=2", "val_every=100")
    assert run_train(cfg, load_training_data(cfg))["step"] == 2


def test_init_copies_matching_weights_and_train_only_freezes_the_rest(tmp_path):
    """A grown model (HFRM with a coarse context path) starts from a trained one; only the HFRMs learn."""
    base = tiny_cfg(tmp_path, "optim.max_steps=2")
    data = load_training_data(base)
    run_train(base, data)
    trained = load_checkpoint(tmp_path / "run" / "last.pt")["ema_state_dict"]

    grown = tiny_cfg(tmp_path, "optim.max_steps=3", f"out_dir={tmp_path / 'grown'}",
                     f"init={tmp_path / 'run' / 'last.pt'}", "train_only=[hfrms]", "model.hfrm.scales=1")
    check_config(grown)
    logs = []
    run_train(grown, data, on_log=logs.append)
    init = next(r for r in logs if "init" in r)
    assert init["fresh"] and all(".context." in k for k in init["fresh"])
    after = load_checkpoint(tmp_path / "grown" / "last.pt")["state_dict"]
    for k, v in trained.items():
        if k.startswith("hfrms."):
            continue
        assert torch.equal(after[k], v), f"{k} should be frozen at the initial weights"
    moved = [k for k in after if k.startswith("hfrms.") and k in trained and not torch.equal(after[k], trained[k])]
    assert moved, "the HFRMs should train"
    # Resuming needs last.pt, not the init checkpoint (a run copied to another machine).
    (tmp_path / "run" / "last.pt").rename(tmp_path / "elsewhere.pt")
    check_config(grown, resume=True)
    longer = replace(grown, optim=replace(grown.optim, max_steps=4))
    assert run_train(longer, data, resume=True)["step"] == 4


def test_a_refiner_grows_on_a_trained_model_and_trains_alone(tmp_path):
    base = tiny_cfg(tmp_path, "optim.max_steps=1")
    data = load_training_data(base)
    run_train(base, data)
    trained = load_checkpoint(tmp_path / "run" / "last.pt")["ema_state_dict"]
    grown = tiny_cfg(tmp_path, "optim.max_steps=2", f"out_dir={tmp_path / 'grown'}", f"init={tmp_path / 'run' / 'last.pt'}",
                     "model.refiner={width: 4, blocks: 1}", "train_only=[refiner]", "train_sampler_every=1")
    check_config(grown)
    logs = []
    run_train(grown, data, on_log=logs.append)
    init = next(r for r in logs if "init" in r)
    assert init["fresh"] and all(k.startswith("refiner.") for k in init["fresh"])
    # The weights it starts from are validated before the first step (the baseline of the fine-tune).
    start = logs[logs.index(init) + 1]
    assert start["step"] == 0 and "best_psnr" not in start
    assert start["val_psnr"] != next(r for r in logs if "val_psnr" in r and r["step"] > 0)["val_psnr"]
    after = load_checkpoint(tmp_path / "grown" / "last.pt")["state_dict"]
    assert all(torch.equal(after[k], v) for k, v in trained.items()), "all but the refiner stay as trained"
    assert after["refiner.head.weight"].abs().sum() > 0, "the refiner learns (its head starts at zero)"


@pytest.mark.parametrize("override, message", [
    ("train_only=[hfrm]", "train_only: no parameters under 'hfrm'; the model has"),
    ("model.refiner={width: 4}", "model.refiner learns only from the sampled term"),
    ("model.refiner={width: 0}", "refiner width must be 1 or more and blocks 0 or more, got 0 and 2"),
    ("init=nowhere.pt", "init checkpoint not found: nowhere.pt"),
    ("model.hfrm.scales=-1", "hfrm scales must be 0 or more"),
])
def test_init_and_train_only_errors(tmp_path, override, message):
    with pytest.raises(LldiffError, match=re.escape(message)):
        check_config(tiny_cfg(tmp_path, override))


def test_a_refiner_trained_alone_must_sample_every_step(tmp_path):
    # On a step that does not sample, nothing it trains is in the loss (backward would fail).
    cfg = tiny_cfg(tmp_path, "model.refiner={width: 4, blocks: 1}", "train_only=[refiner]", "train_sampler_every=2")
    with pytest.raises(LldiffError, match=re.escape("train_only=[refiner] trains nothing on the steps that do not")):
        check_config(cfg)
    check_config(tiny_cfg(tmp_path, "model.refiner={width: 4, blocks: 1}", "train_sampler_every=2"))  # all modules


def test_unusable_pairs_are_skipped_with_the_file_and_reason(tmp_path):
    low_dir, high_dir = make_paired(tmp_path / "pairs", n=8)
    save_rgb(low_dir / "6.png", np.zeros((16, 16, 3), np.uint8))      # sizes differ
    (high_dir / "7.png").write_bytes(b"not a png")                      # unreadable ground truth
    cfg = tiny_cfg(tmp_path, "data.layout=paired", f"data.low={low_dir}", f"data.high={high_dir}",
                   "data.photos=null", "data.val_block=1")
    data = load_training_data(cfg)
    reasons = dict(data.skipped)
    assert set(reasons) == {"6", "7"}, reasons
    assert "6.png: size mismatch: low-light 16x16, ground truth 40x32" in reasons["6"]
    assert str(high_dir / "7.png") in reasons["7"]
    assert len(data.pairs) + len(data.val_pairs) == 6


def test_a_resumed_run_must_hold_out_what_it_held_out_before(tmp_path):
    import json

    from lldiff_cli.run_dir import start_run

    lolv2_real_tree(tmp_path / "root", n=8)
    cfg = tiny_cfg(tmp_path, "data.layout=LOLv2-real", f"data.root={tmp_path / 'root'}", "data.photos=null",
                   "data.val_block=2", "data.val_fraction=0.25", "data.val_singles=2", "optim.max_steps=2")
    data = load_training_data(cfg)
    run_train(cfg, data)
    start_run(cfg, data)  # as `lldiff train` does before its first step, and again on --resume
    split = tmp_path / "run" / "split.json"
    record = json.loads(split.read_text())
    record["singles"] = ["1", "3"]  # as if the split's rules had changed since the run began
    split.write_text(json.dumps(record))
    with pytest.raises(LldiffError, match="split.json: this run held out other pairs"):
        start_run(cfg, data)
    assert json.loads(split.read_text())["singles"] == ["1", "3"]  # left as it was
    record["singles"] = ["4", "1"]
    split.write_text(json.dumps(record))
    start_run(cfg, data)


def test_kept_train_state_resumes(tmp_path):
    """scripts/default_model.py keep: the committed training state (bf16 optimiser moments) resumes."""
    default_model = load_script("scripts/default_model.py")
    cfg = tiny_cfg(tmp_path, "optim.max_steps=2")
    data = load_training_data(cfg)
    run_train(cfg, data)
    (tmp_path / "run" / "split.json").write_text('{"val": []}')
    (tmp_path / "run" / "config.yaml").write_text("out_dir: x\n")
    (tmp_path / "run" / "log.jsonl").write_text("")
    dest = tmp_path / "kept"
    default_model.keep(tmp_path / "run", dest)
    state = load_checkpoint(dest / "last.pt")
    moments = next(iter(state["optimizer"]["state"].values()))
    assert moments["exp_avg"].dtype == torch.bfloat16
    assert "out_dir: runs/kept" in (dest / "config.yaml").read_text()  # runs/ + the kept folder's name
    resumed = replace(cfg, out_dir=str(dest), optim=replace(cfg.optim, max_steps=3))
    assert run_train(resumed, data, resume=True)["step"] == 3
    after = load_checkpoint(dest / "last.pt")
    assert next(iter(after["optimizer"]["state"].values()))["exp_avg"].dtype == torch.float32
