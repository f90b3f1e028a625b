"""tone: the three figures of issue 20 on known inputs, and the highlight-keeping fusion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image as PILImage
from typer.testing import CliRunner

from lldiff_cli import tone
from lldiff_cli.checkpoints import load_model, save_checkpoint, sha256_of
from lldiff_cli.cli import app
from lldiff_cli.enhance import EnhanceSettings, enhance_image
from lldiff_cli.errors import LldiffError
from lldiff_cli.model import WaveletDiffusion
from lldiff_cli.tiling import enhance_tensor
from conftest import pil_open, tiny_config


def bright_scene(h: int = 96, w: int = 128, seed: int = 0) -> torch.Tensor:
    """A dark, noisy left half and a bright, textured, orange right half (1x3xHxW)."""
    g = torch.Generator().manual_seed(seed)
    texture = torch.rand(1, 1, h, w, generator=g)
    dark = 0.03 + 0.04 * texture * torch.ones(1, 3, 1, 1)
    bright = (0.7 + 0.2 * texture) * torch.tensor([1.0, 0.75, 0.4]).view(1, 3, 1, 1) + 0.05
    left = (torch.arange(w) < w // 2).float().view(1, 1, 1, w)
    return left * dark + (1 - left) * bright


# --- the figures -------------------------------------------------------------------------------


def test_grey_is_bt601_and_lab_matches_scikit_image():
    from skimage.color import rgb2lab

    rgb = torch.eye(3).view(3, 3, 1, 1).permute(1, 0, 2, 3).reshape(1, 3, 1, 3)  # red, green, blue pixels
    torch.testing.assert_close(tone.grey(rgb).flatten(), torch.tensor([0.299, 0.587, 0.114]))
    x = torch.rand(1, 3, 8, 9, generator=torch.Generator().manual_seed(1))
    oracle = rgb2lab(x[0].permute(1, 2, 0).double().numpy())
    np.testing.assert_allclose(tone.lab(x)[0].permute(1, 2, 0).numpy(), oracle, atol=0.02)


def test_an_output_equal_to_its_input_keeps_everything():
    x = bright_scene()
    assert tone.contrast_kept(x, x) == pytest.approx(1.0)
    assert tone.chroma_kept(x, x) == pytest.approx(1.0)
    assert tone.shadow_lift(x, x) == pytest.approx(1.0)


def test_known_changes_give_known_figures():
    x = bright_scene()
    assert tone.shadow_lift(x * 0.5, x) == pytest.approx(2.0)  # a doubled dark image
    bright = tone.grey(x) >= 0.6
    # Every block's well-exposed pixels pulled halfway to their block's mean: half the contrast.
    mean = F.avg_pool2d(x, 16).repeat_interleave(16, 2).repeat_interleave(16, 3)
    flatter = torch.where(bright, mean + 0.5 * (x - mean), x)
    assert tone.contrast_kept(x, flatter) == pytest.approx(0.5, abs=0.02)
    grey_out = tone.grey(x).expand(1, 3, -1, -1)  # colour drained, grey kept
    assert tone.chroma_kept(x, grey_out) == pytest.approx(0.0, abs=0.01)
    assert tone.contrast_kept(x, grey_out) == pytest.approx(1.0, abs=1e-6)


def test_figures_without_their_pixels_are_none():
    dark = torch.full((1, 3, 32, 32), 0.05)
    assert tone.contrast_kept(dark, dark) is None and tone.chroma_kept(dark, dark) is None
    white = torch.full((1, 3, 32, 32), 0.8)  # well exposed but grey: a chroma ratio would be noise
    assert tone.chroma_kept(white, white) is None and tone.shadow_lift(white, white) is None
    assert tone.shadow_lift(torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8)) is None  # all black
    with pytest.raises(ValueError, match="1x3xHxW"):
        tone.shadow_lift(dark, dark[..., :16])


# --- the fusion's parts ------------------------------------------------------------------------


@pytest.mark.parametrize("radius", [1, 3, 10])
def test_box_mean_is_a_box_average_cut_at_the_border(radius):
    x = torch.rand(1, 1, 23, 31)
    expected = F.avg_pool2d(x, 2 * radius + 1, stride=1, padding=radius, count_include_pad=False)
    torch.testing.assert_close(tone.box_mean(x, radius), expected, atol=1e-5, rtol=0)


def test_guided_filter_smooths_texture_and_keeps_strong_edges():
    g = torch.Generator().manual_seed(0)
    edge = (torch.arange(64) >= 32).float().view(1, 1, 1, 64).expand(1, 1, 64, 64)
    noisy = edge * 0.7 + 0.1 + 0.02 * torch.randn(1, 1, 64, 64, generator=g)
    for step in (1, 2):
        out = tone.guided_filter(noisy, noisy, 4, 0.01, step=step)
        for side in (slice(4, 26), slice(38, 60)):  # noise of std 0.02 averaged away on each side
            assert out[..., 4:-4, side].std() < 0.006
        assert out[..., 33].mean() - out[..., 30].mean() > 0.5  # the edge stays an edge
    assert tone.smoothstep(torch.tensor([0.0, 0.35, 0.5, 0.65, 1.0]), 0.35, 0.65).tolist() == [0, 0, 0.5, 1, 1]


# --- the fusion --------------------------------------------------------------------------------


def test_kept_highlights_are_the_input_and_shadows_the_models_output():
    x = bright_scene()
    lifted = (x * 4).clamp(0, 1)  # a "model" that lifts everything, washing the highlights out
    out = tone.keep_highlights(x, lifted)
    inner = (slice(None), slice(None), slice(8, -8))
    torch.testing.assert_close(out[(*inner, slice(76, None))], x[(*inner, slice(76, None))], atol=2e-3, rtol=0)
    torch.testing.assert_close(out[(*inner, slice(None, 52))], lifted[(*inner, slice(None, 52))], atol=2e-3, rtol=0)
    assert tone.chroma_kept(x, out) > 0.98 and tone.contrast_kept(x, out) > 0.95
    assert tone.shadow_lift(x, out) > 3.5


def test_a_lifted_ramp_stays_smooth_and_in_order():
    """Input 0 to 1 left to right; a model that lifts 4x would put the mid-tones above the kept
    highlights. The fused ramp steps no more than the lifted one (4 grey levels a pixel) plus one
    grey level, and does not turn back down (by half a grey level: the model's own detail about
    its smoothed level, here where it clips, may)."""
    ramp = torch.linspace(0, 1, 256).view(1, 1, 1, 256).expand(1, 3, 64, 256).contiguous()
    out = tone.keep_highlights(ramp, (ramp * 4).clamp(0, 1))
    steps = out[0, :, :, 1:] - out[0, :, :, :-1]
    assert steps.abs().max() < 5 / 255
    assert steps.min() > -0.5 / 255
    torch.testing.assert_close(out[..., 200:], ramp[..., 200:], atol=1e-3, rtol=0)


def test_without_highlights_the_models_output_is_untouched():
    x = torch.rand(1, 3, 40, 50, generator=torch.Generator().manual_seed(2)) * 0.2
    lifted = (x * 3).clamp(0, 1)
    assert torch.equal(tone.keep_highlights(x, lifted), lifted)


class Brighten:
    """A tiling 'model' whose output does not depend on the tile: x * 3."""

    multiple, levels = 8, 2

    def enhance(self, x, exposure=None, **kwargs):
        return (x * 3).clamp(0, 1)


def test_the_fusion_runs_after_tiling_on_the_whole_image():
    x = bright_scene(120, 200)
    settings = dict(precision="float32", keep_highlights=True)
    whole = enhance_image(Brighten(), x, EnhanceSettings(**settings), torch.device("cpu"))
    tiled = enhance_image(Brighten(), x, EnhanceSettings(tile=48, overlap=8, **settings), torch.device("cpu"))
    torch.testing.assert_close(tiled, whole, atol=1e-6, rtol=0)
    torch.testing.assert_close(whole, tone.keep_highlights(x, enhance_tensor(Brighten(), x)), atol=1e-6, rtol=0)
    off = enhance_image(Brighten(), x, EnhanceSettings(precision="float32"), torch.device("cpu"))
    assert torch.equal(off, Brighten().enhance(x))  # a model without the setting: off


# --- the model's setting: its card, and --keep-highlights ---------------------------------------


@pytest.fixture
def carded(tmp_path):
    """A tiny checkpoint and a card beside it that turns the fusion on."""
    torch.manual_seed(0)
    weights = tmp_path / "models" / "tiny.pt"
    save_checkpoint(WaveletDiffusion(tiny_config()), weights)
    card = tmp_path / "models" / "tiny.yaml"
    card.write_text(f"weights: tiny.pt\nsha256: {sha256_of(weights)}\nsampler: {{steps: 2, keep_highlights: true}}\n")
    return card


def test_a_card_turns_the_fusion_on_and_its_sampler_is_checked(carded):
    assert load_model(carded).config.keep_highlights is True
    assert load_model(carded.with_suffix(".pt")).config.keep_highlights is False  # the checkpoint alone: off
    text = carded.read_text()
    carded.write_text(text.replace("keep_highlights: true", "levels: 3"))
    with pytest.raises(LldiffError, match="unknown sampler setting levels"):
        load_model(carded)
    carded.write_text(text.replace("true", "sometimes"))
    with pytest.raises(LldiffError, match="keep_highlights"):
        load_model(carded)


def test_cli_no_keep_highlights_gives_the_models_own_output(tmp_path, carded):
    scene = (bright_scene(64, 96).clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    (tmp_path / "in").mkdir()
    PILImage.fromarray(scene).save(tmp_path / "in" / "a.png")
    runner = CliRunner()
    outs = {}
    for flag in ("", "--keep-highlights", "--no-keep-highlights"):
        out_dir = tmp_path / f"out{flag}"
        args = ["enhance", str(tmp_path / "in"), str(out_dir), "--model", str(carded), "--quiet", "--device", "cpu",
                "--precision", "float32", *([flag] if flag else [])]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        outs[flag] = np.asarray(pil_open(out_dir / "a.png"), dtype=np.int16)
    assert np.array_equal(outs[""], outs["--keep-highlights"])  # the card's choice
    x = torch.from_numpy(scene).permute(2, 0, 1)[None].float() / 255
    model = load_model(carded)
    raw = enhance_image(model, x, EnhanceSettings(precision="float32", keep_highlights=False), torch.device("cpu"))
    expected = (raw[0].permute(1, 2, 0).numpy() * 255).round()
    assert np.abs(outs["--no-keep-highlights"] - expected).max() <= 1
    kept = outs["--keep-highlights"][8:-8, 72:-8]
    assert np.abs(kept - scene[8:-8, 72:-8].astype(np.int16)).max() <= 2  # the bright half as it was


def test_the_check_set_scenes_are_deterministic_and_keep_their_bright_parts():
    from conftest import load_script

    bench = load_script("benchmarks/tone.py")
    g = torch.Generator().manual_seed(3)
    photo = torch.rand(1, 3, 60, 80, generator=g) * 0.3 + 0.2
    photo[..., :20, :] = torch.tensor([0.45, 0.65, 0.95]).view(1, 3, 1, 1)  # a blue sky along the top
    for situation in bench.SITUATIONS:
        scene = bench.make_scene(photo, situation, seed=7)
        assert torch.equal(scene, bench.make_scene(photo, situation, seed=7)), situation
        assert scene.shape == photo.shape and 0 <= float(scene.min()) and float(scene.max()) <= 1
    backlit = bench.make_scene(photo, "backlit", seed=7)
    assert tone.grey(backlit)[..., 4:14, :].mean() > 0.5 > 0.1 > tone.grey(backlit)[..., 40:, :].mean()
    assert tone.grey(bench.make_scene(photo, "plain", seed=7)).mean() < 0.15
    with pytest.raises(ValueError, match="unknown situation"):
        bench.make_scene(photo, "dusk", seed=7)


# --- the target when highlights are kept -------------------------------------------------------


def test_kept_highlights_raise_the_target_for_the_part_shown():
    """exposure * (m / m_shown) ** TILE_EXPOSURE_POWER: the model renders the dark half as if it
    were the whole image; nothing kept, or a shown part as bright as the whole, changes nothing."""
    from lldiff_cli.tiling import TILE_EXPOSURE_POWER

    x = bright_scene(96, 128)
    y = tone.grey(x)
    m, m_dark = float(y.mean()), float(y[..., : 128 // 2].mean())
    expected = 0.1 * (m / m_dark) ** TILE_EXPOSURE_POWER
    assert 0.3 < expected < tone.SHOWN_CAP
    assert tone.shown_exposure(x, 0.1) == pytest.approx(expected, rel=0.1)  # w blurs the edge a little
    assert tone.shown_exposure(x, 0.44) == tone.SHOWN_CAP
    dark = torch.rand(1, 3, 60, 80, generator=torch.Generator().manual_seed(1)) * 0.2
    assert tone.shown_exposure(dark, 0.44) == 0.44
    assert tone.shown_exposure(torch.full((1, 3, 60, 80), 0.9), 0.44) == 0.44  # all kept: nothing shown
    assert tone.shown_exposure(x, 0.8) == 0.8  # never below the target asked for


class Recording(Brighten):
    """Brighten with an auto exposure of 0.1, recording the targets it is asked for."""

    def __init__(self):
        self.asked = []

    def auto_exposure(self, image):
        return torch.tensor([0.1])

    def enhance(self, x, exposure=None, **kwargs):
        self.asked.append(float(exposure))
        return super().enhance(x)


@pytest.mark.parametrize("keep, given", [(True, None), (False, None), (True, 0.3)])
def test_only_auto_exposure_with_highlights_kept_is_raised(keep, given):
    x = bright_scene(96, 128)
    model = Recording()
    enhance_image(model, x, EnhanceSettings(precision="float32", keep_highlights=keep, exposure=given),
                  torch.device("cpu"))
    want = tone.shown_exposure(x, 0.1) if keep and given is None else (given or 0.1)
    assert model.asked == [pytest.approx(want)] and (want > 0.3) == (keep and given is None)
