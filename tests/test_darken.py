"""darken.py: the degradations against their closed forms, the samplers, the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from lldiff_cli import darken as dk
from lldiff_cli.batch import list_inputs
from lldiff_cli.errors import LldiffError
from conftest import pil_open


def gen(seed=0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_folder(root: Path, names, size=(6, 8)) -> Path:
    rng = np.random.default_rng(1)
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / name)
    return root


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def pixels(path: Path) -> np.ndarray:
    return np.array(pil_open(path))


# --- degradations ----------------------------------------------------------------


@pytest.mark.parametrize("alpha,beta,gamma,steps", [
    (1.0, 0.7, 3.3, 10), (0.93, 0.55, 4.9, 3), (0.9, 1.0, 1.5, 1), (1.0, 0.5, 1.0, 4), (0.95, 0.8, 2.0, 50),
])
def test_progressive_last_step_is_the_closed_form(alpha, beta, gamma, steps):
    x = torch.rand(2, 3, 5, 5, generator=gen(), dtype=torch.float64)
    chain = dk.progressive_darken(x, alpha, beta, gamma, steps)
    assert len(chain) == steps
    closed = beta * (alpha * x) ** gamma
    torch.testing.assert_close(chain[-1], closed, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dk.lv_darken(x, alpha, beta, gamma), closed)
    for earlier, later in zip([alpha * x] + chain, chain):  # each step darkens (a <= 1, eta >= 1)
        assert (later <= earlier + 1e-12).all()


def test_progressive_coefficients_match_the_issue_formula():
    beta, gamma, steps = 0.6, 3.0, 8
    a, eta = dk.progressive_coefficients(beta, gamma, steps)
    assert eta == pytest.approx(gamma ** (1 / steps))
    assert a == pytest.approx(beta ** ((1 - eta) / (eta * (1 - eta ** steps))), rel=1e-12)
    assert dk.progressive_coefficients(0.5, 1.0, 4)[0] == pytest.approx(0.5 ** 0.25)  # eta = 1: S = T
    with pytest.raises(LldiffError, match="steps"):
        dk.progressive_coefficients(0.5, 2.0, 0)


def test_progressive_in_float32_matches_the_closed_form():
    x = torch.rand(1, 3, 8, 8, generator=gen())
    chain = dk.progressive_darken(x, 0.97, 0.6, 4.2, 10)
    assert chain[-1].dtype == torch.float32
    torch.testing.assert_close(chain[-1], dk.lv_darken(x, 0.97, 0.6, 4.2), rtol=1e-5, atol=1e-6)


def test_scale_and_per_image_parameters():
    x = torch.rand(2, 3, 4, 4, generator=gen())
    torch.testing.assert_close(dk.scale_darken(x, 0.5), 0.5 * x)
    gamma = torch.tensor([1.0, 2.0]).view(2, 1, 1, 1)
    out = dk.lv_darken(x, 1.0, 1.0, gamma)
    torch.testing.assert_close(out[0], x[0])
    torch.testing.assert_close(out[1], x[1] ** 2)


def test_srgb_transfer_round_trip_and_known_values():
    x = torch.linspace(0, 1, 101, dtype=torch.float64)
    torch.testing.assert_close(dk.linear_to_srgb(dk.srgb_to_linear(x)), x)
    assert dk.srgb_to_linear(torch.tensor(0.5, dtype=torch.float64)).item() == pytest.approx(0.21404, abs=1e-5)


@pytest.mark.parametrize("level,gain,read", [(0.3, 1e-3, 2e-3), (0.1, 5e-3, 1e-2)])
def test_sensor_noise_statistics(level, gain, read):
    linear = torch.full((1, 3, 64, 64), level, dtype=torch.float64)
    x = dk.linear_to_srgb(linear)
    y = dk.srgb_to_linear(dk.add_sensor_noise(x, gain, read, gen(3)))
    # E[y] = v and Var[y] = gain * v + read**2 (clipping is negligible at these levels)
    assert y.mean().item() == pytest.approx(level, rel=0.01)
    assert y.var().item() == pytest.approx(gain * level + read ** 2, rel=0.1)
    assert 0 <= y.min() and y.max() <= 1


def test_sensor_noise_is_seeded():
    x = torch.rand(1, 3, 8, 8, generator=gen())
    a = dk.add_sensor_noise(x, 1e-3, 1e-3, gen(5))
    assert torch.equal(a, dk.add_sensor_noise(x, 1e-3, 1e-3, gen(5)))
    assert not torch.equal(a, dk.add_sensor_noise(x, 1e-3, 1e-3, gen(6)))


# --- parameters -------------------------------------------------------------------


def test_lv_parameters_stay_in_their_ranges():
    for ranges in (dk.LvRanges(), dk.LvRanges(alpha=(1, 1), beta=(0.2, 0.3), gamma=(2, 2.5))):
        g = gen(1)
        draws = [dk.sample_lv_params(ranges, g) for _ in range(300)]
        for name in ("alpha", "beta", "gamma"):
            values = [getattr(p, name) for p in draws]
            lo, hi = getattr(ranges, name)
            assert lo <= min(values) and max(values) <= hi
            if lo < hi:  # and fill them
                assert min(values) < lo + 0.05 * (hi - lo) and max(values) > hi - 0.05 * (hi - lo)


def test_noise_parameters_are_log_uniform_in_their_ranges():
    ranges = dk.NoiseRanges(gain=(1e-4, 1e-2), read_noise=(0, 0))
    g = gen(2)
    draws = [dk.sample_noise_params(ranges, g) for _ in range(400)]
    gains = np.log10([p.gain for p in draws])
    assert -4 <= gains.min() and gains.max() <= -2
    assert abs(np.median(gains) + 3) < 0.2  # log-uniform: median at the geometric middle
    assert all(p.read_noise == 0 for p in draws)


@pytest.mark.parametrize("make", [
    lambda: dk.LvRanges(alpha=(0.9, 1.2)),
    lambda: dk.LvRanges(beta=(0.8, 0.5)),
    lambda: dk.LvRanges(gamma=(0, 2)),
    lambda: dk.NoiseRanges(gain=(0, 1e-3)),
    lambda: dk.NoiseRanges(read_noise=(-1e-3, 1e-3)),
    lambda: dk.DarkenSettings(mode="sepia"),
    lambda: dk.DarkenSettings(factor=1.5),
    lambda: dk.DarkenSettings(progressive=True, steps=0),
])
def test_bad_settings_name_the_value_and_the_allowed_ones(make):
    with pytest.raises(LldiffError, match="allowed"):
        make()


def test_seed_for_is_stable_and_path_based():
    assert dk.seed_for(0, "a/b.png") == 4926233094151636282  # sha256: same on every machine
    assert dk.seed_for(0, Path("a/b.png")) == dk.seed_for(0, "a/b.png")
    assert dk.seed_for(1, "a/b.png") != dk.seed_for(0, "a/b.png")
    assert dk.seed_for(0, "a/c.png") != dk.seed_for(0, "a/b.png")
    assert 0 <= dk.seed_for(123, "x.png") < 2 ** 63


def test_random_pair_draws_per_image_and_is_seeded():
    high = torch.rand(4, 3, 8, 8, generator=gen()) * 0.5 + 0.5
    low = dk.random_pair(high, gen(7), noise=dk.NoiseRanges())
    assert low.shape == high.shape and low.dtype == high.dtype
    assert torch.equal(low, dk.random_pair(high, gen(7), noise=dk.NoiseRanges()))
    assert (low.mean(dim=(1, 2, 3)) < high.mean(dim=(1, 2, 3))).all()
    ratios = (low.mean(dim=(1, 2, 3)) / high.mean(dim=(1, 2, 3))).tolist()
    assert len({round(r, 4) for r in ratios}) == 4  # each image its own parameters
    torch.testing.assert_close(dk.random_pair(high, gen(), mode="scale", factor=0.25), 0.25 * high)


# --- folders and the manifest -------------------------------------------------------


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_darken_folder_layout_and_record(tmp_path):
    src = make_folder(tmp_path / "src", ["a.png", "sub/b.png"])
    settings = dk.DarkenSettings(progressive=True, steps=3, noise=dk.NoiseRanges(), seed=4)
    report = dk.darken_folder(src, tmp_path / "out", settings, recursive=True, fmt="tif")
    assert report.done == [Path("a.png"), Path("sub/b.png")] and not report.failed
    files = set(tree(tmp_path / "out"))
    assert files == {"manifest.jsonl", "low/a.tif", "high/a.tif", "low/sub/b.tif", "high/sub/b.tif",
                     "steps/a_t01.tif", "steps/a_t02.tif", "steps/a_t03.tif",
                     "steps/sub/b_t01.tif", "steps/sub/b_t02.tif", "steps/sub/b_t03.tif"}
    rec = records(tmp_path / "out")[1]
    assert rec["source"] == "sub/b.png" and rec["mode"] == "lv" and rec["seed"] == 4
    assert set(rec["params"]) == {"alpha", "beta", "gamma"} and set(rec["noise"]) == {"gain", "read_noise", "seed"}
    assert rec["image_seed"] == dk.seed_for(4, "sub/b.png")


def test_progressive_last_step_file_is_the_low_file(tmp_path):
    src = make_folder(tmp_path / "src", ["a.png"])
    dk.darken_folder(src, tmp_path / "out", dk.DarkenSettings(progressive=True, steps=4))
    np.testing.assert_array_equal(pixels(tmp_path / "out/steps/a_t04.png"), pixels(tmp_path / "out/low/a.png"))
    rec = records(tmp_path / "out")[0]
    x = torch.from_numpy(pixels(src / "a.png")).permute(2, 0, 1)[None].float() / 255
    expected = dk.lv_darken(x, **rec["params"])
    got = torch.from_numpy(pixels(tmp_path / "out/low/a.png")).permute(2, 0, 1)[None].float() / 255
    assert (got - expected).abs().max() <= 0.5 / 255 + 1e-6


def test_parameters_do_not_depend_on_the_batch(tmp_path):
    settings = dk.DarkenSettings(noise=dk.NoiseRanges(), seed=9)
    whole = make_folder(tmp_path / "whole", ["a.png", "b.png", "c.png"])
    alone = make_folder(tmp_path / "alone", ["b.png"])
    (alone / "b.png").write_bytes((whole / "b.png").read_bytes())
    dk.darken_folder(whole, tmp_path / "o1", settings)
    dk.darken_folder(alone, tmp_path / "o2", settings)
    dk.darken_folder(whole, tmp_path / "o3", settings, rels=[Path("c.png"), Path("b.png"), Path("a.png")])
    b1 = (tmp_path / "o1/low/b.png").read_bytes()
    assert b1 == (tmp_path / "o2/low/b.png").read_bytes() == (tmp_path / "o3/low/b.png").read_bytes()
    assert records(tmp_path / "o1")[1] == records(tmp_path / "o2")[0] == records(tmp_path / "o3")[1]
    other = dk.darken_folder(alone, tmp_path / "o4", dk.DarkenSettings(noise=dk.NoiseRanges(), seed=10))
    assert other.done and (tmp_path / "o4/low/b.png").read_bytes() != b1


@pytest.mark.parametrize("settings", [
    dk.DarkenSettings(progressive=True, steps=3, noise=dk.NoiseRanges(), seed=2),
    dk.DarkenSettings(mode="scale", factor=0.3, noise=dk.NoiseRanges(gain=(1e-3, 1e-3))),
])
def test_manifest_rebuild_gives_identical_pixels(tmp_path, settings):
    src = make_folder(tmp_path / "src", ["a.png", "b.jpg", "sub/c.png"])
    dk.darken_folder(src, tmp_path / "first", settings, recursive=True)
    report = dk.rebuild_from_manifest(tmp_path / "first/manifest.jsonl", src, tmp_path / "again")
    assert len(report.done) == 3 and not report.failed
    first, again = tree(tmp_path / "first"), tree(tmp_path / "again")
    assert first.keys() == again.keys()
    for name in first:
        if name.endswith(".png"):
            np.testing.assert_array_equal(pixels(tmp_path / "first" / name), pixels(tmp_path / "again" / name))
        else:
            assert first[name] == again[name], name  # JPEG bytes and the manifest itself


def test_manifest_keeps_one_record_per_source(tmp_path):
    src = make_folder(tmp_path / "src", ["a.png", "b.png"])
    out = tmp_path / "out"
    dk.darken_folder(src, out, dk.DarkenSettings(seed=1))
    first = records(out)
    report = dk.darken_folder(src, out, dk.DarkenSettings(seed=2))  # skipped: records kept
    assert len(report.skipped) == 2 and records(out) == first
    dk.darken_folder(src, out, dk.DarkenSettings(seed=2), overwrite=True)  # redone: replaced
    assert [r["source"] for r in records(out)] == ["a.png", "b.png"]
    assert all(r["seed"] == 2 for r in records(out))


def test_an_image_without_its_record_is_redone(tmp_path):
    """A run killed after writing an image's files but before its record (or while
    appending it) must not leave that image unlisted."""
    src = make_folder(tmp_path / "src", ["a.png", "b.png"])
    out = tmp_path / "out"
    dk.darken_folder(src, out, dk.DarkenSettings())
    lines = (out / "manifest.jsonl").read_text().splitlines()
    (out / "manifest.jsonl").write_text(lines[0] + "\n" + lines[1][:20])  # torn last line
    report = dk.darken_folder(src, out, dk.DarkenSettings())
    assert report.skipped == [Path("a.png")] and report.done == [Path("b.png")]
    assert (out / "manifest.jsonl").read_text().splitlines() == lines


def test_corrupt_manifest_line_is_an_error(tmp_path):
    (tmp_path / "m.jsonl").write_text('not json\n{"source": "a.png"}\n')
    with pytest.raises(LldiffError, match="line 1"):
        dk.read_manifest(tmp_path / "m.jsonl")


@pytest.mark.parametrize("change, reason", [
    (lambda r: r.pop("low"), "'low' is missing"),
    (lambda r: r.update(steps="low/x.png"), "'steps' is missing or not a list"),
    (lambda r: r.update(mode="blur"), "unknown mode 'blur'"),
    (lambda r: r["params"].pop("gamma"), "params lack gamma"),
    (lambda r: r.update(noise={"gain": 0.001}), "'noise'"),
    (lambda r: r.update(low="../../outside.png"), "'../../outside.png' is not a relative path inside"),
    (lambda r: r.update(high="/tmp/abs.png"), "'/tmp/abs.png' is not a relative path inside"),
    (lambda r: r.update(source="../secret.png"), "'../secret.png' is not a relative path inside"),
    # issue 22: values that would give white, black or NaN images, or a traceback
    (lambda r: r["params"].update(gamma=-3), "gamma -3 is not allowed: need 0 < gamma <= 20"),
    (lambda r: r["params"].update(beta=float("nan")), "beta nan is not allowed"),
    (lambda r: r["params"].update(alpha=float("inf")), "alpha inf is not allowed"),
    (lambda r: r["params"].update(alpha=0), "alpha 0 is not allowed: need 0 < alpha <= 1"),
    (lambda r: r["params"].update(beta=True), "params lack beta"),
    (lambda r: r.update(mode="scale", params={"factor": 1.5}), "factor 1.5 is not allowed"),
    (lambda r: r["noise"].update(gain=0), "gain 0 is not allowed: need 0 < gain <= 1"),
    (lambda r: r["noise"].update(read_noise=-0.01), "read_noise -0.01 is not allowed: need 0 <= read_noise <= 1"),
    (lambda r: r["noise"].update(seed=1.5), "noise seed 1.5 is not allowed"),
])
def test_a_manifest_record_that_cannot_be_replayed_is_named(tmp_path, change, reason):
    good = dk.make_record(dk.DarkenSettings(noise=dk.NoiseRanges()), Path("a.png"), ".png")
    bad = json.loads(json.dumps(good))
    change(bad)
    (tmp_path / "m.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(LldiffError, match="m.jsonl line 2: ") as info:
        dk.read_manifest(tmp_path / "m.jsonl")
    assert reason in str(info.value)


def test_replaying_a_manifest_refuses_records_that_share_an_output(tmp_path):
    settings = dk.DarkenSettings()
    png, jpg = (dk.make_record(settings, Path(name), ".png") for name in ("a.png", "a.jpg"))
    (tmp_path / "m.jsonl").write_text(json.dumps(png) + "\n" + json.dumps(jpg) + "\n")
    with pytest.raises(LldiffError, match=r"m.jsonl line 1 and line 2 would both write low/a.png"):
        dk.manifest_records(tmp_path / "m.jsonl")
    twice = dict(png, high="low//a.png")  # one record writing one file twice
    (tmp_path / "m.jsonl").write_text(json.dumps(twice) + "\n")
    with pytest.raises(LldiffError, match=r"m.jsonl line 1 writes low/a.png twice"):
        dk.manifest_records(tmp_path / "m.jsonl")


def test_replaying_a_manifest_cut_short_is_refused(tmp_path):
    src = make_folder(tmp_path / "src", ["a.png", "b.png"])
    dk.darken_folder(src, tmp_path / "out", dk.DarkenSettings())
    lines = (tmp_path / "out/manifest.jsonl").read_text().splitlines()
    (tmp_path / "m.jsonl").write_text(lines[0] + "\n" + lines[1][:20])
    with pytest.raises(LldiffError, match="m.jsonl line 2 is cut short"):
        dk.manifest_records(tmp_path / "m.jsonl")


def test_write_dataset_never_writes_over_its_sources(tmp_path):
    src = make_folder(tmp_path / "src", ["a.png"])
    out = tmp_path / "out"
    dk.darken_folder(src, out, dk.DarkenSettings())
    make_folder(out / "low/deeper", ["b.png"])
    before = tree(out)
    for folder in ("low", "high"):
        records = dk.plan_records(dk.DarkenSettings(), [Path("a.png")])
        with pytest.raises(LldiffError, match=f"input folder .*{folder} is the output folder"):
            dk.write_dataset(out / folder, out, records, overwrite=True)
    with pytest.raises(LldiffError, match="is inside the output folder"):
        dk.darken_folder(out / "low/deeper", out, dk.DarkenSettings())
    assert tree(out) == before


def test_outputs_inside_the_input_folder_are_not_inputs(tmp_path):
    src = make_folder(tmp_path / "src", ["a.png"])
    dk.darken_folder(src, src / "out", dk.DarkenSettings(), recursive=True)
    assert list_inputs(src, src / "out", recursive=True) == [Path("a.png")]
    report = dk.darken_folder(src, src / "out", dk.DarkenSettings(), recursive=True)
    assert report.skipped == [Path("a.png")] and not report.done


def test_format_collisions_are_refused(tmp_path):
    src = make_folder(tmp_path / "src", ["a.png", "a.jpg"])
    with pytest.raises(LldiffError, match="both be written"):
        dk.darken_folder(src, tmp_path / "out", dk.DarkenSettings(), fmt="png")


def test_sixteen_bit_and_alpha_survive(tmp_path):
    import cv2

    src = tmp_path / "src"
    src.mkdir()
    data = np.random.default_rng(0).integers(0, 65536, (4, 5, 4), dtype=np.uint16)
    cv2.imwrite(str(src / "a.png"), data)
    dk.darken_folder(src, tmp_path / "out", dk.DarkenSettings())
    for part in ("low", "high"):
        back = cv2.imread(str(tmp_path / "out" / part / "a.png"), cv2.IMREAD_UNCHANGED)
        assert back.dtype == np.uint16 and back.shape == (4, 5, 4)
        np.testing.assert_array_equal(back[:, :, 3], data[:, :, 3])
    high = cv2.imread(str(tmp_path / "out/high/a.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(high, data)


def test_render_darkens_a_greyscale_source_as_one_channel():
    from lldiff_cli.images import Image

    settings = dk.DarkenSettings(noise=dk.NoiseRanges(), seed=3)
    record = dk.make_record(settings, Path("a.png"), ".png")
    grey = torch.full((1, 1, 8, 8), 0.6).expand(-1, 3, -1, -1)
    outputs = dk.render(Image(rgb=grey, grey=True), record)
    assert {tuple(t.shape) for t in outputs.values()} == {(1, 1, 8, 8)}
    assert outputs[record["low"]].std() > 0  # the noise is there, in the one channel
    colour = dk.render(Image(rgb=grey.contiguous()), record)
    assert {tuple(t.shape) for t in colour.values()} == {(1, 3, 8, 8)}
